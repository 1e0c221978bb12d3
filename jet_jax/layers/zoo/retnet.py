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
from flax import nnx

from jet_jax.layers.norms import GatedRMSNorm
from jet_jax.layers.zoo.base import (LinearMixer, decay_attention_chunked,
                                     decay_attention_recurrent, doc_index)


def retention_log_decay(num_heads: int) -> jnp.ndarray:
    """log(gamma_h) = log(1 - 2^(-5-h)), h = 0..H-1. [H] f32"""
    return jnp.log1p(-jnp.exp2(-5.0 - jnp.arange(num_heads, dtype=jnp.float32)))


class RetNet(LinearMixer):
    """x: [B, T, D] -> [B, T, D]. Cache: state [B, H, dk, dv] f32."""

    def __init__(self, hidden_size: int, *, num_heads: int, head_dim: int,
                 expand_v: float = 1.0, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, implementation: str = "chunked",
                 norm_eps: float = 1e-5, chunk_size: int = 64):
        super().__init__(hidden_size, num_heads=num_heads, head_dim=head_dim, expand_v=expand_v,
                         rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                         implementation=implementation)
        D, K, V = hidden_size, self.key_dim, self.value_dim
        self.chunk_size = chunk_size
        self.q_proj = self._dense(D, K, ("embed", "heads"), rngs)
        self.k_proj = self._dense(D, K, ("embed", "heads"), rngs)
        self.v_proj = self._dense(D, V, ("embed", "heads"), rngs)
        self.g_proj = self._dense(D, V, ("embed", "heads"), rngs)
        self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps, dtype=dtype,
                                   param_dtype=param_dtype)
        self.o_proj = self._dense(V, D, ("heads", "embed"), rngs)

    def init_cache(self, batch_size: int, max_length: int | None = None, dtype=None) -> dict:
        return {"state": jnp.zeros((batch_size, self.num_heads, self.head_dim, self.head_v_dim),
                                   jnp.float32)}

    def __call__(self, x, *, segment_ids=None, cache=None):
        B, T, _ = x.shape
        H, dk, dv = self.num_heads, self.head_dim, self.head_v_dim
        doc = doc_index(segment_ids, B, T)
        q = self.q_proj(x).reshape(B, T, H, dk)
        k = self.k_proj(x).reshape(B, T, H, dk)
        v = self.v_proj(x).reshape(B, T, H, dv)
        g = jnp.broadcast_to(retention_log_decay(H), (B, T, H))
        kw = dict(scale=dk ** -0.5, doc=doc, initial_state=None if cache is None else cache["state"])
        if self.implementation == "recurrent":
            o, S = decay_attention_recurrent(q, k, v, g, **kw)
        else:
            o, S = decay_attention_chunked(q, k, v, g, chunk_size=self.chunk_size, **kw)
        gate = self.g_proj(x).reshape(B, T, H, dv)
        y = self.o_proj(self.o_norm(o, gate).reshape(B, T, H * dv).astype(self.dtype))
        return y, (None if cache is None else {"state": S})
