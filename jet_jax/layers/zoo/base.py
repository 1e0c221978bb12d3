"""The common interface of the PostNAS candidate linear-attention mixers, and their shared parts.

Every block in this package is a `LinearMixer`: `y, new_cache = mixer(x, segment_ids=, cache=)`
with x: [B, T, D]. Shared here:

* `doc_index` turns packed `segment_ids` [B, T] (or None) into a monotone document counter
  (`jet_jax.ops.segments.document_index`), so a state reset is "doc[t] != doc[t-1]" and "same
  document" is plain equality even if ids repeat.
* `ShortConv`: causal depthwise convolution (kernel W) + silu with a decode state of the last
  W-1 inputs [B, W-1, C]; taps never reach into an earlier document.
* `decay_attention_recurrent` / `decay_attention_chunked`: the linear recurrence
      S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,   o_t = scale * S_t^T q_t
  with a scalar (g: [B, T, H]) or per-key-dim (g: [B, T, H, Dk]) log-decay. RetNet, GLA and
  Mamba2 are all this recurrence with different q/k/v/g (Mamba2: q=C, k=B, v=dt*x).

Cache convention (all blocks): the T tokens of a call continue the cached state, i.e. the
cache belongs to the document of the first token; `segment_ids` only mark resets *inside*
the call. The state returned is the state after the last token (of the last document).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jet_jax.layers.norms import GatedRMSNorm
from jet_jax.ops.segments import document_index
from jet_jax.sharding import logical_param, partitioned

# "auto" is the fastest verified form: for the decay-attention mixers that is `chunked` (they
# have no kernel); the delta-rule mixers hand it to `jet_jax.ops.gated_delta_rule`, as the
# JetBlock does, so every block in a comparison runs its best implementation.
IMPLEMENTATIONS = ("auto", "recurrent", "chunked")


class LinearMixer(nnx.Module):
    """Abstract base: a causal token mixer with an O(1)-in-T recurrent decode state.

    H = num_heads, dk = head_dim, dv = round(head_dim * expand_v), K = H*dk, V = H*dv.
    `implementation`: one of the class's IMPLEMENTATIONS ("recurrent" is the reference).
    """

    IMPLEMENTATIONS = IMPLEMENTATIONS

    def __init__(self, hidden_size: int, *, num_heads: int, head_dim: int,
                 expand_v: float = 1.0, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, implementation: str = "auto"):
        del rngs
        if implementation not in self.IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {self.IMPLEMENTATIONS}, got "
                             f"{implementation!r}")
        head_v_dim = head_dim * expand_v
        if not math.isclose(head_v_dim, round(head_v_dim)):
            raise ValueError(f"head_dim * expand_v must be an integer, got {head_v_dim}")
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.head_v_dim = int(round(head_v_dim))
        self.key_dim = num_heads * head_dim
        self.value_dim = num_heads * self.head_v_dim
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.implementation = implementation

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
                 cache: dict | None = None) -> tuple[jax.Array, dict | None]:
        """x: [B, T, D]; segment_ids: [B, T] int or None -> (y [B, T, D], new_cache or None)."""
        raise NotImplementedError

    def init_cache(self, batch_size: int, max_length: int | None = None, dtype=None) -> dict:
        raise NotImplementedError

    # max_length / context / dtype complete the mixer cache protocol shared with attention and
    # the JetBlock; a linear mixer's cache is O(1) in context and keeps its own dtypes.
    def cache_bytes(self, batch_size: int, context: int = 0, dtype_bytes: int | None = None) -> int:
        shapes = jax.eval_shape(lambda: self.init_cache(batch_size))
        return int(sum(math.prod(s.shape) * jnp.dtype(s.dtype).itemsize
                       for s in jax.tree.leaves(shapes)))

    def _dense(self, n_in: int, n_out: int, axes: tuple, rngs: nnx.Rngs,
               use_bias: bool = False) -> nnx.Linear:
        return nnx.Linear(n_in, n_out, use_bias=use_bias,
                          kernel_init=partitioned(nnx.initializers.lecun_normal(), *axes),
                          bias_init=partitioned(nnx.initializers.zeros_init(), axes[-1]),
                          dtype=self.dtype, param_dtype=self.param_dtype, rngs=rngs)


class DecayAttentionMixer(LinearMixer):
    """Linear attention with a gated output and a log decay (GLA, RetNet):

        q, k, v, gate = x Wq, x Wk, x Wv, x Wg
        S <- diag(exp(g_t)) S + k_t v_t^T;  o_t = S^T (dk^-0.5 q_t)
        y = o_proj( RMSNorm_head(o) * w * silu(gate) )

    Subclasses define `log_decay(x) -> [B, T, H]` (per head) or `[B, T, H, dk]` (per key dim).
    Cache: state [B, H, dk, dv] f32.
    """

    def __init__(self, hidden_size: int, *, num_heads: int, head_dim: int,
                 expand_v: float = 1.0, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, implementation: str = "auto",
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

    def log_decay(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

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
        g = self.log_decay(x)
        kw = dict(scale=dk ** -0.5, doc=doc, initial_state=None if cache is None else cache["state"])
        if self.implementation == "recurrent":
            o, S = decay_attention_recurrent(q, k, v, g, **kw)
        else:
            o, S = decay_attention_chunked(q, k, v, g, chunk_size=self.chunk_size, **kw)
        gate = self.g_proj(x).reshape(B, T, H, dv)
        y = self.o_proj(self.o_norm(o, gate).reshape(B, T, H * dv).astype(self.dtype))
        return y, (None if cache is None else {"state": S})


# ----------------------------------------------------------------------------- helpers


def doc_index(segment_ids: jax.Array | None, batch: int, length: int) -> jax.Array:
    """[B, T] int32 document counter: 0 for the first token's document, +1 at every id change."""
    if segment_ids is None:
        return jnp.zeros((batch, length), jnp.int32)
    return document_index(segment_ids)


def resets(doc: jax.Array) -> jax.Array:
    """[B, T] bool: token t starts a new document inside this call (never t = 0, see module doc)."""
    return jnp.concatenate([jnp.zeros_like(doc[:, :1], bool), doc[:, 1:] != doc[:, :-1]], axis=1)


def dt_bias_init(rng: jax.Array, num_heads: int, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 floor: float = 1e-4) -> jax.Array:
    """inverse_softplus(dt), dt log-uniform in [dt_min, dt_max] (Mamba2 / GDN init). [H]"""
    u = jax.random.uniform(rng, (num_heads,))
    dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)), floor)
    return dt + jnp.log(-jnp.expm1(-dt))


class ShortConv(nnx.Module):
    """Causal depthwise conv1d (kernel W, optional bias) followed by silu.

    x: [B, T, C], doc: [B, T], state: [B, W-1, C] (the previous W-1 inputs, or None = zeros)
    -> (y [B, T, C], new_state [B, W-1, C]). A tap is used only if its input is in the same
    document as the output token, and the returned state zeroes inputs of documents other
    than the last one, so packed documents never see each other.
    """

    def __init__(self, channels: int, kernel_size: int = 4, *, use_bias: bool = False,
                 rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=jnp.float32):
        self.kernel_size = kernel_size
        self.dtype = dtype
        # PyTorch Conv1d default init for a depthwise conv: fan_in = kernel_size.
        bound = 1.0 / math.sqrt(kernel_size)
        w = jax.random.uniform(rngs.params(), (kernel_size, channels), param_dtype, -bound, bound)
        self.weight = logical_param(w, None, "heads")       # [W, C]; tap W-1 = current token
        self.bias = logical_param(jnp.zeros((channels,), param_dtype), "heads") if use_bias else None

    def __call__(self, x, doc, state=None):
        B, T, C = x.shape
        W = self.kernel_size
        hist = jnp.zeros((B, W - 1, C), x.dtype) if state is None else state.astype(x.dtype)
        xp = jnp.concatenate([hist, x], axis=1)                          # [B, T+W-1, C]
        # the history belongs to the first token's document (cache convention)
        docp = jnp.concatenate([jnp.repeat(doc[:, :1], W - 1, axis=1), doc], axis=1)
        w = self.weight[...].astype(self.dtype)
        y = jnp.zeros((B, T, C), jnp.result_type(x.dtype, self.dtype))
        for tap in range(W):
            same = (docp[:, tap:tap + T] == doc)[..., None]
            y = y + jnp.where(same, xp[:, tap:tap + T], 0) * w[tap]
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        keep = (docp[:, -(W - 1):] == doc[:, -1:])[..., None]
        new_state = jnp.where(keep, xp[:, -(W - 1):], 0)
        return jax.nn.silu(y), new_state


# ------------------------------------------------------- decayed linear attention (RetNet/GLA/Mamba2)


def _state0(initial_state, B, H, K, V):
    if initial_state is None:
        return jnp.zeros((B, H, K, V), jnp.float32)
    return initial_state.astype(jnp.float32)


def decay_attention_recurrent(q, k, v, g, *, scale: float, doc, initial_state=None):
    """Token-by-token reference. q, k: [B, T, H, K]; v: [B, T, H, V]; g: [B, T, H] or
    [B, T, H, K] (log decay, <= 0); doc: [B, T]; state [B, H, K, V] f32.
    Returns (o [B, T, H, V] f32, final state [B, H, K, V] f32)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    f32 = lambda a: jnp.moveaxis(a.astype(jnp.float32), 1, 0)
    rst = jnp.moveaxis(resets(doc), 1, 0)

    def step(S, xs):
        q_t, k_t, v_t, g_t, r_t = xs
        S = jnp.where(r_t[:, None, None, None], 0.0, S)
        decay = jnp.exp(g_t)[..., None] if g_t.ndim == 3 else jnp.exp(g_t)[..., None, None]
        S = S * decay + k_t[..., :, None] * v_t[..., None, :]
        return S, scale * jnp.einsum("bhk,bhkv->bhv", q_t, S)

    S, o = jax.lax.scan(step, _state0(initial_state, B, H, K, V), (f32(q), f32(k), f32(v), f32(g), rst))
    return jnp.moveaxis(o, 0, 1), S


def chunk_masks(doc, chunk_size: int, n_chunks: int):
    """From a padded doc [B, N*C]: same [B, N, C, C] (same doc and j <= i), cont [B, N, C]
    (token i continues the state carried into its chunk), same_last [B, N, C] (token j is in
    the document of the chunk's last token)."""
    B = doc.shape[0]
    d = doc.reshape(B, n_chunks, chunk_size)
    prev = jnp.concatenate([doc[:, :1], doc[:, chunk_size - 1:-1:chunk_size]], axis=1)  # [B, N]
    causal = jnp.tril(jnp.ones((chunk_size, chunk_size), bool))
    same = (d[..., :, None] == d[..., None, :]) & causal
    cont = d == prev[..., None]
    same_last = d == d[..., -1:]
    return same, cont, same_last


def pad_time(x, n_pad: int, mode: str = "constant"):
    """Pad axis 1 (time) at the end by n_pad (zeros, or 'edge' for doc ids)."""
    if n_pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, n_pad)
    return jnp.pad(x, widths, mode=mode)


def decay_attention_chunked(q, k, v, g, *, scale: float, doc, initial_state=None,
                            chunk_size: int = 64):
    """Chunkwise-parallel form of `decay_attention_recurrent` (same shapes and result).

    Inside a chunk the decay between tokens i >= j is exp(G_i - G_j) with G the in-chunk
    cumulative log decay; it is formed as one masked exponent (never exp(G_i) * exp(-G_j)),
    so every exponent is <= 0 and nothing overflows. For a per-key-dim decay this makes the
    intra-chunk score a [C, C, K] contraction, so keep the chunk small (GLA uses 16). The
    carried state enters through q_i exp(G_i) and leaves through k_j exp(G_C - G_j).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    N = -(-T // C)
    n_pad = N * C - T
    vec = g.ndim == 4
    q, k, v, g = (pad_time(a.astype(jnp.float32), n_pad) for a in (q, k, v, g))
    doc = pad_time(doc, n_pad, "edge")
    same, cont, same_last = chunk_masks(doc, C, N)              # [B,N,C,C], [B,N,C], [B,N,C]

    # -> [B, H, N, C, ...]
    ch = lambda a: jnp.moveaxis(a.reshape(B, N, C, H, *a.shape[3:]), 3, 1)
    q, k, v, g = ch(q), ch(k), ch(v), ch(g)
    G = jnp.cumsum(g, axis=3)
    same_h = same[:, None]                                       # [B, 1, N, C, C]
    if vec:
        diff = G[..., :, None, :] - G[..., None, :, :]           # [B,H,N,C,C,K]
        decay = jnp.exp(jnp.where(same_h[..., None], diff, -jnp.inf))
        A = jnp.einsum("bhnik,bhnjk,bhnijk->bhnij", q, k, decay) * scale
        q_in = q * jnp.exp(G) * scale                            # [B,H,N,C,K]
        k_out = k * jnp.exp(G[..., -1:, :] - G)
        decay_last = jnp.exp(G[..., -1, :])[..., None]           # [B,H,N,K,1]
    else:
        diff = G[..., :, None] - G[..., None, :]                 # [B,H,N,C,C]
        A = jnp.einsum("bhnik,bhnjk->bhnij", q, k) * jnp.exp(jnp.where(same_h, diff, -jnp.inf)) * scale
        q_in = q * (jnp.exp(G) * scale)[..., None]
        k_out = k * jnp.exp(G[..., -1:] - G)[..., None]
        decay_last = jnp.exp(G[..., -1])[..., None, None]        # [B,H,N,1,1]
    o_intra = jnp.einsum("bhnij,bhnjv->bhniv", A, v)
    q_in = q_in * cont[:, None, ..., None]
    k_out = k_out * same_last[:, None, ..., None]
    carry_last = cont[:, None, :, -1, None, None]                # [B,1,N,1,1]

    def step(S, xs):
        qi, ko, vi, dl, cl = xs
        o = jnp.einsum("bhck,bhkv->bhcv", qi, S)
        S = jnp.where(cl, S * dl, 0.0) + jnp.einsum("bhck,bhcv->bhkv", ko, vi)
        return S, o

    nf = lambda a: jnp.moveaxis(a, 2, 0)
    S, o_inter = jax.lax.scan(step, _state0(initial_state, B, H, K, V),
                              (nf(q_in), nf(k_out), nf(v), nf(decay_last), nf(carry_last)))
    o = o_intra + jnp.moveaxis(o_inter, 0, 2)                    # [B,H,N,C,V]
    o = jnp.moveaxis(o, 1, 3).reshape(B, N * C, H, V)[:, :T]
    return o, S
