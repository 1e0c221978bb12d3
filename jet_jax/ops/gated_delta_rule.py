"""Gated delta rule (Gated DeltaNet / JetBlock token mixer).

Per head, with a float32 state S: [Dk, Dv]:

    S   <- exp(g_t) * S                      (S <- 0 instead at a document start)
    u_t  = beta_t * (v_t - S^T k_t)
    S   <- S + k_t u_t^T
    o_t  = S^T (scale * q_t)

`implementation="recurrent"` is the reference (a lax.scan over tokens, sharing its
step with `gated_delta_rule_step`); "chunked" is the chunkwise-parallel WY/UT form
(chunk 64) tested against it and against outside oracles; "pallas" defers to
`pallas_kernels.gdr`; "auto" runs pallas only on a backend where `pallas_kernels.verified`
records the kernel as verified on a device (none yet), else chunked.

The decode step (`gated_delta_rule_step`) has two forms: "recurrent", the reference step
and what "auto" runs, and "fused", which reads the state once for both of its products
(`_step_fused`; faster alone, slower inside the stacked layer scan on CPU: see there).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jet_jax.ops.backend import select_pallas
from jet_jax.ops.shard_map_kernel import call_per_shard
from jet_jax.ops.segments import document_index as _doc_index

__all__ = ["gated_delta_rule", "gated_delta_rule_step", "CHUNK_SIZE", "IMPLEMENTATIONS",
           "STEP_IMPLEMENTATIONS"]

CHUNK_SIZE = 64
# Default backward recomputation granularity of the chunked form (`remat_chunks`). On CPU, 4
# runs 6-15% faster, and one group (no loop over groups) compiles faster but runs 30% slower;
# the GPU is unmeasured (benchmarks/gpu_suite.py, part (b)).
CHUNKS_PER_GROUP = 8
_L2_EPS = 1e-6  # same eps as FLA's l2norm
IMPLEMENTATIONS = ("auto", "recurrent", "chunked", "pallas")
STEP_IMPLEMENTATIONS = ("auto", "recurrent", "fused")


# --------------------------------------------------------------------------- helpers


def l2norm(x: jax.Array, eps: float = _L2_EPS) -> jax.Array:
    """x / sqrt(sum(x^2) + eps) over the last axis (FLA's l2norm), in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _prep_qk(q, k, scale, use_qk_l2norm):
    """Float32 q (normalised, then scaled) and k (normalised)."""
    q = q.astype(jnp.float32)
    k = k.astype(jnp.float32)
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    return q * scale, k


def _is_float(x):
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def _validate(q, k, v, g, beta, initial_state, segment_ids):
    names = dict(q=q, k=k, v=v, g=g, beta=beta)
    for name, x in names.items():
        if not hasattr(x, "shape"):
            raise ValueError(f"gated_delta_rule: {name} must be an array, got {type(x).__name__}")
        if not _is_float(x):
            raise ValueError(f"gated_delta_rule: {name} must be floating point, got dtype {x.dtype}")
    if q.ndim != 4:
        raise ValueError(f"gated_delta_rule: q must be [B, T, H, Dk], got shape {q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"gated_delta_rule: k shape {k.shape} must equal q shape {q.shape} ([B, T, H, Dk])")
    B, T, H, Dk = q.shape
    if v.ndim != 4 or v.shape[:3] != (B, T, H):
        raise ValueError(f"gated_delta_rule: v must be [B, T, H, Dv] = [{B}, {T}, {H}, Dv], got shape {v.shape}")
    Dv = v.shape[3]
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, H):
            raise ValueError(f"gated_delta_rule: {name} must be [B, T, H] = {(B, T, H)}, got shape {x.shape}")
    if T == 0:
        raise ValueError("gated_delta_rule: sequence length T must be >= 1, got 0")
    if initial_state is not None:
        if not hasattr(initial_state, "shape") or initial_state.shape != (B, H, Dk, Dv):
            raise ValueError(
                f"gated_delta_rule: initial_state must be [B, H, Dk, Dv] = {(B, H, Dk, Dv)}, "
                f"got shape {getattr(initial_state, 'shape', None)}"
            )
        if not _is_float(initial_state):
            raise ValueError(f"gated_delta_rule: initial_state must be floating point, got {initial_state.dtype}")
    if segment_ids is not None:
        if not hasattr(segment_ids, "shape") or segment_ids.shape != (B, T):
            raise ValueError(
                f"gated_delta_rule: segment_ids must be [B, T] = {(B, T)}, got shape {getattr(segment_ids, 'shape', None)}"
            )
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(f"gated_delta_rule: segment_ids must be integer, got dtype {segment_ids.dtype}")
    return B, T, H, Dk, Dv


# --------------------------------------------------------------------------- recurrent (reference)


def _step_core(S, q_t, k_t, v_t, g_t, beta_t, reset_t):
    """One token of the recurrence, float32, q_t already scaled.

    S: [B, H, Dk, Dv]; q_t, k_t: [B, H, Dk]; v_t: [B, H, Dv]; g_t, beta_t: [B, H];
    reset_t: [B] bool or None (True -> state zeroed before this token).
    """
    S = S * jnp.exp(g_t)[..., None, None]
    if reset_t is not None:
        S = jnp.where(reset_t[:, None, None, None], 0.0, S)
    u = beta_t[..., None] * (v_t - jnp.einsum("bhkv,bhk->bhv", S, k_t))
    S = S + k_t[..., :, None] * u[..., None, :]
    o = jnp.einsum("bhkv,bhk->bhv", S, q_t)
    return o, S


def _step_fused(S, q_t, k_t, v_t, g_t, beta_t):
    """`_step_core` (no reset) reading S once for both of its products. Shapes as there.

    With decay = exp(g_t) and the update S' = decay S + k u^T:
      S^T k and S^T q come from ONE batched product of S with [k, q];
      u  = beta (v - decay S^T k);
      o  = S'^T q = decay S^T q + (k . q) u   (no product with S');
    then one elementwise pass writes S'. The reference reads S three times and writes two
    [B, H, Dk, Dv] intermediates; this form reads it twice and writes S' once. The same sums
    in another order: rounding differs from the reference at float32 epsilon.

    Not what "auto" runs (benchmarks/gdr_cpu.py, table 4, 2-core CPU): alone it is 2.4-2.9x
    faster than the reference step from batch 64 on, but inside a stacked layer scan (the state a row of
    the carried cache, updated in place, as `stack_layers` decodes) XLA:CPU slices the old
    row out twice before its in-place write, and it is slower. In a stacked model's decode
    step on CPU it also made XLA copy the stacked conv windows twice per layer: XLA
    recomputed the cheap convolution inside the state's in-place write, which then read
    the old windows unordered with their own write. Writing the state row first, with each
    window row carrying 0 * one element per batch row of the updated state stack, removed
    the copies (tried, not in jet_jax.model while "auto" does not run this form). GPU:
    unmeasured (benchmarks/gpu_suite.py, part (f)).
    """
    decay = jnp.exp(g_t)[..., None]  # [B, H, 1]
    kq = jnp.stack([k_t, q_t], axis=-1)  # [B, H, Dk, 2]
    sk, sq = jnp.moveaxis(jnp.einsum("bhkv,bhkn->bhnv", S, kq), 2, 0)  # each [B, H, Dv]
    u = beta_t[..., None] * (v_t - decay * sk)
    o = decay * sq + jnp.sum(k_t * q_t, axis=-1, keepdims=True) * u
    return o, S * decay[..., None] + k_t[..., :, None] * u[..., None, :]


@functools.partial(jax.jit, static_argnames=("scale", "use_qk_l2norm"))
def _recurrent(q, k, v, g, beta, initial_state, segment_ids, *, scale, use_qk_l2norm):
    """Reference: lax.scan over tokens. Shapes as `gated_delta_rule`; returns f32 o, S."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    q, k = _prep_qk(q, k, scale, use_qk_l2norm)
    v, g, beta = (x.astype(jnp.float32) for x in (v, g, beta))
    S0 = jnp.zeros((B, H, Dk, Dv), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)
    if segment_ids is None:
        reset = None
    else:
        doc = _doc_index(segment_ids)
        reset = jnp.concatenate([jnp.zeros((B, 1), bool), doc[:, 1:] != doc[:, :-1]], axis=1)

    def body(S, xs):
        q_t, k_t, v_t, g_t, b_t, r_t = xs
        o_t, S = _step_core(S, q_t, k_t, v_t, g_t, b_t, r_t)
        return S, o_t

    tm = lambda x: None if x is None else jnp.moveaxis(x, 1, 0)  # time-major for scan
    S, o = jax.lax.scan(body, S0, (tm(q), tm(k), tm(v), tm(g), tm(beta), tm(reset)))
    return jnp.moveaxis(o, 0, 1), S


# --------------------------------------------------------------------------- chunked


def _unit_lower_inverse(A):
    """(I + A)^-1 for strictly lower-triangular A: [..., C, C].

    Recursive block inversion, the structure of FLA's solve_tril merges: starting from the
    1x1 diagonal blocks (inverse 1), pairs of diagonal blocks of size s merge into one of
    size 2s with  [[L11, 0], [A21, L22]]^-1 = [[L11^-1, 0], [-L22^-1 A21 L11^-1, L22^-1]],
    batched over every pair of every chunk. log2(C) levels of uniform batched matmuls: no
    loop primitive, nothing sequential, and few distinct ops (compile time; a row-by-row
    substitution unrolls into ~60 differently shaped slices and updates per layer).
    Numerically it is blocked triangular inversion (the same sums as forward substitution);
    not a doubling series (I - A)(I + A^2)...: its powers reach binomial sizes when the keys
    of a chunk are nearly parallel, and f32 cancels badly. Not one loop of a fixed-shape
    body (L <- L - L B_s L on the whole [C, C] matrix): it compiles the op in 0.75x the
    time but runs it 1.25x slower on CPU (benchmarks/RESULTS.md, 2026-12-07). Not
    `lax.linalg.triangular_solve`: jaxlib's batched CPU solve spreads its batch over the
    thread pool it runs on and can deadlock when that pool is busy (seen with 8 host devices
    on 2 cores). C that is not a
    power of two is padded with identity rows (zero A), which leaves the leading block's
    inverse unchanged.
    """
    C = A.shape[-1]
    P = 1 << max(C - 1, 0).bit_length()
    if P != C:
        A = jnp.pad(A, [(0, 0)] * (A.ndim - 2) + [(0, P - C), (0, P - C)])
    lead = A.shape[:-2]
    inv = jnp.ones(lead + (P, 1, 1), A.dtype)  # [..., blocks, s, s] with s = 1
    s = 1
    while s < P:
        m = P // (2 * s)
        # the 2s x 2s diagonal blocks [..., m, 2s, 2s], then the lower-left s x s of each
        # (jnp.diagonal: an eye-mask-and-sum form of this crashed XLA:CPU's backward pass)
        diag = jnp.moveaxis(jnp.diagonal(A.reshape(lead + (m, 2 * s, m, 2 * s)), axis1=-4, axis2=-2), -1, -3)
        a21 = diag[..., s:, :s]
        pair = inv.reshape(lead + (m, 2, s, s))
        i11, i22 = pair[..., 0, :, :], pair[..., 1, :, :]
        l21 = -jnp.einsum("...ij,...jk,...kl->...il", i22, a21, i11)
        inv = jnp.concatenate([jnp.concatenate([i11, jnp.zeros_like(i11)], -1),
                               jnp.concatenate([l21, i22], -1)], -2)
        s *= 2
    return inv[..., 0, :C, :C]


def _chunk_intra(q, k, v, g, beta, doc, doc_prev):
    """Intra-chunk work for all chunks at once (no state needed).

    q, k: [B, H, N, C, Dk] (q scaled); v: [B, H, N, C, Dv]; g, beta: [B, H, N, C];
    doc: [B, 1, N, C] or None; doc_prev: [B, 1, N] (document of the token before each chunk).
    Returns u: [.., C, Dv], w: [.., C, Dk] (the UT-transformed values / decayed keys),
    P: [.., C, C] (decayed causal q.k), qg: [.., C, Dk], kd: [.., C, Dk], dN: [B, H, N].
    """
    C = q.shape[-2]
    gc = jnp.cumsum(g, axis=-1)  # log decay from the chunk start through token i
    gl = gc[..., -1]
    lower = jnp.tril(jnp.ones((C, C), bool))
    strict = jnp.tril(jnp.ones((C, C), bool), -1)
    if doc is not None:
        same = doc[..., :, None] == doc[..., None, :]
        lower, strict = lower & same, strict & same
        first = (doc == doc_prev[..., None]).astype(jnp.float32)  # tokens still reading S0
        last_same = (doc == doc[..., -1:]).astype(jnp.float32)  # tokens feeding the next chunk
        carry = (doc[..., -1] == doc_prev).astype(jnp.float32)  # S0 survives the whole chunk
    diff = gc[..., :, None] - gc[..., None, :]
    # mask before exp: above the diagonal diff > 0 could overflow and poison gradients
    dec = jnp.where(lower, jnp.exp(jnp.where(lower, diff, 0.0)), 0.0)
    kk = jnp.einsum("bhnid,bhnjd->bhnij", k, k)
    A = jnp.where(strict, beta[..., :, None] * kk * dec, 0.0)
    eg = jnp.exp(gc)
    ed = jnp.exp(gl[..., None] - gc)
    dN = jnp.exp(gl)
    if doc is not None:
        eg, ed, dN = eg * first, ed * last_same, dN * carry
    Dv = v.shape[-1]
    rhs = jnp.concatenate([beta[..., None] * v, (beta * eg)[..., None] * k], axis=-1)
    # (I + A) X = rhs, A strictly lower: the UT transform
    x = jnp.einsum("...ij,...jd->...id", _unit_lower_inverse(A), rhs)
    u, w = x[..., :Dv], x[..., Dv:]
    P = jnp.einsum("bhnid,bhnjd->bhnij", q, k) * dec
    qg = q * eg[..., None]
    kd = k * ed[..., None]
    return u, w, P, qg, kd, dN


@functools.partial(jax.jit, static_argnames=("scale", "use_qk_l2norm", "chunk_size", "remat_chunks"))
def _chunked(q, k, v, g, beta, initial_state, segment_ids, *, scale, use_qk_l2norm, chunk_size=CHUNK_SIZE,
             remat_chunks=CHUNKS_PER_GROUP):
    """Chunkwise-parallel form. Shapes as `gated_delta_rule`; returns f32 o, S."""
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    C = chunk_size
    G = -(-T // C) if remat_chunks is None else min(remat_chunks, -(-T // C))  # chunks per group
    NG = -(-T // (C * G))
    N = NG * G
    pad = N * C - T
    q, k = _prep_qk(q, k, scale, use_qk_l2norm)
    v, g, beta = (x.astype(jnp.float32) for x in (v, g, beta))
    # zero padding is inert: g=0 keeps the state, beta=0 and k=0 write nothing
    padt = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    # [B, T, H, ...] -> [B, H, N, C, ...]
    tochunks = lambda x: jnp.moveaxis(padt(x), 2, 1).reshape((B, H, N, C) + x.shape[3:])
    q, k, v, g, beta = map(tochunks, (q, k, v, g, beta))
    if segment_ids is None:
        doc = doc_prev = None
    else:
        doc = jnp.pad(_doc_index(segment_ids), [(0, 0), (0, pad)], mode="edge").reshape(B, 1, N, C)
        # document of the token just before each chunk; chunk 0 continues document 0 (initial_state)
        doc_prev = jnp.concatenate([doc[..., :1, 0], doc[..., :-1, -1]], axis=-1)
    S0 = jnp.zeros((B, H, Dk, Dv), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)

    def chunk_body(S, xs):
        """The only sequential work: one chunk's state update (two matmuls)."""
        u_n, w_n, kd_n, d_n = xs
        v_new = u_n - jnp.einsum("bhck,bhkv->bhcv", w_n, S)  # what S does not already predict
        S_next = d_n[..., None, None] * S + jnp.einsum("bhck,bhcv->bhkv", kd_n, v_new)
        return S_next, (S, v_new)

    def group_body(S, xs):
        """G chunks: intra-chunk work batched over them, their state pass (a scan over
        chunks), then the output of all G chunks at once from their start states."""
        u, w, P, qg, kd, dN = _chunk_intra(*xs)
        cm = lambda x: jnp.moveaxis(x, 2, 0)  # chunk-major for scan
        S, (S_start, v_new) = jax.lax.scan(chunk_body, S, tuple(map(cm, (u, w, kd, dN))))
        S_start, v_new = jnp.moveaxis(S_start, 0, 2), jnp.moveaxis(v_new, 0, 2)
        o = jnp.einsum("bhnck,bhnkv->bhncv", qg, S_start) + jnp.einsum("bhnij,bhnjv->bhniv", P, v_new)
        return S, o

    # [B, H|1, N, ...] -> [NG, B, H|1, G, ...]; only the group-boundary states are saved for
    # the backward pass, which recomputes one group at a time (memory linear in T, small factor)
    grouped = lambda x: None if x is None else jnp.moveaxis(x.reshape(x.shape[:2] + (NG, G) + x.shape[3:]), 2, 0)
    xs = tuple(map(grouped, (q, k, v, g, beta, doc, doc_prev)))
    S, o = jax.lax.scan(jax.checkpoint(group_body), S0, xs)
    o = jnp.moveaxis(jnp.moveaxis(o, 0, 2).reshape(B, H, N * C, Dv), 1, 2)[:, :T]
    return o, S


# --------------------------------------------------------------------------- public API


@jax.named_scope("gated_delta_rule")  # labels its compiled ops in profiles
def gated_delta_rule(
    q,
    k,
    v,
    g,
    beta,
    *,
    scale=None,
    initial_state=None,
    output_final_state=False,
    segment_ids=None,
    use_qk_l2norm=True,
    implementation="auto",
    remat_chunks=CHUNKS_PER_GROUP,
):
    """Gated delta rule over a sequence.

    Args:
      q, k: [B, T, H, Dk]; v: [B, T, H, Dv]; g (log decay, <= 0), beta: [B, T, H].
      scale: query scale, default Dk**-0.5 (applied after the l2norm).
      initial_state: [B, H, Dk, Dv] state before token 0 (first document only).
      output_final_state: also return the state after the last token.
      segment_ids: [B, T] int; the state resets to zero wherever the id changes.
      use_qk_l2norm: L2-normalise q and k per head (eps 1e-6) in float32.
      implementation: "auto" | "recurrent" | "chunked" | "pallas".
      remat_chunks ("chunked" only): how many 64-token chunks the backward pass recomputes
        together. The intra-chunk work of a group is batched; the groups run one after
        another and only their boundary states are saved. More chunks: more backward
        memory, fewer sequential steps. None: the whole sequence is one group.
    Returns:
      o: [B, T, H, Dv] in v's dtype, and the final state [B, H, Dk, Dv] float32 or None.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"gated_delta_rule: unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
    B, T, H, Dk, Dv = _validate(q, k, v, g, beta, initial_state, segment_ids)
    if remat_chunks is not None and (isinstance(remat_chunks, bool) or not isinstance(remat_chunks, int)
                                     or remat_chunks < 1):
        raise ValueError(f"gated_delta_rule: remat_chunks must be a positive int or None, got {remat_chunks!r}")
    scale = float(Dk**-0.5 if scale is None else scale)
    if implementation in ("auto", "pallas"):
        fn = select_pallas("gated_delta_rule", "pallas_kernels.gdr", "gated_delta_rule_pallas", implementation)
        if fn is not None:
            # per device under a mesh (batch over data/fsdp, heads over tensor): no gather
            kernel = lambda q, k, v, g, beta, h0, seg: fn(
                q, k, v, g, beta, scale=scale, initial_state=h0, output_final_state=output_final_state,
                segment_ids=seg, use_qk_l2norm=use_qk_l2norm,
            )
            bthd, bth = ("batch", None, "heads", None), ("batch", None, "heads")
            return call_per_shard(
                kernel, (q, k, v, g, beta, initial_state, segment_ids),
                (bthd, bthd, bthd, bth, bth, ("batch", "heads", None, None), ("batch", None)),
                (bthd, ("batch", "heads", None, None) if output_final_state else None),
            )
        implementation = "chunked"
    kw = dict(scale=scale, use_qk_l2norm=bool(use_qk_l2norm))
    if implementation == "recurrent":
        o, S = _recurrent(q, k, v, g, beta, initial_state, segment_ids, **kw)
    else:
        o, S = _chunked(q, k, v, g, beta, initial_state, segment_ids, remat_chunks=remat_chunks, **kw)
    return o.astype(v.dtype), (S if output_final_state else None)


def gated_delta_rule_step(q_t, k_t, v_t, g_t, beta_t, state, *, scale=None, use_qk_l2norm=True,
                          implementation="auto"):
    """One decoding step of the recurrence.

    Args:
      q_t, k_t: [B, H, Dk]; v_t: [B, H, Dv]; g_t, beta_t: [B, H]; state: [B, H, Dk, Dv].
      implementation: "recurrent" (the reference's step) | "fused" (the state read once for
        S^T k and S^T q, see `_step_fused`) | "auto" (= "recurrent" on every backend today).
    Returns:
      o_t: [B, H, Dv] in v_t's dtype, new_state: [B, H, Dk, Dv] float32.
    """
    if implementation not in STEP_IMPLEMENTATIONS:
        raise ValueError(f"gated_delta_rule_step: unknown implementation {implementation!r}; "
                         f"expected one of {STEP_IMPLEMENTATIONS}")
    if getattr(q_t, "ndim", None) != 3:
        raise ValueError(f"gated_delta_rule_step: q_t must be [B, H, Dk], got shape {getattr(q_t, 'shape', None)}")
    if state is None:
        raise ValueError("gated_delta_rule_step: state [B, H, Dk, Dv] is required (use zeros for a fresh sequence)")
    # validate through the sequence checker with T = 1
    add_t = lambda x: x[:, None] if hasattr(x, "shape") else x
    B, _, H, Dk, Dv = _validate(*map(add_t, (q_t, k_t, v_t, g_t, beta_t)), state, None)
    scale = float(Dk**-0.5 if scale is None else scale)
    q, k = _prep_qk(q_t, k_t, scale, use_qk_l2norm)
    args = (state.astype(jnp.float32), q, k, v_t.astype(jnp.float32), g_t.astype(jnp.float32),
            beta_t.astype(jnp.float32))
    o, S = _step_fused(*args) if implementation == "fused" else _step_core(*args, None)
    return o.astype(v_t.dtype), S
