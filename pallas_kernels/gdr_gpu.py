"""Chunked gated delta rule: Pallas GPU (Triton backend) forward and backward kernels.

Why the Pallas Triton backend and not Mosaic GPU: the per-chunk math (`gdr_chunk`) is
written with generic array ops (matmuls, masked reductions, a fori_loop forward
substitution, and `jax.vjp` of all that for the backward). The Triton lowering accepts
such ops with compiler-chosen register layouts, so the *same* kernel body runs here in
interpret mode and on the GPU; Mosaic GPU needs explicit warpgroup layouts, SMEM/TMA
staging and WGMMA operand constraints, which cannot be written blind and validated
without a GPU. The Triton backend is deprecated from jax 0.11 but still shipped there;
`pallas_call` is the only API used, so the module works on 0.10 and 0.11. A Mosaic GPU
port (or jax-triton around FLA's kernels) is the upgrade path once it can be tested.

Grid (NV, B, H): every program owns one head and one block of BV value columns; the
columns of the delta-rule state are independent (u = beta (v - S^T k) is column-wise), so
splitting Dv is exact and keeps the f32 state [Dk, BV] in registers as the carry of a
fori_loop over chunks. The backward loops chunks in reverse carrying dS, reading each
chunk's start state from the forward's per-chunk state tensor; q/k/g/beta gradients are
partial per value block and summed over NV afterwards (in XLA).

Triton needs power-of-two block shapes: Dk and Dv are zero-padded to powers of two here
(inert: zero key/query columns never touch the state; zero value columns stay zero).
Operand layouts are those of `gdr_tpu`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import block_sizes
from pallas_kernels.gdr_chunk import chunk_backward, chunk_forward

_F32 = jnp.float32


def _pow2(n):
    return 1 << (int(n) - 1).bit_length()


def _pad_last(x, n):
    return x if x.shape[-1] == n else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def _pad_last2(x, n1, n2):
    return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, n1 - x.shape[-2]), (0, n2 - x.shape[-1])])


def _compiler_params():
    # Triton CompilerParams also select the Triton lowering: without them a CUDA
    # pallas_call defaults to Mosaic GPU in jax >= 0.10.
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=4, num_stages=2)


def _chunk_operands(refs, b, h, c, C, vs):
    q_ref, k_ref, v_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, b_ref = refs
    ts = pl.ds(c * C, C)
    return (q_ref[b, h, ts, :].astype(_F32), k_ref[b, h, ts, :].astype(_F32),
            v_ref[b, h, ts, vs].astype(_F32), gcc_ref[b, h, ts, :], gcr_ref[b, h, c, :, :],
            scc_ref[b, ts, :], scr_ref[b, c, :, :], b_ref[b, h, ts, :])


def _fwd_kernel(q_ref, k_ref, v_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, b_ref, h0_ref,
                o_ref, states_ref, ht_ref, *, NT, C, BV):
    iv, b, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    vs = pl.ds(iv * BV, BV)
    refs = (q_ref, k_ref, v_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, b_ref)

    def body(c, s):
        states_ref[b, h, c, :, vs] = s
        o, s_next = chunk_forward(*_chunk_operands(refs, b, h, c, C, vs), s)
        o_ref[b, h, pl.ds(c * C, C), vs] = o.astype(o_ref.dtype)
        return s_next

    ht_ref[b, h, :, vs] = lax.fori_loop(0, NT, body, h0_ref[b, h, :, vs].astype(_F32))


@functools.partial(jax.jit, static_argnames=("interpret",))
def gdr_fwd_gpu(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, h0, *, interpret=False):
    """Forward; same contract as `gdr_tpu.gdr_fwd_tpu` (o, states [B,H,NT,Dk,Dv] f32, ht)."""
    B, H, Tp, Dk = q.shape
    Dv = v.shape[-1]
    NT, C = gc_row.shape[2], gc_row.shape[4]
    Dkp, Dvp = _pow2(Dk), _pow2(Dv)
    BV = block_sizes.gdr_gpu_block_v(Dvp)
    qp, kp, vp = _pad_last(q, Dkp), _pad_last(k, Dkp), _pad_last(v, Dvp)
    h0p = _pad_last2(h0, Dkp, Dvp)
    o, states, ht = pl.pallas_call(
        functools.partial(_fwd_kernel, NT=NT, C=C, BV=BV),
        grid=(Dvp // BV, B, H),
        out_shape=[jax.ShapeDtypeStruct((B, H, Tp, Dvp), v.dtype),
                   jax.ShapeDtypeStruct((B, H, NT, Dkp, Dvp), _F32),
                   jax.ShapeDtypeStruct((B, H, Dkp, Dvp), _F32)],
        compiler_params=_compiler_params(),
        interpret=interpret,
        name="gdr_fwd_gpu",
    )(qp, kp, vp, gc_col, gc_row, sc_col, sc_row, beta_col, h0p)
    return o[..., :Dv], states[..., :Dk, :Dv], ht[..., :Dk, :Dv]


def _bwd_kernel(q_ref, k_ref, v_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, b_ref, st_ref,
                do_ref, dht_ref,
                dq_ref, dk_ref, dv_ref, dgcc_ref, dgcr_ref, db_ref, dh0_ref, *, NT, C, BV):
    iv, b, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    vs = pl.ds(iv * BV, BV)
    refs = (q_ref, k_ref, v_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, b_ref)

    def body(i, ds_next):
        c = NT - 1 - i
        ts = pl.ds(c * C, C)
        dq, dk, dv, dgcc, dgcr, db, ds = chunk_backward(
            *_chunk_operands(refs, b, h, c, C, vs), st_ref[b, h, c, :, vs],
            do_ref[b, h, ts, vs].astype(_F32), ds_next)
        dq_ref[iv, b, h, ts, :] = dq
        dk_ref[iv, b, h, ts, :] = dk
        dv_ref[b, h, ts, vs] = dv
        dgcc_ref[iv, b, h, ts, :] = dgcc
        dgcr_ref[iv, b, h, c, :, :] = dgcr
        db_ref[iv, b, h, ts, :] = db
        return ds

    dh0_ref[b, h, :, vs] = lax.fori_loop(0, NT, body, dht_ref[b, h, :, vs])


@functools.partial(jax.jit, static_argnames=("interpret",))
def gdr_bwd_gpu(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, states, do, dht, *,
                interpret=False):
    """Backward; same contract as `gdr_tpu.gdr_bwd_tpu`."""
    B, H, Tp, Dk = q.shape
    Dv = v.shape[-1]
    NT, C = gc_row.shape[2], gc_row.shape[4]
    Dkp, Dvp = _pow2(Dk), _pow2(Dv)
    BV = block_sizes.gdr_gpu_block_v(Dvp)
    NV = Dvp // BV
    f32 = lambda shape: jax.ShapeDtypeStruct(shape, _F32)
    dq, dk, dv, dgcc, dgcr, db, dh0 = pl.pallas_call(
        functools.partial(_bwd_kernel, NT=NT, C=C, BV=BV),
        grid=(NV, B, H),
        out_shape=[f32((NV, B, H, Tp, Dkp)), f32((NV, B, H, Tp, Dkp)), f32((B, H, Tp, Dvp)),
                   f32((NV, B, H, Tp, 1)), f32((NV, B, H, NT, 1, C)), f32((NV, B, H, Tp, 1)),
                   f32((B, H, Dkp, Dvp))],
        compiler_params=_compiler_params(),
        interpret=interpret,
        name="gdr_bwd_gpu",
    )(_pad_last(q, Dkp), _pad_last(k, Dkp), _pad_last(v, Dvp), gc_col, gc_row, sc_col, sc_row,
      beta_col, _pad_last2(states, Dkp, Dvp), _pad_last(do, Dvp), _pad_last2(dht, Dkp, Dvp))
    return (dq.sum(0)[..., :Dk], dk.sum(0)[..., :Dk], dv[..., :Dv], dgcc.sum(0), dgcr.sum(0),
            db.sum(0), dh0[..., :Dk, :Dv])
