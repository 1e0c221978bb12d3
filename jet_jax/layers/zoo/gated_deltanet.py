"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024) as a PostNAS candidate block, after FLA's
`GatedDeltaNet` layer; also home of the (gated) delta-rule core shared with `deltanet.py`.

    q, k, v = silu(conv4(x Wq)), silu(conv4(x Wk)), silu(conv4(x Wv));  q, k l2-normalised
    beta = sigmoid(x Wb);  g = -exp(A_log) * softplus(x Wa + dt_bias)          (per head)
    S <- exp(g_t) S;  S <- S + beta_t k_t (v_t - S^T k_t)^T;  o_t = S^T (dk^-0.5 q_t)
    y = o_proj( RMSNorm_head(o) * w * silu(x Wg) )
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jet_jax.layers.norms import GatedRMSNorm
from jet_jax.layers.zoo.base import LinearMixer, ShortConv, doc_index, dt_bias_init, logical_param
from jet_jax.ops.gated_delta_rule import gated_delta_rule, l2norm


def _delta_rule(q, k, v, g, beta, *, scale: float, doc, initial_state, implementation: str):
    """The (gated) delta rule through the shared op `jet_jax.ops.gated_delta_rule`.

    q, k: [B, T, H, K] (already normalised); v: [B, T, H, V]; g (log decay, or None = no
    decay), beta: [B, T, H]; doc: [B, T] document index; state [B, H, K, V] f32.
    Returns (o [B, T, H, V] f32, final state [B, H, K, V] f32).
    """
    if g is None:
        g = jnp.zeros(beta.shape, jnp.float32)
    return gated_delta_rule(q, k, v.astype(jnp.float32), g, beta, scale=scale,
                            initial_state=initial_state, output_final_state=True, segment_ids=doc,
                            use_qk_l2norm=False, implementation=implementation)


def delta_rule_recurrent(q, k, v, g, beta, *, scale: float, doc, initial_state=None):
    """Token-loop reference (shapes as `_delta_rule`)."""
    return _delta_rule(q, k, v, g, beta, scale=scale, doc=doc, initial_state=initial_state,
                       implementation="recurrent")


def delta_rule_chunked(q, k, v, g, beta, *, scale: float, doc, initial_state=None):
    """Chunkwise-parallel (WY / UT-transform, chunk 64) form (shapes as `_delta_rule`)."""
    return _delta_rule(q, k, v, g, beta, scale=scale, doc=doc, initial_state=initial_state,
                       implementation="chunked")


class GatedDeltaNet(LinearMixer):
    """x: [B, T, D] -> [B, T, D]. Cache: conv_q/conv_k [B, W-1, K], conv_v [B, W-1, V],
    state [B, H, dk, dv] f32."""

    IMPLEMENTATIONS = ("auto", "recurrent", "chunked", "pallas")  # those of gated_delta_rule

    gated = True   # DeltaNet subclasses with gated = False (no decay, no a_proj/A_log/dt_bias)

    def __init__(self, hidden_size: int, *, num_heads: int, head_dim: int,
                 expand_v: float = 1.0, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, implementation: str = "auto",
                 conv_size: int = 4, norm_eps: float = 1e-5, chunk_size: int = 64):
        super().__init__(hidden_size, num_heads=num_heads, head_dim=head_dim, expand_v=expand_v,
                         rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                         implementation=implementation)
        D, H, K, V = hidden_size, num_heads, self.key_dim, self.value_dim
        self.conv_size, self.chunk_size = conv_size, chunk_size
        self.q_proj = self._dense(D, K, ("embed", "heads"), rngs)
        self.k_proj = self._dense(D, K, ("embed", "heads"), rngs)
        self.v_proj = self._dense(D, V, ("embed", "heads"), rngs)
        self.b_proj = self._dense(D, H, ("embed", "head_scalars"), rngs)
        if self.gated:
            self.a_proj = self._dense(D, H, ("embed", "head_scalars"), rngs)
            a = jax.random.uniform(rngs.params(), (H,), jnp.float32, 0.0, 16.0)
            self.A_log = logical_param(jnp.log(a).astype(param_dtype), "head_scalars")
            self.dt_bias = logical_param(dt_bias_init(rngs.params(), H).astype(param_dtype),
                                         "head_scalars")
        conv = lambda c: ShortConv(c, conv_size, rngs=rngs, param_dtype=param_dtype, dtype=dtype)
        self.q_conv, self.k_conv, self.v_conv = conv(K), conv(K), conv(V)
        self.g_proj = self._dense(D, V, ("embed", "heads"), rngs)
        self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps, dtype=dtype,
                                   param_dtype=param_dtype)
        self.o_proj = self._dense(V, D, ("heads", "embed"), rngs)

    def init_cache(self, batch_size: int, max_length: int | None = None, dtype=None) -> dict:
        W = self.conv_size - 1
        return {"conv_q": jnp.zeros((batch_size, W, self.key_dim), self.dtype),
                "conv_k": jnp.zeros((batch_size, W, self.key_dim), self.dtype),
                "conv_v": jnp.zeros((batch_size, W, self.value_dim), self.dtype),
                "state": jnp.zeros((batch_size, self.num_heads, self.head_dim, self.head_v_dim),
                                   jnp.float32)}

    def __call__(self, x, *, segment_ids=None, cache=None):
        B, T, _ = x.shape
        H, dk, dv = self.num_heads, self.head_dim, self.head_v_dim
        doc = doc_index(segment_ids, B, T)
        c = cache or {}
        q, cq = self.q_conv(self.q_proj(x), doc, c.get("conv_q"))
        k, ck = self.k_conv(self.k_proj(x), doc, c.get("conv_k"))
        v, cv = self.v_conv(self.v_proj(x), doc, c.get("conv_v"))
        q, k = l2norm(q.reshape(B, T, H, dk)), l2norm(k.reshape(B, T, H, dk))
        v = v.reshape(B, T, H, dv)
        beta = jax.nn.sigmoid(self.b_proj(x).astype(jnp.float32))
        g = None
        if self.gated:   # decay computed in float32 (as FLA / the JetBlock)
            g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(
                self.a_proj(x).astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32))
        kw = dict(scale=dk ** -0.5, doc=doc, initial_state=c.get("state"))
        o, S = _delta_rule(q, k, v, g, beta, implementation=self.implementation, **kw)
        gate = self.g_proj(x).reshape(B, T, H, dv)
        y = self.o_proj(self.o_norm(o, gate).reshape(B, T, H * dv).astype(self.dtype))
        new_cache = None if cache is None else {"conv_q": cq, "conv_k": ck, "conv_v": cv, "state": S}
        return y, new_cache
