"""Larger teachers users ask PostNAS / distillation for, and the students planned from them.

Shapes are those of the public HF `config.json` files (Qwen2.5-7B / 14B / 32B, Qwen3-8B).
Used by `jet-jax plan` (train/plan.py, docs/scaling.md); a training run loads the real
teacher from its HF directory (`model.teacher=/path/to/Qwen2.5-7B`).

Qwen3-8B is described with the Qwen2 fields that exist here: its shapes (hidden 4096, 36
layers, 32 query / 8 KV heads of 128, MLP 12288, untied 151936-token head) are exact, but
Qwen3 has per-head q/k RMSNorms (2 x 128 weights per layer, 9,216 in all) and no q/k/v biases
(Qwen2 has them: (32 + 2*8) * 128 = 6,144 per layer, 221,184 in all). The difference,
212k of 8.19B parameters (0.003%), is below the plan's resolution; the qwen3 model family
(q/k norm) is added to ModelConfig separately.

Students: every layer a JetBlock except a few attention layers, as in Jet-Nemotron (2B:
2 full + 2 sliding-window attention layers of 28; 4B: 3 + 7 of 36). Which layers stay is
PostNAS's output; memory and FLOPs depend only on how many, so the layers below are
placeholders in about the published proportions (7B as the 2B, 8B as the 4B).
JetBlock: one head per query head, head_dim 128 (key dim = the teacher's attention width),
expand_v 2 (as Jet-Nemotron-4B).
"""

from jet_jax.config import JetBlockConfig, ModelConfig, hybrid_layer_types

QWEN2_5_7B = ModelConfig(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
    rope_theta=1e6, tie_word_embeddings=False)

QWEN3_8B = ModelConfig(  # q/k norm and no qkv bias: see the module docstring
    vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=40960,
    rope_theta=1e6, tie_word_embeddings=False)

QWEN2_5_14B = ModelConfig(
    vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
    num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=32768,
    rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False)

QWEN2_5_32B = ModelConfig(
    vocab_size=152064, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
    num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=32768,
    rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False)


def _student(teacher: ModelConfig, attn: tuple[int, ...], swa: tuple[int, ...],
             window: int) -> ModelConfig:
    return teacher.replace(
        layer_types=hybrid_layer_types(teacher.num_hidden_layers, attn=attn, swa=swa),
        window_size=window,
        jet=JetBlockConfig(num_heads=teacher.num_attention_heads, head_dim=128, expand_v=2.0,
                           conv_size=4, dconv_generator_reduction=8, norm_eps=1e-5))


JET_QWEN2_5_7B = _student(QWEN2_5_7B, attn=(14, 19), swa=(20, 21), window=2048)
JET_QWEN3_8B = _student(QWEN3_8B, attn=(17, 20, 32), swa=(5, 16, 19, 21, 22, 25, 27), window=2048)
JET_QWEN2_5_14B = _student(QWEN2_5_14B, attn=(22, 28, 42), swa=(8, 21, 27, 30, 33),
                           window=2048)
JET_QWEN2_5_32B = _student(QWEN2_5_32B, attn=(30, 37, 56), swa=(10, 28, 36, 40, 44, 48),
                           window=2048)

TEACHERS = {
    "qwen2.5-7b": QWEN2_5_7B,
    "qwen3-8b": QWEN3_8B,
    "qwen2.5-14b": QWEN2_5_14B,
    "qwen2.5-32b": QWEN2_5_32B,
}

STUDENTS = {
    "jet-qwen2.5-7b": JET_QWEN2_5_7B,
    "jet-qwen3-8b": JET_QWEN3_8B,
    "jet-qwen2.5-14b": JET_QWEN2_5_14B,
    "jet-qwen2.5-32b": JET_QWEN2_5_32B,
}

# teacher name -> its planned student
STUDENT_OF = dict(zip(TEACHERS, STUDENTS))
