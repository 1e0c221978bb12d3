"""RetNet multi-scale retention (Sun et al. 2023) as a PostNAS candidate block, after FLA's
`MultiScaleRetention` layer.

    q, k, v, gate = x Wq, x Wk, x Wv, x Wg        (no short convs, no feature map)
    gamma_h = 1 - 2^(-5-h)   (fixed, data-independent, one per head h = 0..H-1)
    S <- gamma_h S + k_t v_t^T;  o_t = S^T (dk^-0.5 q_t)
    y = o_proj( RMSNorm_head(o) * w * silu(gate) )

Deviations: the relative position encoding (xPos in the paper, RoPE in FLA) is omitted, and
the paper's per-head GroupNorm is a per-head RMSNorm (as FLA). The chunked form is
`decay_attention_chunked` with a scalar log decay log(gamma_h) per head.
"""

from __future__ import annotations

import jax.numpy as jnp

from jet_jax.layers.zoo.base import DecayAttentionMixer


def retention_log_decay(num_heads: int) -> jnp.ndarray:
    """log(gamma_h) = log(1 - 2^(-5-h)), h = 0..H-1. [H] f32"""
    return jnp.log1p(-jnp.exp2(-5.0 - jnp.arange(num_heads, dtype=jnp.float32)))


class RetNet(DecayAttentionMixer):
    """x: [B, T, D] -> [B, T, D]. Cache: state [B, H, dk, dv] f32."""

    def log_decay(self, x):
        B, T, _ = x.shape
        return jnp.broadcast_to(retention_log_decay(self.num_heads), (B, T, self.num_heads))
