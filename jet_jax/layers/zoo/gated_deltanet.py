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
from jet_jax.layers.zoo.base import (LinearMixer, ShortConv, _state0, chunk_masks, doc_index,
                                     dt_bias_init, l2norm, logical_param, pad_time, resets)


def delta_rule_recurrent(q, k, v, g, beta, *, scale: float, doc, initial_state=None):
    """Token-loop reference. q, k: [B, T, H, K] (already normalised); v: [B, T, H, V];
    g (log decay, or None = no decay), beta: [B, T, H]; doc: [B, T]; state [B, H, K, V] f32.
    Returns (o [B, T, H, V] f32, final state [B, H, K, V] f32)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    if g is None:
        g = jnp.zeros(beta.shape, jnp.float32)
    tm = lambda a: jnp.moveaxis(a.astype(jnp.float32), 1, 0)

    def step(S, xs):
        q_t, k_t, v_t, g_t, b_t, r_t = xs
        S = jnp.where(r_t[:, None, None, None], 0.0, S) * jnp.exp(g_t)[..., None, None]
        u = b_t[..., None] * (v_t - jnp.einsum("bhkv,bhk->bhv", S, k_t))
        S = S + k_t[..., :, None] * u[..., None, :]
        return S, scale * jnp.einsum("bhkv,bhk->bhv", S, q_t)

    S, o = jax.lax.scan(step, _state0(initial_state, B, H, K, V),
                        (tm(q), tm(k), tm(v), tm(g), tm(beta), jnp.moveaxis(resets(doc), 1, 0)))
    return jnp.moveaxis(o, 0, 1), S


def delta_rule_chunked(q, k, v, g, beta, *, scale: float, doc, initial_state=None,
                       chunk_size: int = 64):
    """Chunkwise-parallel (WY / UT-transform) form of `delta_rule_recurrent`, same I/O.

    Per chunk, with G the in-chunk cumulative log decay, Gam_ij = exp(G_i - G_j) (same doc,
    j <= i) and M = strictly-lower(diag(beta) K K^T * Gam):
        Tm = (I + M)^-1,  U = Tm (beta v),  Wm = Tm (beta exp(G) k)
        v_new = U - Wm S;  o = scale (q exp(G)) S + scale (q K^T * Gam) v_new
        S' = exp(G_C) S + (k exp(G_C - G))^T v_new
    Tokens not continuing the carried state (a document start earlier in the chunk) get their
    S terms masked; a doc-block-diagonal M keeps documents apart inside a chunk.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    N = -(-T // C)
    n_pad = N * C - T
    if g is None:
        g = jnp.zeros(beta.shape, jnp.float32)
    # zero-padded tail tokens have k = 0, g = 0: they change neither outputs nor state
    q, k, v, g, beta = (pad_time(a.astype(jnp.float32), n_pad) for a in (q, k, v, g, beta))
    doc = pad_time(doc, n_pad, "edge")
    same, cont, same_last = chunk_masks(doc, C, N)

    ch = lambda a: jnp.moveaxis(a.reshape(B, N, C, H, *a.shape[3:]), 3, 1)   # [B,H,N,C,...]
    q, k, v, g, beta = ch(q), ch(k), ch(v), ch(g), ch(beta)
    G = jnp.cumsum(g, axis=3)
    same_h = same[:, None]
    gam = jnp.exp(jnp.where(same_h, G[..., :, None] - G[..., None, :], -jnp.inf))  # [B,H,N,C,C]
    kk = jnp.einsum("bhnik,bhnjk->bhnij", k, k)
    strict = jnp.tril(jnp.ones((C, C), bool), -1)
    M = jnp.where(strict, beta[..., :, None] * kk * gam, 0.0)
    eye = jnp.eye(C, dtype=jnp.float32)
    cont_h = cont[:, None, ..., None]                                      # [B,1,N,C,1]
    rhs = jnp.concatenate([beta[..., None] * v,
                           beta[..., None] * jnp.exp(G)[..., None] * k * cont_h], axis=-1)
    sol = jax.lax.linalg.triangular_solve(eye + M, rhs, left_side=True, lower=True,
                                          unit_diagonal=True)
    U, Wm = sol[..., :V], sol[..., V:]
    qk = jnp.einsum("bhnik,bhnjk->bhnij", q, k) * gam * scale
    q_in = q * jnp.exp(G)[..., None] * scale * cont_h
    k_out = k * jnp.exp(G[..., -1:] - G)[..., None] * same_last[:, None, ..., None]
    decay_last = jnp.exp(G[..., -1])[..., None, None]                      # [B,H,N,1,1]
    carry_last = cont[:, None, :, -1, None, None]                          # [B,1,N,1,1]

    def step(S, xs):
        qk_n, qi, ko, u, w, dl, cl = xs
        v_new = u - jnp.einsum("bhck,bhkv->bhcv", w, S)
        o = jnp.einsum("bhck,bhkv->bhcv", qi, S) + jnp.einsum("bhij,bhjv->bhiv", qk_n, v_new)
        S = jnp.where(cl, S * dl, 0.0) + jnp.einsum("bhck,bhcv->bhkv", ko, v_new)
        return S, o

    nf = lambda a: jnp.moveaxis(a, 2, 0)
    S, o = jax.lax.scan(step, _state0(initial_state, B, H, K, V),
                        tuple(nf(a) for a in (qk, q_in, k_out, U, Wm, decay_last, carry_last)))
    o = jnp.moveaxis(jnp.moveaxis(o, 0, 2), 1, 3).reshape(B, N * C, H, V)[:, :T]
    return o, S


class GatedDeltaNet(LinearMixer):
    """x: [B, T, D] -> [B, T, D]. Cache: conv_q/conv_k [B, W-1, K], conv_v [B, W-1, V],
    state [B, H, dk, dv] f32."""

    gated = True   # DeltaNet subclasses with gated = False (no decay, no a_proj/A_log/dt_bias)

    def __init__(self, hidden_size: int, *, num_heads: int, head_dim: int,
                 expand_v: float = 1.0, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, implementation: str = "chunked",
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
        if self.implementation == "recurrent":
            o, S = delta_rule_recurrent(q, k, v, g, beta, **kw)
        else:
            o, S = delta_rule_chunked(q, k, v, g, beta, chunk_size=self.chunk_size, **kw)
        gate = self.g_proj(x).reshape(B, T, H, dv)
        y = self.o_proj(self.o_norm(o, gate).reshape(B, T, H * dv).astype(self.dtype))
        new_cache = None if cache is None else {"conv_q": cq, "conv_k": ck, "conv_v": cv, "state": S}
        return y, new_cache
