"""Chunked gated delta rule for GPUs: kernels parallel over chunks (Pallas, Triton backend).

Decomposition (the one FLA uses: chunk_scaled_dot_kkt + solve_tril + recompute_w_u,
chunk_delta_h, chunk_o; written here from the math in `gdr_chunk`, not ported). Per head,
chunk c of C = 64 tokens, start state S_c [Dk, Dv]:

  forward
    1. `_local_kernel`, grid (NT, B*H), every chunk at once: the UT transform
       T = (I + A)^-1, A = strict-lower(beta_i k_i.k_j exp(gc_i - gc_j)), by block forward
       substitution over 16 x 16 diagonal blocks (15 masked row steps per diagonal block,
       then T_ij = -D_i^-1 sum_m A_im T_mj), and the WY factors w = T (beta k exp(gc)),
       u = T (beta v). Only 16-row tiles are ever loaded or multiplied.
    2. `_state_kernel`, grid (Dv/BV, B*H), the ONLY pass sequential over chunks: per chunk
       vn = u - w S_c (two matmuls); S_{c+1} = exp(gc_last) S_c + (k exp(gc_last - gc))^T vn.
       Writes S_c and vn for every chunk. Columns of S are independent, so Dv is split.
    3. `_output_kernel`, grid (Dv/BV, NT, B*H), every chunk at once:
       o = (q exp(gc)) S_c + (q k^T . decay) vn.
  backward (S_c saved by the forward; w recomputed by kernel 1)
    4. `_dvl_kernel`, parallel over chunks: dvl = (q k^T . decay)^T do.
    5. `_dstate_kernel`, the only reverse-sequential pass: with dS_{c+1} known,
       dvn = kd dS_{c+1} + dvl;  dS_c = exp(gc_last) dS_{c+1} + (q exp(gc))^T do - w^T dvn.
       Writes dS_{c+1} for every chunk, and dh0 = dS_0.
    6. the chunk-local gradients (dq, dk, dv, dg, dbeta) given S_c, dS_{c+1} and do are
       independent across chunks: XLA, `jax.vmap` over (B*H, NT) of the VJP of
       `gdr_chunk.chunk_forward` -- one batched program over all chunks, not a kernel.
       Optional (`local_bwd="pallas"`): `_local_bwd_kernel`, grid (Dv/BV, NT, B*H), the
       hand-derived adjoint of the chunk (tested against the VJP through the whole op).
       Its modelled shared memory (~1 MB at Dk 128, every dot counted) is far over the
       limit, so it is not the default; the device suite runs it past the model to learn
       whether the compiler fits it and what it costs.
  Packed documents: `sc`, the within-chunk count of document starts, masks every term as
  in `gdr_chunk` (no -inf in gc).

Why the Pallas Triton backend and not Mosaic GPU (`plgpu`): Mosaic GPU is the maintained
route (Triton is deprecated since jax 0.11), but its kernels are written with warpgroup
primitives (plgpu.wgmma, TMA copies, barriers) for which jax 0.10.2's Pallas interpreter
has no rules (and its Mosaic GPU registration ignores `interpret`), and this project has
no GPU in CI: a kernel that cannot be checked anywhere before it reaches a device is the
failure of issue 10. These kernels use only generic Pallas (refs, pl.ds,
lax.dot_general, where, exp, iota), so the same body runs in interpret mode on CPU and
lowers to Triton IR for CUDA on a CPU-only machine (tests/test_pallas_gdr_gpu.py);
jax 0.11 still ships the Triton lowering. Porting kernels 2-5 to plgpu is the upgrade path
once `benchmarks/gpu_suite.py` has a GPU to verify it on.

Shared memory: every tile is at most [64, Dk] / [Dk, BV] f32, and the per-kernel need is
computed (conservatively) in `block_sizes.gdr_gpu_smem_bytes`; `gdr.py` refuses to launch
a configuration above Hopper's 232448-byte opt-in limit. Triton needs power-of-two block
shapes, so Dk and Dv are zero-padded to powers of two (inert: zero key/query columns never
touch the state, zero value columns stay zero).

Operand layouts and the fwd/bwd contract are those of `gdr_tpu`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import block_sizes
from pallas_kernels.gdr_chunk import SOLVE_BLOCK, _forward_substitution, chunk_backward

_F32 = jnp.float32
NB = SOLVE_BLOCK
# Matmul precision of the kernels' dots (f32 accumulation always): "highest" (IEEE f32 on
# the GPU: the default, what the tests and the device suite's correctness part verify),
# "tf32" (the matrix units' f32 mode, ~3e-4 relative per product), or "bf16" (operands
# rounded to bf16, as FLA's kernels feed their dots); the faster modes are for the suite
# to measure.
PRECISIONS = {"highest": lax.Precision.HIGHEST, "tf32": lax.Precision.DEFAULT, "bf16": lax.Precision.DEFAULT}


def _dot(a, b, dims, prec):
    if prec == "bf16":
        a, b = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
    return lax.dot_general(a, b, (dims, ((), ())), precision=PRECISIONS[prec], preferred_element_type=_F32)


def dot_nn(a, b, prec):
    """a [M, K] @ b [K, N] -> [M, N] f32."""
    return _dot(a, b, ((1,), (0,)), prec)


def dot_nt(a, b, prec):
    """a [M, K] @ b [N, K]^T -> [M, N] f32."""
    return _dot(a, b, ((1,), (1,)), prec)


def dot_tn(a, b, prec):
    """a [K, M]^T @ b [K, N] -> [M, N] f32."""
    return _dot(a, b, ((0,), (0,)), prec)


def _pow2(n):
    """Padded head dim: a power of two (Triton block shapes), at least 16 (tl.dot's minimum)."""
    return max(16, 1 << (int(n) - 1).bit_length())


def _pad_last(x, n):
    return x if x.shape[-1] == n else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def _pad_last2(x, n1, n2):
    return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, n1 - x.shape[-2]), (0, n2 - x.shape[-1])])


def _compiler_params():
    # Triton CompilerParams also select the Triton lowering: without them a CUDA
    # pallas_call defaults to Mosaic GPU in jax >= 0.10.
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=4, num_stages=1)


def _last_lane(x):
    """x [1, n] -> [1, 1], the last entry (masked reduction: no lane slicing)."""
    lane = lax.broadcasted_iota(jnp.int32, x.shape, 1)
    return jnp.sum(jnp.where(lane == x.shape[1] - 1, x, 0.0), axis=1, keepdims=True)


def _gates(gc_col, sc_col, gc_row, sc_row):
    """Per-token gate factors of one chunk (all f32).

    gc_col, sc_col: [R, 1] rows of the chunk; gc_row, sc_row: [1, C] the whole chunk.
    Returns carry_col [R, 1] (the start state reaches token i: exp(gc_i), 0 after a
    document start), to_end_col [R, 1] (token i reaches the chunk end: exp(gl - gc_i) in
    the last document), carry_end [1, 1] (the start state survives the chunk).
    """
    gl, sl = _last_lane(gc_row), _last_lane(sc_row)
    carry_col = jnp.where(sc_col == 0.0, jnp.exp(gc_col), 0.0)
    to_end_col = jnp.where(sc_col == sl, jnp.exp(gl - gc_col), 0.0)
    carry_end = jnp.where(sl == 0.0, jnp.exp(gl), 0.0)
    return carry_col, to_end_col, carry_end


def _decay(gc_col, sc_col, gc_row, sc_row, row0, col0, strict):
    """Masked exp(gc_i - gc_j) for rows i (row0 + [R]) and columns j (col0 + [Cj]) of a chunk:
    zero unless j < i (strict) or j <= i, within one document. Mask before exp: above the
    diagonal the difference is positive and may overflow (inf * 0 = nan)."""
    r, c = gc_col.shape[0], gc_row.shape[1]
    row = lax.broadcasted_iota(jnp.int32, (r, c), 0) + row0
    col = lax.broadcasted_iota(jnp.int32, (r, c), 1) + col0
    keep = ((row > col) if strict else (row >= col)) & (sc_col == sc_row)
    return jnp.where(keep, jnp.exp(jnp.where(keep, gc_col - gc_row, 0.0)), 0.0)


def _diag_inverse(a, prec):
    """(I + a)^-1 for strictly lower a [NB, NB] f32: forward substitution, one masked
    matmul per row (row i of the inverse needs only rows < i, already final)."""
    n = a.shape[0]
    row = lax.broadcasted_iota(jnp.int32, (n, n), 0)
    eye = (row == lax.broadcasted_iota(jnp.int32, (n, n), 1)).astype(_F32)
    t = -a
    t = lax.fori_loop(1, n, lambda i, t: t + dot_nn(jnp.where(row == i, t, 0.0), t, prec), t)
    return t + eye


# --------------------------------------------------------------------------- forward kernels


def _local_kernel(k_ref, v_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, b_ref, w_ref, u_ref, *,
                  C, H, BV, NV, prec):
    """One chunk: w = T (beta k carry), u = T (beta v), T = (I + A)^-1 by 16-block substitution."""
    c, bh = pl.program_id(0), pl.program_id(1)
    bi = lax.div(bh, H)
    n = C // NB
    gcr = gcr_ref[bh, c, :, :]                                 # [1, C]
    scr = scr_ref[bi, c, :, :]

    def rows(i):                                               # the 16-row tiles of block i
        ts = pl.ds(c * C + i * NB, NB)
        k = k_ref[bh, ts, :].astype(_F32)
        gcc, scc, beta = gcc_ref[bh, ts, :], scc_ref[bi, ts, :], b_ref[bh, ts, :]
        return ts, k, gcc, scc, beta

    blocks = [rows(i) for i in range(n)]
    t = {}                                                     # T_ij, i >= j, [NB, NB]
    for i in range(n):
        ts_i, k_i, gcc_i, scc_i, beta_i = blocks[i]
        a_row = []
        for j in range(i + 1):
            _, k_j, _, _, _ = blocks[j]
            cs = pl.ds(j * NB, NB)
            dec = _decay(gcc_i, scc_i, gcr_ref[bh, c, :, cs], scr_ref[bi, c, :, cs],
                         i * NB, j * NB, strict=True)
            a_row.append(dot_nt(k_i * beta_i, k_j, prec) * dec)
        d_inv = _diag_inverse(a_row[i], prec)
        t[i, i] = d_inv
        for j in range(i):
            acc = sum(dot_nn(a_row[m], t[m, j], prec) for m in range(j, i))
            t[i, j] = -dot_nn(d_inv, acc, prec)
    for i in range(n):
        ts_i = blocks[i][0]
        w = 0.0
        for j in range(i + 1):
            _, k_j, gcc_j, scc_j, beta_j = blocks[j]
            carry_j, _, _ = _gates(gcc_j, scc_j, gcr, scr)
            w = w + dot_nn(t[i, j], k_j * (beta_j * carry_j), prec)
        w_ref[bh, ts_i, :] = w
        for iv in range(NV):
            vs = pl.ds(iv * BV, BV)
            u = 0.0
            for j in range(i + 1):
                ts_j, _, _, _, beta_j = blocks[j]
                u = u + dot_nn(t[i, j], v_ref[bh, ts_j, vs].astype(_F32) * beta_j, prec)
            u_ref[bh, ts_i, vs] = u


def _local(k, v, gcc, gcr, scc, scr, beta, *, H, interpret, prec):
    """w [BH, Tp, Dk] f32, u [BH, Tp, Dv] f32 for every chunk (kernel 1)."""
    BH, Tp, Dk = k.shape
    Dv = v.shape[-1]
    NT, C = gcr.shape[1], gcr.shape[3]
    BV = block_sizes.gdr_gpu_block_v("local", Dv)
    return pl.pallas_call(
        functools.partial(_local_kernel, C=C, H=H, BV=BV, NV=Dv // BV, prec=prec),
        grid=(NT, BH),
        out_shape=[jax.ShapeDtypeStruct((BH, Tp, Dk), _F32), jax.ShapeDtypeStruct((BH, Tp, Dv), _F32)],
        compiler_params=_compiler_params(), interpret=interpret, name="gdr_gpu_local",
    )(k, v, gcc, gcr, scc, scr, beta)


def _state_kernel(w_ref, u_ref, k_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, h0_ref,
                  states_ref, vn_ref, ht_ref, *, NT, C, H, BV, prec):
    iv, bh = pl.program_id(0), pl.program_id(1)
    bi = lax.div(bh, H)
    vs = pl.ds(iv * BV, BV)

    def body(c, s):
        ts = pl.ds(c * C, C)
        _, to_end, carry_end = _gates(gcc_ref[bh, ts, :], scc_ref[bi, ts, :], gcr_ref[bh, c, :, :],
                                      scr_ref[bi, c, :, :])
        states_ref[bh, c, :, vs] = s
        vn = u_ref[bh, ts, vs] - dot_nn(w_ref[bh, ts, :], s, prec)
        vn_ref[bh, ts, vs] = vn
        return carry_end * s + dot_tn(k_ref[bh, ts, :].astype(_F32) * to_end, vn, prec)

    ht_ref[bh, :, vs] = lax.fori_loop(0, NT, body, h0_ref[bh, :, vs])


def _output_kernel(q_ref, k_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, states_ref, vn_ref, o_ref, *,
                   C, H, BV, prec):
    iv, c, bh = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    bi = lax.div(bh, H)
    vs, ts = pl.ds(iv * BV, BV), pl.ds(c * C, C)
    gcc, scc, gcr, scr = gcc_ref[bh, ts, :], scc_ref[bi, ts, :], gcr_ref[bh, c, :, :], scr_ref[bi, c, :, :]
    carry, _, _ = _gates(gcc, scc, gcr, scr)
    q = q_ref[bh, ts, :].astype(_F32)
    p = dot_nt(q, k_ref[bh, ts, :].astype(_F32), prec) * _decay(gcc, scc, gcr, scr, 0, 0, strict=False)
    o = dot_nn(q * carry, states_ref[bh, c, :, vs], prec) + dot_nn(p, vn_ref[bh, ts, vs], prec)
    o_ref[bh, ts, vs] = o.astype(o_ref.dtype)


# --------------------------------------------------------------------------- backward kernels


def _dvl_kernel(q_ref, k_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, do_ref, dvl_ref, *, C, H, BV, prec):
    iv, c, bh = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    bi = lax.div(bh, H)
    vs, ts = pl.ds(iv * BV, BV), pl.ds(c * C, C)
    gcc, scc, gcr, scr = gcc_ref[bh, ts, :], scc_ref[bi, ts, :], gcr_ref[bh, c, :, :], scr_ref[bi, c, :, :]
    p = dot_nt(q_ref[bh, ts, :].astype(_F32), k_ref[bh, ts, :].astype(_F32), prec) * _decay(
        gcc, scc, gcr, scr, 0, 0, strict=False)
    dvl_ref[bh, ts, vs] = dot_tn(p, do_ref[bh, ts, vs].astype(_F32), prec)


def _dstate_kernel(q_ref, k_ref, w_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, do_ref, dvl_ref, dht_ref,
                   dstates_ref, dh0_ref, *, NT, C, H, BV, prec):
    iv, bh = pl.program_id(0), pl.program_id(1)
    bi = lax.div(bh, H)
    vs = pl.ds(iv * BV, BV)

    def body(i, ds):
        c = NT - 1 - i
        ts = pl.ds(c * C, C)
        carry, to_end, carry_end = _gates(gcc_ref[bh, ts, :], scc_ref[bi, ts, :], gcr_ref[bh, c, :, :],
                                          scr_ref[bi, c, :, :])
        dstates_ref[bh, c, :, vs] = ds                         # gradient of the state after chunk c
        dvn = dot_nn(k_ref[bh, ts, :].astype(_F32) * to_end, ds, prec) + dvl_ref[bh, ts, vs]
        return (carry_end * ds + dot_tn(q_ref[bh, ts, :].astype(_F32) * carry, do_ref[bh, ts, vs].astype(_F32), prec)
                - dot_tn(w_ref[bh, ts, :], dvn, prec))

    dh0_ref[bh, :, vs] = lax.fori_loop(0, NT, body, dht_ref[bh, :, vs])


def _local_bwd_kernel(q_ref, k_ref, v_ref, gcc_ref, gcr_ref, scc_ref, scr_ref, b_ref, st_ref, dst_ref, do_ref,
                      dq_ref, dk_ref, dv_ref, dgcc_ref, dgcr_ref, db_ref, *, C, H, BV, prec):
    """Chunk-local gradients of one chunk and one value block, given S_c, dS_{c+1}, do.

    Hand-derived adjoint of `gdr_chunk.chunk_forward` (tested against its jax.vjp through
    the whole op). dq, dk, dgc, dbeta are partial sums over value blocks (every term is
    linear in the block's cotangents), summed by the caller; dv is exact per block.
    """
    iv, c, bh = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    bi = lax.div(bh, H)
    vs, ts = pl.ds(iv * BV, BV), pl.ds(c * C, C)
    gcc, scc, gcr, scr = gcc_ref[bh, ts, :], scc_ref[bi, ts, :], gcr_ref[bh, c, :, :], scr_ref[bi, c, :, :]
    q, k = q_ref[bh, ts, :].astype(_F32), k_ref[bh, ts, :].astype(_F32)
    v, beta = v_ref[bh, ts, vs].astype(_F32), b_ref[bh, ts, :]
    s, dsn, do = st_ref[bh, c, :, vs], dst_ref[bh, c, :, vs], do_ref[bh, ts, vs].astype(_F32)
    carry, to_end, carry_end = _gates(gcc, scc, gcr, scr)
    d_incl = _decay(gcc, scc, gcr, scr, 0, 0, strict=False)
    d_strict = _decay(gcc, scc, gcr, scr, 0, 0, strict=True)
    # forward recompute
    kb = k * beta
    kk = dot_nt(kb, k, prec)
    t = _forward_substitution(kk * d_strict)
    kbc, vb = kb * carry, v * beta
    vn = dot_nn(t, vb, prec) - dot_nn(dot_nn(t, kbc, prec), s, prec)
    qk = dot_nt(q, k, prec)
    # adjoint
    dvn = dot_tn(qk * d_incl, do, prec) + dot_nn(k * to_end, dsn, prec)
    dp = dot_nt(do, vn, prec)
    dqk = dp * d_incl
    dos = dot_nt(do, s, prec)                                  # do S^T  [C, Dk]
    dq = dot_nn(dqk, k, prec) + dos * carry
    dcarry = jnp.sum(q * dos, axis=1, keepdims=True)
    dkt = dot_nt(vn, dsn, prec)                                # vn dS'^T [C, Dk]
    dk = dot_tn(dqk, q, prec) + dkt * to_end
    dto_end = jnp.sum(k * dkt, axis=1, keepdims=True)
    dw = -dot_nt(dvn, s, prec)
    dt = dot_nt(dvn, vb, prec) + dot_nt(dw, kbc, prec)
    dvb = dot_tn(t, dvn, prec)
    dkbc = dot_tn(t, dw, prec)
    da = -dot_tn(t, dot_nt(dt, t, prec), prec)                 # d(M^-1) = -M^-1 dM M^-1
    dkk = da * d_strict
    dkb = dkbc * carry + dot_nn(dkk, k, prec)
    dk = dk + dot_tn(dkk, kb, prec) + dkb * beta
    dcarry = dcarry + jnp.sum(dkbc * kb, axis=1, keepdims=True)
    dbeta = jnp.sum(dvb * v, axis=1, keepdims=True) + jnp.sum(dkb * k, axis=1, keepdims=True)
    # gates: d exp(x) = exp(x) dx; decays are exp(gc_i - gc_j) (zero where masked)
    e = dp * qk * d_incl + da * kk * d_strict
    dgc_col = jnp.sum(e, axis=1, keepdims=True) + dcarry * carry - dto_end * to_end
    dgl = jnp.sum(dto_end * to_end, axis=0, keepdims=True) + carry_end * jnp.sum(
        jnp.sum(dsn * s, axis=1, keepdims=True), axis=0, keepdims=True)
    lane = lax.broadcasted_iota(jnp.int32, (1, C), 1)
    dgc_row = -jnp.sum(e, axis=0, keepdims=True) + jnp.where(lane == C - 1, dgl, 0.0)
    dq_ref[iv, bh, ts, :] = dq
    dk_ref[iv, bh, ts, :] = dk
    dv_ref[bh, ts, vs] = dvb * beta
    dgcc_ref[iv, bh, ts, :] = dgc_col
    dgcr_ref[iv, bh, c, :, :] = dgc_row
    db_ref[iv, bh, ts, :] = dbeta


# --------------------------------------------------------------------------- wrappers


def _flat(x):
    """[B, H, ...] -> [B*H, ...]."""
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _operands(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col):
    Dkp, Dvp = _pow2(q.shape[-1]), _pow2(v.shape[-1])
    return (_flat(_pad_last(q, Dkp)), _flat(_pad_last(k, Dkp)), _flat(_pad_last(v, Dvp)), _flat(gc_col),
            _flat(gc_row), sc_col, sc_row, _flat(beta_col))


@functools.partial(jax.jit, static_argnames=("interpret", "prec"))
def gdr_fwd_gpu(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, h0, *, interpret=False, prec="highest"):
    """Forward; same contract as `gdr_tpu.gdr_fwd_tpu` (o, states [B,H,NT,Dk,Dv] f32, ht)."""
    B, H, Tp, Dk = q.shape
    Dv = v.shape[-1]
    NT, C = gc_row.shape[2], gc_row.shape[4]
    qf, kf, vf, gcc, gcr, scc, scr, bf = _operands(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col)
    BH, Dkp, Dvp = B * H, qf.shape[-1], vf.shape[-1]
    w, u = _local(kf, vf, gcc, gcr, scc, scr, bf, H=H, interpret=interpret, prec=prec)
    bv = block_sizes.gdr_gpu_block_v("state", Dvp)
    f32 = lambda shape: jax.ShapeDtypeStruct(shape, _F32)
    states, vn, ht = pl.pallas_call(
        functools.partial(_state_kernel, NT=NT, C=C, H=H, BV=bv, prec=prec),
        grid=(Dvp // bv, BH),
        out_shape=[f32((BH, NT, Dkp, Dvp)), f32((BH, Tp, Dvp)), f32((BH, Dkp, Dvp))],
        compiler_params=_compiler_params(), interpret=interpret, name="gdr_gpu_state",
    )(w, u, kf, gcc, gcr, scc, scr, _flat(_pad_last2(h0.astype(_F32), Dkp, Dvp)))
    bv = block_sizes.gdr_gpu_block_v("output", Dvp)
    o = pl.pallas_call(
        functools.partial(_output_kernel, C=C, H=H, BV=bv, prec=prec),
        grid=(Dvp // bv, NT, BH),
        out_shape=jax.ShapeDtypeStruct((BH, Tp, Dvp), v.dtype),
        compiler_params=_compiler_params(), interpret=interpret, name="gdr_gpu_output",
    )(qf, kf, gcc, gcr, scc, scr, states, vn)
    unflat = lambda x: x.reshape((B, H) + x.shape[1:])
    return (unflat(o)[..., :Dv], unflat(states)[..., :Dk, :Dv], unflat(ht)[..., :Dk, :Dv])


@functools.partial(jax.jit, static_argnames=("interpret", "prec", "local_bwd"))
def gdr_bwd_gpu(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, states, do, dht, *,
                interpret=False, prec="highest", local_bwd="xla"):
    """Backward; same contract as `gdr_tpu.gdr_bwd_tpu`."""
    B, H, Tp, Dk = q.shape
    Dv = v.shape[-1]
    NT, C = gc_row.shape[2], gc_row.shape[4]
    qf, kf, vf, gcc, gcr, scc, scr, bf = _operands(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col)
    BH, Dkp, Dvp = B * H, qf.shape[-1], vf.shape[-1]
    dof = _flat(_pad_last(do, Dvp))
    w, _ = _local(kf, vf, gcc, gcr, scc, scr, bf, H=H, interpret=interpret, prec=prec)
    bv = block_sizes.gdr_gpu_block_v("dvl", Dvp)
    f32 = lambda shape: jax.ShapeDtypeStruct(shape, _F32)
    dvl = pl.pallas_call(
        functools.partial(_dvl_kernel, C=C, H=H, BV=bv, prec=prec),
        grid=(Dvp // bv, NT, BH),
        out_shape=f32((BH, Tp, Dvp)),
        compiler_params=_compiler_params(), interpret=interpret, name="gdr_gpu_dvl",
    )(qf, kf, gcc, gcr, scc, scr, dof)
    bv = block_sizes.gdr_gpu_block_v("dstate", Dvp)
    dstates, dh0 = pl.pallas_call(
        functools.partial(_dstate_kernel, NT=NT, C=C, H=H, BV=bv, prec=prec),
        grid=(Dvp // bv, BH),
        out_shape=[f32((BH, NT, Dkp, Dvp)), f32((BH, Dkp, Dvp))],
        compiler_params=_compiler_params(), interpret=interpret, name="gdr_gpu_dstate",
    )(qf, kf, w, gcc, gcr, scc, scr, dof, dvl, _flat(_pad_last2(dht.astype(_F32), Dkp, Dvp)))
    if local_bwd == "pallas":
        bv = block_sizes.gdr_gpu_block_v("local_bwd", Dvp)
        nv = Dvp // bv
        dq, dk, dv, dgcc, dgcr, db = pl.pallas_call(
            functools.partial(_local_bwd_kernel, C=C, H=H, BV=bv, prec=prec),
            grid=(nv, NT, BH),
            out_shape=[f32((nv, BH, Tp, Dkp)), f32((nv, BH, Tp, Dkp)), f32((BH, Tp, Dvp)), f32((nv, BH, Tp, 1)),
                       f32((nv, BH, NT, 1, C)), f32((nv, BH, Tp, 1))],
            compiler_params=_compiler_params(), interpret=interpret, name="gdr_gpu_local_bwd",
        )(qf, kf, vf, gcc, gcr, scc, scr, bf, _flat(_pad_last2(states.astype(_F32), Dkp, Dvp)), dstates, dof)
        un = lambda x: x.sum(0).reshape((B, H) + x.shape[2:])
        return (un(dq)[..., :Dk], un(dk)[..., :Dk], dv.reshape(B, H, Tp, Dvp)[..., :Dv], un(dgcc), un(dgcr),
                un(db), dh0.reshape(B, H, Dkp, Dvp)[..., :Dk, :Dv])
    dstates = dstates.reshape(B, H, NT, Dkp, Dvp)[..., :Dk, :Dv]
    # chunk-local gradients: independent across chunks given S_c and dS_{c+1} (XLA, batched)
    per_chunk = lambda x: x.reshape((B, H, NT, C) + x.shape[3:])
    sc_c = jnp.broadcast_to(sc_col.reshape(B, 1, NT, C, 1), (B, H, NT, C, 1))
    sc_r = jnp.broadcast_to(sc_row[:, None], (B, H, NT, 1, C))
    f = lambda *a: chunk_backward(*(x.astype(_F32) for x in a))
    for _ in range(3):
        f = jax.vmap(f)
    dq, dk, dv, dgcc, dgcr, db, _ = f(per_chunk(q), per_chunk(k), per_chunk(v), per_chunk(gc_col), gc_row, sc_c,
                                      sc_r, per_chunk(beta_col), states, per_chunk(do), dstates)
    tok = lambda x: x.reshape((B, H, Tp) + x.shape[4:])
    return tok(dq), tok(dk), tok(dv), tok(dgcc), dgcr, tok(db), dh0.reshape(B, H, Dkp, Dvp)[..., :Dk, :Dv]
