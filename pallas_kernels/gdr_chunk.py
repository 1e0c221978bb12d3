"""Per-chunk math of the chunked gated delta rule, shared by every Pallas kernel body.

One chunk of C tokens of one head is processed from its start state S [Dk, Dv] (f32):

    A   = strictly-lower( beta_i k_i.k_j exp(gc_i - gc_j) )        [C, C]
    T   = (I + A)^-1                                                 (UT transform)
    w   = T (beta k exp(gc))          u = T (beta v)                 WY factors
    vn  = u - w S                                                    [C, Dv]
    o   = (q exp(gc)) S + lower-incl( q.k exp(gc_i - gc_j) ) vn      [C, Dv]
    S'  = exp(gc_last) S + (k exp(gc_last - gc))^T vn                [Dk, Dv]

gc is the within-chunk inclusive cumulative sum of the log gate g. Packed documents are
handled with `sc`, the within-chunk count of document starts (inclusive): tokens i, j
interact only when sc_i == sc_j, and the start state reaches token i only when sc_i == 0.
This matches the recurrence with S reset to zero at each document start, without ever
putting -inf into gc (which would cost f32 precision in the differences gc_i - gc_j).

The functions below use only matmuls, elementwise ops, iota, where and reductions, so
they trace inside Pallas kernel bodies (Mosaic TPU, Triton, interpret) and so `jax.vjp`
of `chunk_forward` can be taken inside a backward kernel body: the backward kernel
recomputes the chunk on chip and differentiates it there, instead of a hand-derived
adjoint that would have to be kept in sync with this forward by hand.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32
# HIGHEST: f32 matmuls must not silently drop to one bf16 pass (TPU) or tf32 (GPU); the
# state recurrence compounds any per-chunk rounding over thousands of chunks.
_PREC = lax.Precision.HIGHEST


def dot_nn(a, b):
    """a [M, K] @ b [K, N] -> [M, N] f32."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=_PREC,
                           preferred_element_type=_F32)


def dot_nt(a, b):
    """a [M, K] @ b[N, K]^T -> [M, N] f32 (the transposed-rhs form MXUs take natively)."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_PREC,
                           preferred_element_type=_F32)


def dot_tn(a, b):
    """a[K, M]^T @ b [K, N] -> [M, N] f32."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=_PREC,
                           preferred_element_type=_F32)


# Diagonal block of the triangular inverse solved by substitution; the rest by matmuls.
SOLVE_BLOCK = 16


def _forward_substitution(a):
    """(I + a)^-1 for strictly lower-triangular a [C, C] f32 (C a multiple of 16).

    Two stages, all in full [C, C] masked arrays (no slicing, so it lowers on every
    Pallas backend, and the work runs on the matrix units):
      1. D^-1 for D = I + (16 x 16 diagonal blocks of a), by forward substitution run on
         all C/16 blocks at once: step i finalises row i of every block with one masked
         matmul (15 steps).
      2. I + a = D (I + N) with N = D^-1 (a - blockdiag(a)) strictly block-lower, so N is
         nilpotent of index C/16 and (I + N)^-1 = (I - N)(I + N^2)(I + N^4)... exactly.
    Not a Neumann/doubling series on `a` itself: its powers reach binomial-coefficient
    sizes (~1e18 at C = 64) when the keys of a chunk are nearly parallel, and f32
    cancellation would destroy the result; powers of the block-reduced N stay small.
    """
    c = a.shape[0]
    nb = SOLVE_BLOCK if c % SOLVE_BLOCK == 0 else c
    row = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    col = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    # lax.div/rem, not // and %: jnp's floor semantics emit sign ops that Mosaic cannot
    # lower without a TPU attached; the indices are non-negative so truncation is exact.
    same_block = lax.div(row, nb) == lax.div(col, nb)
    eye = (row == col).astype(_F32)
    t = jnp.where(same_block, -a, 0.0)
    # row i of each block from its rows < i (already final); a loop, not unrolled, to
    # keep the kernel (and its recomputation in the backward) small.
    t = lax.fori_loop(1, nb, lambda i, t: t + dot_nn(jnp.where(lax.rem(row, nb) == i, t, 0.0), t), t)
    d_inv = t + eye
    n = dot_nn(d_inv, jnp.where(same_block, 0.0, a))
    inv = eye - n
    p, reach = n, 2
    while reach < c // nb:                 # (I - N)(I + N^2)(I + N^4)... until N^k = 0
        p = dot_nn(p, p)
        inv = inv + dot_nn(inv, p)
        reach *= 2
    return dot_nn(inv, d_inv)


@jax.custom_vjp
def unit_lower_inverse(a):
    """(I + a)^-1 for strictly lower-triangular a [C, C] f32 -> [C, C] f32 (unit lower)."""
    return _forward_substitution(a)


def _uli_fwd(a):
    t = _forward_substitution(a)
    return t, t


def _uli_bwd(t, dt):
    # d(M^-1) = -M^-1 dM M^-1  =>  dM = -T^T dT T^T; only the strictly lower part of `a`
    # is an input, so the rest of the cotangent is dropped.
    c = t.shape[0]
    row = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    col = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    da = -dot_tn(t, dot_nt(dt, t))        # T^T (dT T^T)
    return (jnp.where(row > col, da, 0.0),)


unit_lower_inverse.defvjp(_uli_fwd, _uli_bwd)


def _last_lane(x):
    """x [1, C] -> [1, 1], the last entry (masked reduction: portable, no lane slicing)."""
    lane = lax.broadcasted_iota(jnp.int32, x.shape, 1)
    return jnp.sum(jnp.where(lane == x.shape[1] - 1, x, 0.0), axis=1, keepdims=True)


def chunk_forward(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, s, *, for_vjp=False):
    """One chunk of the gated delta rule.

    Args (all f32):
      q [C, Dk] (already l2-normalised and scaled), k [C, Dk], v [C, Dv],
      gc_col [C, 1] and gc_row [1, C]: within-chunk inclusive cumsum of g (both layouts,
        so no in-kernel transpose of a vector is needed),
      sc_col [C, 1], sc_row [1, C]: within-chunk inclusive count of document starts,
      beta_col [C, 1], s [Dk, Dv]: state before the chunk.
      for_vjp: route the triangular inverse through its custom VJP (needed only when the
        caller differentiates; the plain path keeps custom_vjp_call out of forward kernels,
        which the Triton lowering's resource estimation rejects).
    Returns: o [C, Dv] f32, s_next [Dk, Dv] f32.
    """
    c = q.shape[0]
    row = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    col = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    same = sc_col == sc_row                                    # [C, C] same document
    strict = (row > col) & same
    incl = (row >= col) & same
    diff = gc_col - gc_row                                     # gc_i - gc_j
    # where() before exp(): above the diagonal diff > 0 may overflow, and inf * 0 = nan.
    decay_strict = jnp.where(strict, jnp.exp(jnp.where(strict, diff, 0.0)), 0.0)
    decay_incl = jnp.where(incl, jnp.exp(jnp.where(incl, diff, 0.0)), 0.0)

    carry_col = jnp.where(sc_col == 0.0, jnp.exp(gc_col), 0.0)  # [C,1] start state reaches i
    gl = _last_lane(gc_row)                                     # [1,1]
    sl = _last_lane(sc_row)
    to_end_col = jnp.where(sc_col == sl, jnp.exp(gl - gc_col), 0.0)  # [C,1] token j reaches end
    carry_end = jnp.where(sl == 0.0, jnp.exp(gl), 0.0)          # [1,1]

    kb = k * beta_col
    a = dot_nt(kb, k) * decay_strict
    t = unit_lower_inverse(a) if for_vjp else _forward_substitution(a)
    w = dot_nn(t, kb * carry_col)
    u = dot_nn(t, v * beta_col)
    vn = u - dot_nn(w, s)
    o = dot_nn(q * carry_col, s) + dot_nn(dot_nt(q, k) * decay_incl, vn)
    s_next = carry_end * s + dot_tn(k * to_end_col, vn)
    return o, s_next


def chunk_backward(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, s, do, ds_next):
    """VJP of `chunk_forward` w.r.t. (q, k, v, gc_col, gc_row, beta_col, s).

    do [C, Dv], ds_next [Dk, Dv] f32. Returns dq, dk, dv, dgc_col, dgc_row, dbeta_col, ds
    with the shapes of the corresponding inputs (f32).
    """
    def f(q_, k_, v_, gcc, gcr, b_, s_):
        return chunk_forward(q_, k_, v_, gcc, gcr, sc_col, sc_row, b_, s_, for_vjp=True)

    _, vjp = jax.vjp(f, q, k, v, gc_col, gc_row, beta_col, s)
    return vjp((do, ds_next))
