"""Dynamic (per-token, per-channel) causal depthwise convolution: Pallas kernels + VJP.

    dynamic_causal_conv_pallas(x, kernels, *, segment_ids=None, conv_state=None,
                               output_final_state=False, activation=None,
                               interpret=None, backend=None)
        -> y [B, T, C] (x.dtype), or (y, final_state [B, C, W]) with output_final_state

    y[t, c] = act( sum_{w<W} kernels[t, c, w] * x[t - (W-1) + w, c] ),  act = None | "silu"

x [B, T, C]; kernels [B, T, C, W]; conv_state [B, C, W] holds the W inputs before x
(oldest first, [..., W-1] the most recent); zero history when absent. segment_ids [B, T]:
taps never reach across a document start (ids change between t-1 and t); the history /
conv_state belongs to the first document. final_state = the last W inputs, with entries
from earlier documents than the last one zeroed (so decoding the last document cannot
see the previous one).

    dynamic_causal_conv_step(x_t [B, C], kernel_t [B, C, W], conv_state [B, C, W],
                             activation=None) -> (y_t [B, C], new_state [B, C, W])
is the one-token decode step (plain jnp: W multiply-adds per channel is memory-bound and
XLA fuses it into its neighbours; a kernel launch would cost more than the work).

Kernels (Mosaic TPU semantics; the same bodies run in interpret mode, and on GPU through
Pallas' generic lowering is not attempted: backend "gpu" raises until a GPU version is
written and tested). Layout: taps first, kernels -> [B, W, T, C], so every block is a
(time, channel) tile of (Tt, Cb) with Tt a multiple of 8 and Cb = 128 lanes or all of C.
  forward, grid (B, C/Cb, T/Tt), all parallel: each block also reads the previous time
    block of x (index max(t-1, 0)) for its W-1 rows of history, or the conv_state rows
    at t = 0, so no carry is needed.
  backward, grid (B, C/Cb, T/Tt) with time walked in reverse ("arbitrary"): recomputes
    the pre-activation, writes dkernels, and forms dx[t] = sum_w z_w[t + W-1-w] with
    z_w = dpre * k_w * mask_w, carrying the first 8 rows of the later block's z in VMEM
    scratch; the last step also yields the gradient of the conv_state rows.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels import block_sizes
from pallas_kernels.gdr import resolve_backend, resolve_interpret

_F32 = jnp.float32
_SQ = pl.squeezed
_HIST = 8            # history rows kept in front of a time block (>= W-1, one sublane tile)


def _silu_and_grad(pre):
    s = jax.nn.sigmoid(pre)
    return pre * s, s * (1.0 + pre * (1.0 - s))


def _window(x_ref, xprev_ref, hist_ref, t):
    """[HIST + Tt, Cb] f32: HIST rows of history (previous block's tail, or the conv_state
    rows for the first block) followed by the current block."""
    tt = x_ref.shape[0]
    prev_tail = xprev_ref[tt - _HIST:, :].astype(_F32)
    head = jnp.where(t == 0, hist_ref[...].astype(_F32), prev_tail)
    return jnp.concatenate([head, x_ref[...].astype(_F32)], axis=0)


def _taps(win, k_ref, pos_ref, w_count):
    """Per tap w: (k_w [Tt, Cb] f32, masked shifted input [Tt, Cb] f32, mask [Tt, 1])."""
    tt = k_ref.shape[1]
    pos = pos_ref[...]                                  # [Tt, 1] position within document
    out = []
    for w in range(w_count):
        s = w_count - 1 - w                             # how far back tap w looks
        m = pos >= s
        xs = jnp.where(m, win[_HIST - s:_HIST - s + tt, :], 0.0)
        out.append((k_ref[w].astype(_F32), xs, m))
    return out


def _fwd_kernel(x_ref, xprev_ref, hist_ref, k_ref, pos_ref, y_ref, *, activation, w_count):
    win = _window(x_ref, xprev_ref, hist_ref, pl.program_id(2))
    pre = sum(kw * xs for kw, xs, _ in _taps(win, k_ref, pos_ref, w_count))
    y = _silu_and_grad(pre)[0] if activation == "silu" else pre
    y_ref[...] = y.astype(y_ref.dtype)


def _bwd_kernel(x_ref, xprev_ref, hist_ref, k_ref, pos_ref, dy_ref,
                dx_ref, dhist_ref, dk_ref, z_scr, *, activation, w_count, n_t):
    i = pl.program_id(2)
    t = n_t - 1 - i
    tt = x_ref.shape[0]

    @pl.when(i == 0)
    def _():
        z_scr[...] = jnp.zeros_like(z_scr)      # rows before the sequence / after its end

    win = _window(x_ref, xprev_ref, hist_ref, t)
    taps = _taps(win, k_ref, pos_ref, w_count)
    dpre = dy_ref[...].astype(_F32)
    if activation == "silu":
        pre = sum(kw * xs for kw, xs, _ in taps)
        dpre = dpre * _silu_and_grad(pre)[1]
    for w, (kw, xs, m) in enumerate(taps):
        dk_ref[w] = (dpre * xs).astype(dk_ref.dtype)
        # z_w[t] is what input row t - s receives from output row t through tap w.
        z_scr[w, _HIST:_HIST + tt, :] = jnp.where(m, dpre * kw, 0.0)
    dx = 0.0
    dh = 0.0
    for w in range(w_count):
        s = w_count - 1 - w
        dx = dx + z_scr[w, _HIST + s:_HIST + s + tt, :]
        dh = dh + z_scr[w, s:s + _HIST, :]      # history rows (rows < HIST of z_scr are 0)
    dx_ref[...] = dx.astype(dx_ref.dtype)

    @pl.when(t == 0)
    def _():
        dhist_ref[...] = dh

    # This block's first rows become the "later block" rows for the next (earlier) block.
    z_scr[:, _HIST + tt:, :] = z_scr[:, _HIST:2 * _HIST, :]


def _specs(tt, cb, w_count, n_t, reverse):
    tix = (lambda i: n_t - 1 - i) if reverse else (lambda i: i)
    xs = pl.BlockSpec((_SQ, tt, cb), lambda b, c, i: (b, tix(i), c))
    xprev = pl.BlockSpec((_SQ, tt, cb), lambda b, c, i: (b, jnp.maximum(tix(i) - 1, 0), c))
    hist = pl.BlockSpec((_SQ, _HIST, cb), lambda b, c, i: (b, 0, c))
    ks = pl.BlockSpec((_SQ, w_count, tt, cb), lambda b, c, i: (b, 0, tix(i), c))
    pos = pl.BlockSpec((_SQ, tt, 1), lambda b, c, i: (b, tix(i), 0))
    return xs, xprev, hist, ks, pos


@functools.partial(jax.jit, static_argnames=("activation", "tt", "cb", "interpret"))
def conv_fwd_tpu(x, hist, kern, pos, *, activation, tt, cb, interpret=False):
    """x [B, Tp, C]; hist [B, 8, C] f32; kern [B, W, Tp, C]; pos [B, Tp, 1] int32 -> y [B, Tp, C]."""
    B, Tp, C = x.shape
    W = kern.shape[1]
    n_t = Tp // tt
    xs, xprev, hs, ks, ps = _specs(tt, cb, W, n_t, False)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, activation=activation, w_count=W),
        grid=(B, C // cb, n_t),
        in_specs=[xs, xprev, hs, ks, ps],
        out_specs=xs,
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel")),
        interpret=interpret,
        name="dynamic_conv_fwd",
    )(x, x, hist, kern, pos)


@functools.partial(jax.jit, static_argnames=("activation", "tt", "cb", "interpret"))
def conv_bwd_tpu(x, hist, kern, pos, dy, *, activation, tt, cb, interpret=False):
    """Returns dx [B, Tp, C] f32, dhist [B, 8, C] f32, dkern [B, W, Tp, C] f32."""
    B, Tp, C = x.shape
    W = kern.shape[1]
    n_t = Tp // tt
    xs, xprev, hs, ks, ps = _specs(tt, cb, W, n_t, True)
    f32 = lambda shape: jax.ShapeDtypeStruct(shape, _F32)
    return pl.pallas_call(
        functools.partial(_bwd_kernel, activation=activation, w_count=W, n_t=n_t),
        grid=(B, C // cb, n_t),
        in_specs=[xs, xprev, hs, ks, ps, xs],
        out_specs=[xs, hs, ks],
        out_shape=[f32(x.shape), f32(hist.shape), f32(kern.shape)],
        scratch_shapes=[pltpu.VMEM((W, 2 * _HIST + tt, cb), _F32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="dynamic_conv_bwd",
    )(x, x, hist, kern, pos, dy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _core(activation, tt, cb, interpret, x, hist, kern, pos):
    return conv_fwd_tpu(x, hist, kern, pos, activation=activation, tt=tt, cb=cb,
                        interpret=interpret)


def _core_fwd(activation, tt, cb, interpret, x, hist, kern, pos):
    return _core(activation, tt, cb, interpret, x, hist, kern, pos), (x, hist, kern, pos)


def _core_bwd(activation, tt, cb, interpret, res, dy):
    x, hist, kern, pos = res
    dx, dhist, dk = conv_bwd_tpu(x, hist, kern, pos, dy, activation=activation, tt=tt, cb=cb,
                                 interpret=interpret)
    return (dx.astype(x.dtype), dhist.astype(hist.dtype), dk.astype(kern.dtype),
            np.zeros(pos.shape, jax.dtypes.float0))


_core.defvjp(_core_fwd, _core_bwd)


def _positions(segment_ids, B, T, W):
    """[B, T] int32 position of each token within its document; tokens of the first
    document get T + W so that every tap may read the (conv_state) history."""
    t = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    if segment_ids is None:
        return t + W, None
    seg = segment_ids.astype(jnp.int32)
    start = jnp.concatenate([jnp.zeros((B, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    last_start = jax.lax.cummax(jnp.where(start, t, 0), axis=1)
    first_doc = jnp.cumsum(start, axis=1) == 0
    return jnp.where(first_doc, t + W, t - last_start), last_start[:, -1]


def dynamic_causal_conv_pallas(x, kernels, *, segment_ids=None, conv_state=None,
                               output_final_state=False, activation=None, interpret=None,
                               backend=None):
    """See the module docstring."""
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    backend = resolve_backend(backend)
    if backend != "tpu":
        raise NotImplementedError("dynamic_causal_conv_pallas: only the TPU (Mosaic) kernel "
                                  "exists; use the XLA implementation on GPU")
    interpret = resolve_interpret(interpret, backend)
    B, T, C = x.shape
    W = kernels.shape[-1]
    if W - 1 > _HIST:
        raise ValueError(f"kernel width {W} > {_HIST + 1} is not supported")
    tt = block_sizes.conv_time_block(backend, T)
    cb = block_sizes.conv_channel_block(backend, C)
    Tp = -(-T // tt) * tt
    state = (jnp.zeros((B, C, W), x.dtype) if conv_state is None else conv_state)
    hist_rows = jnp.swapaxes(state, 1, 2).astype(_F32)                 # [B, W, C]
    hist = jnp.zeros((B, _HIST, C), _F32).at[:, _HIST - (W - 1):].set(hist_rows[:, 1:])
    pos, last_start = _positions(segment_ids, B, T, W)
    pad_t = ((0, 0), (0, Tp - T))
    posp = jnp.pad(pos, pad_t)[..., None]
    xp = jnp.pad(x, pad_t + ((0, 0),))
    kp = jnp.pad(jnp.moveaxis(kernels, -1, 1), ((0, 0), (0, 0), (0, Tp - T), (0, 0)))
    y = _core(activation, tt, cb, interpret, xp, hist, kp, posp)[:, :T]
    if not output_final_state:
        return y
    full = jnp.concatenate([hist_rows.astype(x.dtype), x], axis=1)   # [B, W + T, C]
    tail = full[:, T:]                                                 # last W inputs
    if last_start is not None:
        p = jnp.arange(T - W, T)                                       # their positions
        keep = p[None, :] >= jnp.where(last_start > 0, last_start, -W)[:, None]
        tail = jnp.where(keep[..., None], tail, 0)
    return y, jnp.swapaxes(tail, 1, 2)


def dynamic_causal_conv_step(x_t, kernel_t, conv_state, activation=None):
    """One decode token. x_t [B, C], kernel_t [B, C, W], conv_state [B, C, W]
    -> (y_t [B, C] in x_t.dtype, new_state [B, C, W] in conv_state.dtype)."""
    new_state = jnp.concatenate([conv_state[..., 1:], x_t[..., None].astype(conv_state.dtype)],
                                axis=-1)
    y = jnp.sum(kernel_t.astype(_F32) * new_state.astype(_F32), axis=-1)
    if activation == "silu":
        y = jax.nn.silu(y)
    return y.astype(x_t.dtype), new_state
