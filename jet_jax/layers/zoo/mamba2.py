"""Mamba2 (Dao & Gu 2024, state space duality) as a PostNAS candidate block, after FLA's /
HF's `Mamba2` mixer with n_groups = 1.

    [z, xBC, dt] = x W_in;   x, B, C = silu(conv4(xBC) + b)
    dt = softplus(dt + dt_bias);  a_t = exp(-exp(A_log) dt_t)        (scalar per head)
    S <- a_t S + B_t (dt_t x_t)^T   (S: [N, P] per head);  y_t = S^T C_t + D x_t
    out = out_proj( RMSNorm(y * silu(z)) * w )                      (norm over all of V)

Interface mapping: P (Mamba2's head dim) = head_dim * expand_v, N (state size) = `state_size`
(default head_dim), so the state is [H, N, P] like the other blocks' [H, dk, dv]. The core is
the decayed linear attention of `base.py` with q = C, k = B, v = dt x, g = dt A, scale 1;
its chunked form is SSD (intra-chunk masked "attention" + inter-chunk state passing).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jet_jax.layers.norms import rms_normalize
from jet_jax.layers.zoo.base import (LinearMixer, ShortConv, decay_attention_chunked,
                                     decay_attention_recurrent, doc_index, dt_bias_init,
                                     logical_param)


class Mamba2(LinearMixer):
    """x: [B, T, D] -> [B, T, D]. Cache: conv [B, W-1, V + 2N], state [B, H, N, P] f32."""

    def __init__(self, hidden_size: int, *, num_heads: int, head_dim: int,
                 expand_v: float = 1.0, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, implementation: str = "auto",
                 state_size: int | None = None, conv_size: int = 4, norm_eps: float = 1e-5,
                 chunk_size: int = 64):
        super().__init__(hidden_size, num_heads=num_heads, head_dim=head_dim, expand_v=expand_v,
                         rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                         implementation=implementation)
        D, H, V = hidden_size, num_heads, self.value_dim
        self.state_size = N = state_size or head_dim
        self.conv_size, self.chunk_size, self.norm_eps = conv_size, chunk_size, norm_eps
        self.conv_dim = V + 2 * N
        self.in_proj = self._dense(D, V + self.conv_dim + H, ("embed", "heads"), rngs)
        self.conv = ShortConv(self.conv_dim, conv_size, use_bias=True, rngs=rngs,
                              param_dtype=param_dtype, dtype=dtype)
        a = jax.random.uniform(rngs.params(), (H,), jnp.float32, 1.0, 16.0)
        self.A_log = logical_param(jnp.log(a).astype(param_dtype), "head_scalars")
        self.dt_bias = logical_param(dt_bias_init(rngs.params(), H).astype(param_dtype),
                                     "head_scalars")
        self.D = logical_param(jnp.ones((H,), param_dtype), "head_scalars")
        self.norm_weight = logical_param(jnp.ones((V,), param_dtype), "norm")
        self.out_proj = self._dense(V, D, ("heads", "embed"), rngs)

    def init_cache(self, batch_size: int, max_length: int | None = None, dtype=None) -> dict:
        return {"conv": jnp.zeros((batch_size, self.conv_size - 1, self.conv_dim), self.dtype),
                "state": jnp.zeros((batch_size, self.num_heads, self.state_size, self.head_v_dim),
                                   jnp.float32)}

    def __call__(self, x, *, segment_ids=None, cache=None):
        Bsz, T, _ = x.shape
        H, P, N, V = self.num_heads, self.head_v_dim, self.state_size, self.value_dim
        doc = doc_index(segment_ids, Bsz, T)
        c = cache or {}
        z, xbc, dt = jnp.split(self.in_proj(x), [V, V + self.conv_dim], axis=-1)
        xbc, conv_state = self.conv(xbc, doc, c.get("conv"))
        xs, Bm, Cm = jnp.split(xbc.astype(jnp.float32), [V, V + N], axis=-1)
        xs = xs.reshape(Bsz, T, H, P)
        dt = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32))
        g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * dt               # [B, T, H]
        # one group: B and C are shared by all heads
        k = jnp.broadcast_to(Bm[:, :, None, :], (Bsz, T, H, N))
        q = jnp.broadcast_to(Cm[:, :, None, :], (Bsz, T, H, N))
        kw = dict(scale=1.0, doc=doc, initial_state=c.get("state"))
        if self.implementation == "recurrent":
            y, S = decay_attention_recurrent(q, k, xs * dt[..., None], g, **kw)
        else:
            y, S = decay_attention_chunked(q, k, xs * dt[..., None], g,
                                           chunk_size=self.chunk_size, **kw)
        y = y + xs * self.D[...].astype(jnp.float32)[:, None]
        # gate before the norm (Mamba2's norm_before_gate=False), one group over all of V
        y = y.reshape(Bsz, T, V) * jax.nn.silu(z.astype(jnp.float32))
        y = rms_normalize(y, self.norm_eps) * self.norm_weight[...].astype(jnp.float32)
        out = self.out_proj(y.astype(self.dtype))
        return out, (None if cache is None else {"conv": conv_state, "state": S})
