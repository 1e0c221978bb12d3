"""Pre-norm decoder layer: x + Mixer(RMSNorm(x)), then x + MLP(RMSNorm(x))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jet_jax.config import ModelConfig
from jet_jax.layers.attention import Attention
from jet_jax.layers.jet_block import JetBlock
from jet_jax.layers.mlp import MLP
from jet_jax.layers.norms import RMSNorm


def make_mixer(cfg: ModelConfig, layer_type: str, *, rngs: nnx.Rngs, dtype, param_dtype,
               gdr_implementation: str = "auto", conv_implementation: str = "auto",
               attention_implementation: str = "auto") -> nnx.Module:
    """The token mixer for one layer type (`attn`, `swa`, `jet`, or a zoo block name)."""
    if layer_type == "attn":
        return Attention(cfg, window=None, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                         implementation=attention_implementation)
    if layer_type == "swa":
        return Attention(cfg, window=cfg.window_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                         implementation=attention_implementation)
    if layer_type == "jet":
        return JetBlock(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                        gdr_implementation=gdr_implementation,
                        conv_implementation=conv_implementation)
    from jet_jax.layers.zoo import MIXERS  # PostNAS candidate blocks
    if layer_type not in MIXERS:
        raise ValueError(f"unknown layer type {layer_type!r}; valid: attn, swa, jet, "
                         f"{', '.join(MIXERS)}")
    kw = dict(num_heads=cfg.jet.num_heads, head_dim=cfg.jet.head_dim)
    kw.update(cfg.zoo_kwargs(layer_type))
    # The model's linear-attention choice reaches zoo blocks too, so a block comparison runs
    # every candidate with the same selection rule (blocks without a Pallas kernel reject it).
    return MIXERS[layer_type](cfg.hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                              implementation=gdr_implementation, **kw)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer_type: str, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, gdr_implementation: str = "auto",
                 conv_implementation: str = "auto", attention_implementation: str = "auto"):
        self.layer_type = layer_type
        norm = dict(eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.self_attn = make_mixer(cfg, layer_type, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                                    gdr_implementation=gdr_implementation,
                                    conv_implementation=conv_implementation,
                                    attention_implementation=attention_implementation)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, init_std=cfg.initializer_range,
                       rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def mix(self, x, *, positions, segment_ids, cache):
        if isinstance(self.self_attn, Attention):
            return self.self_attn(x, positions=positions, segment_ids=segment_ids, cache=cache)
        return self.self_attn(x, segment_ids=segment_ids, cache=cache)

    def __call__(self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None,
                 cache: dict | None = None):
        """x: [B, T, D] -> (x' [B, T, D], new_cache or None)."""
        # named scopes label the compiled ops (profiles: benchmarks/profile_prefill.py)
        with jax.named_scope(f"mixer_{self.layer_type}"):
            h, new_cache = self.mix(self.input_layernorm(x), positions=positions,
                                    segment_ids=segment_ids, cache=cache)
        x = x + h
        with jax.named_scope("mlp"):
            x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_cache
