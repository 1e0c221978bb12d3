"""Chunked gated delta rule: Pallas Mosaic-TPU forward and backward kernels.

Grid (B, H, NT): batch and head are parallel, the chunk axis is sequential ("arbitrary")
and carries the f32 state [Dk, Dv] in a VMEM scratch buffer from one grid step to the
next, so the per-chunk intermediates (decayed K K^T, the UT-transform inverse, the WY
factors w, u) never leave VMEM, and Pallas' pipelining prefetches the next chunk's q, k,
v while the current one computes. The backward grid walks the chunks in reverse (index
maps NT-1-c), carrying dS in scratch, and reads each chunk's start state from the
per-chunk state tensor that the forward wrote.

Block shapes: every block is (C, D) or (1, C) or (Dk, Dv) with C = 64 (multiple of 8
sublanes) and D the full head dim, which satisfies Mosaic's (8, 128) rule (a block dim
is a multiple of the tile or the full array dim), so Dk = 96 needs no padding.

Inputs are prepared by `pallas_kernels.gdr` (layout [B, H, T, D], T padded to NT*C):
  q, k [B, H, Tp, Dk]; v [B, H, Tp, Dv] (any float dtype; upcast to f32 on chip);
  gc_col [B, H, Tp, 1], gc_row [B, H, NT, 1, C]: within-chunk cumsum of g (f32);
  sc_col [B, Tp, 1], sc_row [B, NT, 1, C]: within-chunk count of document starts (f32);
  beta_col [B, H, Tp, 1] f32; h0 [B, H, Dk, Dv] f32.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.gdr_chunk import chunk_backward, chunk_forward

_F32 = jnp.float32
_SQ = pl.squeezed


def _specs(B, H, NT, C, Dk, Dv, reverse):
    """BlockSpecs of the per-chunk operands; `reverse` walks chunks from the end."""
    cidx = (lambda c: NT - 1 - c) if reverse else (lambda c: c)
    tok_k = pl.BlockSpec((_SQ, _SQ, C, Dk), lambda b, h, c: (b, h, cidx(c), 0))
    tok_v = pl.BlockSpec((_SQ, _SQ, C, Dv), lambda b, h, c: (b, h, cidx(c), 0))
    col = pl.BlockSpec((_SQ, _SQ, C, 1), lambda b, h, c: (b, h, cidx(c), 0))
    row = pl.BlockSpec((_SQ, _SQ, _SQ, 1, C), lambda b, h, c: (b, h, cidx(c), 0, 0))
    seg_col = pl.BlockSpec((_SQ, C, 1), lambda b, h, c: (b, cidx(c), 0))
    seg_row = pl.BlockSpec((_SQ, _SQ, 1, C), lambda b, h, c: (b, cidx(c), 0, 0))
    state = pl.BlockSpec((_SQ, _SQ, Dk, Dv), lambda b, h, c: (b, h, 0, 0))
    chunk_state = pl.BlockSpec((_SQ, _SQ, _SQ, Dk, Dv), lambda b, h, c: (b, h, cidx(c), 0, 0))
    return tok_k, tok_v, col, row, seg_col, seg_row, state, chunk_state


def _params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _fwd_kernel(q_ref, k_ref, v_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, b_ref, h0_ref,
                o_ref, states_ref, ht_ref, s_scr):
    c = pl.program_id(2)

    @pl.when(c == 0)
    def _():
        s_scr[...] = h0_ref[...].astype(_F32)

    s = s_scr[...]
    states_ref[...] = s                                   # chunk-start state for the backward
    o, s_next = chunk_forward(
        q_ref[...].astype(_F32), k_ref[...].astype(_F32), v_ref[...].astype(_F32),
        gcc_ref[...], gcr_ref[...], scc_ref[...], scr_ref[...], b_ref[...], s)
    o_ref[...] = o.astype(o_ref.dtype)
    s_scr[...] = s_next

    @pl.when(c == pl.num_programs(2) - 1)
    def _():
        ht_ref[...] = s_next


@functools.partial(jax.jit, static_argnames=("interpret",))
def gdr_fwd_tpu(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, h0, *, interpret=False):
    """Forward. Returns o [B, H, Tp, Dv] (v.dtype), states [B, H, NT, Dk, Dv] f32 (state at
    each chunk start), ht [B, H, Dk, Dv] f32 (final state)."""
    B, H, Tp, Dk = q.shape
    Dv = v.shape[-1]
    NT, C = gc_row.shape[2], gc_row.shape[4]
    tok_k, tok_v, col, row, seg_col, seg_row, state, chunk_state = _specs(B, H, NT, C, Dk, Dv, False)
    return pl.pallas_call(
        _fwd_kernel,
        grid=(B, H, NT),
        in_specs=[tok_k, tok_k, tok_v, col, row, seg_col, seg_row, col, state],
        out_specs=[tok_v, chunk_state, state],
        out_shape=[jax.ShapeDtypeStruct((B, H, Tp, Dv), v.dtype),
                   jax.ShapeDtypeStruct((B, H, NT, Dk, Dv), _F32),
                   jax.ShapeDtypeStruct((B, H, Dk, Dv), _F32)],
        scratch_shapes=[pltpu.VMEM((Dk, Dv), _F32)],
        compiler_params=_params(),
        interpret=interpret,
        name="gdr_fwd_tpu",
    )(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, h0)


def _bwd_kernel(q_ref, k_ref, v_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, b_ref, st_ref,
                do_ref, dht_ref,
                dq_ref, dk_ref, dv_ref, dgcc_ref, dgcr_ref, db_ref, dh0_ref, ds_scr):
    c = pl.program_id(2)

    @pl.when(c == 0)
    def _():
        ds_scr[...] = dht_ref[...]

    dq, dk, dv, dgcc, dgcr, db, ds = chunk_backward(
        q_ref[...].astype(_F32), k_ref[...].astype(_F32), v_ref[...].astype(_F32),
        gcc_ref[...], gcr_ref[...], scc_ref[...], scr_ref[...], b_ref[...], st_ref[...],
        do_ref[...].astype(_F32), ds_scr[...])
    dq_ref[...] = dq
    dk_ref[...] = dk
    dv_ref[...] = dv
    dgcc_ref[...] = dgcc
    dgcr_ref[...] = dgcr
    db_ref[...] = db
    ds_scr[...] = ds

    @pl.when(c == pl.num_programs(2) - 1)
    def _():
        dh0_ref[...] = ds


@functools.partial(jax.jit, static_argnames=("interpret",))
def gdr_bwd_tpu(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, states, do, dht, *,
                interpret=False):
    """Backward. do [B, H, Tp, Dv], dht [B, H, Dk, Dv] f32. Returns f32 gradients dq, dk
    [B, H, Tp, Dk], dv [B, H, Tp, Dv], dgc_col [B, H, Tp, 1], dgc_row [B, H, NT, 1, C],
    dbeta_col [B, H, Tp, 1], dh0 [B, H, Dk, Dv]."""
    B, H, Tp, Dk = q.shape
    Dv = v.shape[-1]
    NT, C = gc_row.shape[2], gc_row.shape[4]
    tok_k, tok_v, col, row, seg_col, seg_row, state, chunk_state = _specs(B, H, NT, C, Dk, Dv, True)
    f32 = lambda shape: jax.ShapeDtypeStruct(shape, _F32)
    return pl.pallas_call(
        _bwd_kernel,
        grid=(B, H, NT),
        in_specs=[tok_k, tok_k, tok_v, col, row, seg_col, seg_row, col, chunk_state, tok_v, state],
        out_specs=[tok_k, tok_k, tok_v, col, row, col, state],
        out_shape=[f32((B, H, Tp, Dk)), f32((B, H, Tp, Dk)), f32((B, H, Tp, Dv)),
                   f32((B, H, Tp, 1)), f32((B, H, NT, 1, C)), f32((B, H, Tp, 1)),
                   f32((B, H, Dk, Dv))],
        scratch_shapes=[pltpu.VMEM((Dk, Dv), _F32)],
        compiler_params=_params(),
        interpret=interpret,
        name="gdr_bwd_tpu",
    )(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, states, do, dht)
