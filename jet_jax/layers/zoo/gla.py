"""Gated Linear Attention (Yang et al. 2023) as a PostNAS candidate block, after FLA's
`GatedLinearAttention` layer (defaults: no short conv, no feature map, swish output gate).

    q, k, v, gate = x Wq, x Wk, x Wv, x Wg
    gk = logsigmoid((x W1) W2 + b2) / 16     (low-rank D -> 16 -> K gate, per key dim)
    S <- diag(exp(gk_t)) S + k_t v_t^T;  o_t = S^T (dk^-0.5 q_t)
    y = o_proj( RMSNorm_head(o) * w * silu(gate) )

The chunked form is `decay_attention_chunked` with a per-key-dim log decay: inside a chunk
the pairwise decay exp(G_i - G_j) is built in log space ([C, C, dk] per chunk), so the chunk
is kept small (16, FLA's secondary-chunk size) rather than using FLA's two-level chunking.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jet_jax.layers.zoo.base import DecayAttentionMixer


class GatedLinearAttention(DecayAttentionMixer):
    """x: [B, T, D] -> [B, T, D]. Cache: state [B, H, dk, dv] f32."""

    def __init__(self, hidden_size: int, *, num_heads: int, head_dim: int,
                 expand_v: float = 1.0, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, implementation: str = "auto",
                 gate_low_rank_dim: int = 16, gate_logit_normalizer: float = 16.0,
                 norm_eps: float = 1e-5, chunk_size: int = 16):
        super().__init__(hidden_size, num_heads=num_heads, head_dim=head_dim, expand_v=expand_v,
                         rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                         implementation=implementation, norm_eps=norm_eps, chunk_size=chunk_size)
        self.gate_logit_normalizer = gate_logit_normalizer
        self.gk_down = self._dense(hidden_size, gate_low_rank_dim, ("embed", None), rngs)
        self.gk_up = self._dense(gate_low_rank_dim, self.key_dim, (None, "heads"), rngs,
                                 use_bias=True)

    def log_decay(self, x):
        B, T, _ = x.shape
        # log decay in float32; /16 keeps alpha = sigmoid^(1/16) close to 1 (long memory)
        gk = jax.nn.log_sigmoid(self.gk_up(self.gk_down(x)).astype(jnp.float32))
        return (gk / self.gate_logit_normalizer).reshape(B, T, self.num_heads, self.head_dim)
