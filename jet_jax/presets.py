"""Model presets: the released Qwen2.5 teachers and Jet-Nemotron students, plus tiny ones.

Layer indices are 0-based, as in the released Jet-Nemotron configs (`layer_types` of their
config.json). The tiny presets use the byte-level vocabulary of `jet_jax.tokenizer.ByteTokenizer`.
"""

from jet_jax.config import JetBlockConfig, ModelConfig, hybrid_layer_types

QWEN2_5_1_5B = ModelConfig(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=131072,
    tie_word_embeddings=True)

QWEN2_5_3B = ModelConfig(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
    num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
    tie_word_embeddings=True)

JET_NEMOTRON_2B = QWEN2_5_1_5B.replace(
    layer_types=hybrid_layer_types(28, attn=(14, 19), swa=(20, 21)),
    window_size=1152,
    jet=JetBlockConfig(num_heads=12, head_dim=96, expand_v=2.6666666666666665, conv_size=4,
                       dconv_generator_reduction=8, norm_eps=1e-5))

JET_NEMOTRON_4B = QWEN2_5_3B.replace(
    layer_types=hybrid_layer_types(36, attn=(17, 20, 32), swa=(5, 16, 19, 21, 22, 25, 27)),
    window_size=2048,
    jet=JetBlockConfig(num_heads=16, head_dim=128, expand_v=2.0, conv_size=4,
                       dconv_generator_reduction=8, norm_eps=1e-5))

# Tiny shapes for tests and the CPU demo (byte-level vocabulary).
TINY_QWEN2 = ModelConfig(
    vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
    tie_word_embeddings=True, bos_token_id=257, eos_token_id=258, pad_token_id=256)  # ByteTokenizer ids

TINY_JET = TINY_QWEN2.replace(
    layer_types=hybrid_layer_types(4, attn=(1,), swa=(2,)), window_size=32,
    jet=JetBlockConfig(num_heads=2, head_dim=16, expand_v=2.0, conv_size=4,
                       dconv_generator_reduction=8))

PRESETS = {
    "qwen2.5-1.5b": QWEN2_5_1_5B,
    "qwen2.5-3b": QWEN2_5_3B,
    "jet-nemotron-2b": JET_NEMOTRON_2B,
    "jet-nemotron-4b": JET_NEMOTRON_4B,
    "tiny-qwen2": TINY_QWEN2,
    "tiny-jet": TINY_JET,
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name]
