"""Explicit HF <-> JAX key tables, one per mixer type, with per-key layout hooks.

HF stores nn.Linear weights as [out, in]; our kernels are [in, out] (`linear`). Every
entry names the HF key, the path inside `nnx.state(model)` and the HF shape, so a missing,
unexpected or mis-shaped tensor can be reported by name.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jet_jax.config import OFFICIAL_LAYER_TYPES, ModelConfig


@dataclasses.dataclass(frozen=True)
class KeySpec:
    hf_key: str
    path: tuple  # path in nnx.state(model), e.g. ("model", "layers", 3, "mlp", "up_proj", "kernel")
    hf_shape: tuple[int, ...]
    layout: str  # "linear" (transpose) or "same"

    def to_hf(self, value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(value.T) if self.layout == "linear" else value

    def from_hf(self, value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(value.T) if self.layout == "linear" else value


# (HF suffix, JAX sub-path, layout, shape as a function of the config)
QWEN2_ATTENTION_KEYS = (
    ("q_proj.weight", ("q_proj", "kernel"), "linear", lambda c: (c.num_attention_heads * c.head_dim, c.hidden_size)),
    ("q_proj.bias", ("q_proj", "bias"), "same", lambda c: (c.num_attention_heads * c.head_dim,)),
    ("k_proj.weight", ("k_proj", "kernel"), "linear", lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size)),
    ("k_proj.bias", ("k_proj", "bias"), "same", lambda c: (c.num_key_value_heads * c.head_dim,)),
    ("v_proj.weight", ("v_proj", "kernel"), "linear", lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size)),
    ("v_proj.bias", ("v_proj", "bias"), "same", lambda c: (c.num_key_value_heads * c.head_dim,)),
    ("o_proj.weight", ("o_proj", "kernel"), "linear", lambda c: (c.hidden_size, c.num_attention_heads * c.head_dim)),
)

JET_BLOCK_KEYS = (
    ("q_proj.weight", ("q_proj", "kernel"), "linear", lambda c: (c.jet.key_dim, c.hidden_size)),
    ("k_proj.weight", ("k_proj", "kernel"), "linear", lambda c: (c.jet.key_dim, c.hidden_size)),
    ("v_proj.weight", ("v_proj", "kernel"), "linear", lambda c: (c.jet.value_dim, c.hidden_size)),
    ("b_proj.weight", ("b_proj", "kernel"), "linear", lambda c: (c.jet.num_heads, c.hidden_size)),
    ("a_proj.weight", ("a_proj", "kernel"), "linear", lambda c: (c.jet.num_heads, c.hidden_size)),
    ("A_log", ("A_log",), "same", lambda c: (c.jet.num_heads,)),
    ("dt_bias", ("dt_bias",), "same", lambda c: (c.jet.num_heads,)),
    ("dynamic_conv1d.kernel_generator.w1.weight", ("dynamic_conv1d", "kernel_generator", "w1", "kernel"),
     "linear", lambda c: (c.jet.generator_dim, c.hidden_size)),
    ("dynamic_conv1d.kernel_generator.w2.weight", ("dynamic_conv1d", "kernel_generator", "w2", "kernel"),
     "linear", lambda c: (c.jet.value_dim * c.jet.conv_size, c.jet.generator_dim)),
    ("dynamic_conv1d.kernel_generator.w2.bias", ("dynamic_conv1d", "kernel_generator", "w2", "bias"),
     "same", lambda c: (c.jet.value_dim * c.jet.conv_size,)),
    ("g_proj.weight", ("g_proj", "kernel"), "linear", lambda c: (c.jet.value_dim, c.hidden_size)),
    ("o_norm.weight", ("o_norm", "weight"), "same", lambda c: (c.jet.head_v_dim,)),
    ("o_proj.weight", ("o_proj", "kernel"), "linear", lambda c: (c.hidden_size, c.jet.value_dim)),
)

# Llama: the Qwen2 projections without biases.
LLAMA_ATTENTION_KEYS = tuple(k for k in QWEN2_ATTENTION_KEYS if not k[0].endswith(".bias"))

# Qwen3: no biases, per-head RMSNorm weights [head_dim] on q and k.
QWEN3_ATTENTION_KEYS = LLAMA_ATTENTION_KEYS + (
    ("q_norm.weight", ("q_norm", "weight"), "same", lambda c: (c.head_dim,)),
    ("k_norm.weight", ("k_norm", "weight"), "same", lambda c: (c.head_dim,)),
)

# The attention key table of each teacher family (ModelConfig.family).
ATTENTION_KEYS = {"qwen2": QWEN2_ATTENTION_KEYS, "llama": LLAMA_ATTENTION_KEYS,
                  "qwen3": QWEN3_ATTENTION_KEYS}


def mixer_keys(cfg: ModelConfig, layer_type: str) -> tuple:
    if layer_type in ("attn", "swa"):
        return ATTENTION_KEYS[cfg.family]
    return JET_BLOCK_KEYS

DECODER_LAYER_KEYS = (
    ("input_layernorm.weight", ("input_layernorm", "weight"), "same", lambda c: (c.hidden_size,)),
    ("post_attention_layernorm.weight", ("post_attention_layernorm", "weight"), "same", lambda c: (c.hidden_size,)),
    ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), "linear", lambda c: (c.intermediate_size, c.hidden_size)),
    ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), "linear", lambda c: (c.intermediate_size, c.hidden_size)),
    ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), "linear", lambda c: (c.hidden_size, c.intermediate_size)),
)

# Buffers some HF checkpoints carry that hold no parameters.
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


def key_table(cfg: ModelConfig) -> list[KeySpec]:
    """Every tensor of the HF checkpoint of `cfg`, in checkpoint order."""
    specs = [KeySpec("model.embed_tokens.weight", ("model", "embed_tokens", "embedding"),
                     (cfg.vocab_size, cfg.hidden_size), "same")]
    for i, t in enumerate(cfg.layer_types):
        if t not in OFFICIAL_LAYER_TYPES:
            raise ValueError(f"layer {i} has type {t!r}, which has no official checkpoint format")
        prefix = f"model.layers.{i}."
        for suffix, sub, layout, shape in mixer_keys(cfg, t):
            specs.append(KeySpec(prefix + "self_attn." + suffix, ("model", "layers", i, "self_attn") + sub,
                                 shape(cfg), layout))
        for suffix, sub, layout, shape in DECODER_LAYER_KEYS:
            specs.append(KeySpec(prefix + suffix, ("model", "layers", i) + sub, shape(cfg), layout))
    specs.append(KeySpec("model.norm.weight", ("model", "norm", "weight"), (cfg.hidden_size,), "same"))
    if not cfg.tie_word_embeddings:
        specs.append(KeySpec("lm_head.weight", ("lm_head", "kernel"), (cfg.vocab_size, cfg.hidden_size),
                             "linear"))
    return specs
