"""Public chunked gated delta rule on Pallas kernels, with a custom VJP.

    gated_delta_rule_pallas(q, k, v, g, beta, *, scale=None, initial_state=None,
                            output_final_state=False, segment_ids=None,
                            use_qk_l2norm=True, interpret=None, backend=None,
                            precision="highest")
        -> (o [B, T, H, Dv] in v.dtype, final_state [B, H, Dk, Dv] f32 or None)

q, k [B, T, H, Dk]; v [B, T, H, Dv]; g (log decay, <= 0) and beta [B, T, H];
initial_state [B, H, Dk, Dv]; segment_ids [B, T] int (state resets where the id changes
between t-1 and t). Per head: S <- exp(g_t) S; u = beta (v - S^T k); S <- S + k u^T;
o = S^T (scale q), with q, k l2-normalised (x / sqrt(sum x^2 + 1e-6), f32) first.

Layout of the switch (as in tokamax): this module does the cheap O(T) XLA work that is
differentiated by ordinary JAX autodiff (l2 norm, scale, transpose to [B, H, T, D], pad T
to whole chunks, within-chunk cumsum of g, document-start counts), and one
`jax.custom_vjp` function wraps the kernel pair of the selected backend:
  backend "tpu": `gdr_tpu` (Mosaic TPU); "gpu": `gdr_gpu` (Pallas Triton, kernels parallel
  over chunks; see there). On a GPU (not interpreted) the kernels' modelled shared-memory
  need is checked before launch (`block_sizes.check_gdr_gpu_smem`), and a
  RESOURCE_EXHAUSTED from compiling/launching them is re-raised as KernelResourceError
  naming the kernels and block sizes (when the call is eager: under an outer jit the
  compile happens there, so the pre-launch check is the guard).
  backend=None picks "gpu" when jax.default_backend() is "gpu", else "tpu" (so on CPU
  the TPU kernel runs in interpret mode). interpret: see `resolve_interpret` (None means
  "interpret on CPU", with TPU semantics via `pltpu.InterpretParams` for the TPU kernel).
Padding is inert: padded steps have g = 0, beta = 0, k = q = v = 0, so they neither
decay nor update the state.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import block_sizes

_F32 = jnp.float32


def _l2norm(x):
    x = x.astype(_F32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-6)


def resolve_backend(backend):
    """'tpu' | 'gpu' from an explicit choice or jax.default_backend()."""
    if backend is None:
        backend = "gpu" if jax.default_backend() == "gpu" else "tpu"
    if backend not in ("tpu", "gpu"):
        raise ValueError(f"backend must be 'tpu' or 'gpu', got {backend!r}")
    return backend


def resolve_interpret(interpret, backend):
    """The `interpret=` value for pallas_call.

    None -> interpret iff jax.default_backend() is "cpu". True -> for the TPU kernels
    TPU-semantics interpretation (`pltpu.InterpretParams()`: VMEM scratch, TPU grid
    order, NaN-filled uninitialised scratch), for the GPU kernels Pallas' generic
    interpreter. "plain" -> the generic interpreter for either backend (much faster on
    CPU, and it NaN-fills output buffers, which the tests use to prove every output
    element is written). False or a `pltpu.InterpretParams` pass through unchanged.
    """
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    if interpret == "plain":
        return True
    if interpret is True and backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        if hasattr(pltpu, "InterpretParams"):
            return pltpu.InterpretParams()
    return interpret


def _kernels(backend, gpu_opts):
    """The (fwd, bwd) kernel pair; gpu_opts = (precision, local_bwd) of the GPU kernels."""
    if backend == "tpu":
        from pallas_kernels import gdr_tpu
        return gdr_tpu.gdr_fwd_tpu, gdr_tpu.gdr_bwd_tpu
    from pallas_kernels import gdr_gpu
    precision, local_bwd = gpu_opts
    return (functools.partial(gdr_gpu.gdr_fwd_gpu, prec=precision),
            functools.partial(gdr_gpu.gdr_bwd_gpu, prec=precision, local_bwd=local_bwd))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _core(backend, interpret, gpu_opts, q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, h0):
    """Kernel pair behind one custom VJP. Shapes as in `gdr_tpu`. Returns o, ht."""
    fwd, _ = _kernels(backend, gpu_opts)
    o, _, ht = fwd(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, h0, interpret=interpret)
    return o, ht


def _core_fwd(backend, interpret, gpu_opts, q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, h0):
    fwd, _ = _kernels(backend, gpu_opts)
    o, states, ht = fwd(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, h0, interpret=interpret)
    return (o, ht), (q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, h0, states)


def _core_bwd(backend, interpret, gpu_opts, res, cts):
    q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col, h0, states = res
    do, dht = cts
    _, bwd = _kernels(backend, gpu_opts)
    dq, dk, dv, dgcc, dgcr, db, dh0 = bwd(q, k, v, gc_col, gc_row, sc_col, sc_row, beta_col,
                                          states, do, dht.astype(_F32), interpret=interpret)
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dgcc, dgcr,
            jnp.zeros_like(sc_col), jnp.zeros_like(sc_row), db, dh0.astype(h0.dtype))


_core.defvjp(_core_fwd, _core_bwd)


def prepare(q, k, v, g, beta, scale, segment_ids, use_qk_l2norm, chunk):
    """[B, T, H, *] inputs -> the chunk-padded [B, H, Tp, *] kernel operands (see gdr_tpu)."""
    B, T, H, Dk = q.shape
    NT = -(-T // chunk)
    Tp = NT * chunk
    pad = Tp - T
    dtype = q.dtype
    if use_qk_l2norm:
        q, k = _l2norm(q), _l2norm(k)
    q = (q.astype(_F32) * scale).astype(dtype)
    k = k.astype(dtype)

    def heads_first(x):                                   # [B, T, H, D] -> [B, H, Tp, D]
        return jnp.pad(jnp.swapaxes(x, 1, 2), ((0, 0), (0, 0), (0, pad), (0, 0)))

    q, k, v = heads_first(q), heads_first(k), heads_first(v)
    g = jnp.pad(jnp.swapaxes(g.astype(_F32), 1, 2), ((0, 0), (0, 0), (0, pad)))
    gc = jnp.cumsum(g.reshape(B, H, NT, chunk), axis=-1)
    beta = jnp.pad(jnp.swapaxes(beta.astype(_F32), 1, 2), ((0, 0), (0, 0), (0, pad)))
    if segment_ids is None:
        starts = jnp.zeros((B, Tp), _F32)
    else:
        seg = segment_ids.astype(jnp.int32)
        starts = jnp.concatenate([jnp.zeros((B, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
        starts = jnp.pad(starts.astype(_F32), ((0, 0), (0, pad)))
    sc = jnp.cumsum(starts.reshape(B, NT, chunk), axis=-1)
    sc = jax.lax.stop_gradient(sc)
    return (q, k, v, gc.reshape(B, H, Tp, 1), gc[:, :, :, None, :], sc.reshape(B, Tp, 1),
            sc[:, :, None, :], beta.reshape(B, H, Tp, 1))


def gated_delta_rule_pallas(q, k, v, g, beta, *, scale=None, initial_state=None,
                            output_final_state=False, segment_ids=None, use_qk_l2norm=True,
                            interpret=None, backend=None, precision="highest", local_bwd="xla",
                            check_smem=True):
    """See the module docstring. Returns (o [B, T, H, Dv], final_state [B, H, Dk, Dv] | None).

    GPU options (the TPU kernels ignore them):
      precision: the kernels' matmuls, "highest" (IEEE f32), "tf32" (matrix-unit mode) or
        "bf16" (operands rounded to bf16, f32 accumulation).
      local_bwd: the chunk-local gradients as "xla" (vmap of the per-chunk VJP over all
        chunks; default) or "pallas" (`gdr_gpu._local_bwd_kernel`, hand-derived adjoint;
        its modelled shared memory is over Hopper's limit at Dk 128, so it is tried on a
        device only with check_smem=False -- an experiment for the device suite).
      check_smem: refuse before launch when a kernel's modelled shared memory is too big.
    """
    if precision not in ("highest", "tf32", "bf16"):
        raise ValueError(f"gated_delta_rule_pallas: precision must be 'highest', 'tf32' or 'bf16', "
                         f"got {precision!r}")
    if local_bwd not in ("xla", "pallas"):
        raise ValueError(f"gated_delta_rule_pallas: local_bwd must be 'xla' or 'pallas', got {local_bwd!r}")
    backend = resolve_backend(backend)
    interpret = resolve_interpret(interpret, backend)
    B, T, H, Dk = q.shape
    Dv = v.shape[-1]
    if scale is None:
        scale = Dk ** -0.5
    chunk = block_sizes.gdr_chunk(backend)
    if backend == "gpu" and interpret is False and check_smem:      # refuse before launch, naming the kernel
        block_sizes.check_gdr_gpu_smem(Dk, Dv, chunk, local_bwd=local_bwd == "pallas")
    ops = prepare(q, k, v, g, beta, scale, segment_ids, use_qk_l2norm, chunk)
    h0 = (jnp.zeros((B, H, Dk, Dv), _F32) if initial_state is None
          else initial_state.astype(_F32))
    try:
        o, ht = _core(backend, interpret, (precision, local_bwd), *ops, h0)
    except Exception as e:  # noqa: BLE001 - re-raised, translated only when out of a resource
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise block_sizes.KernelResourceError(
            f"pallas gated_delta_rule ({backend} kernels, chunk {chunk}, Dk {Dk}, Dv {Dv}, value blocks "
            f"{block_sizes.GDR_GPU_BLOCK_V if backend == 'gpu' else Dv}) ran out of a device resource: "
            f"{str(e).strip().splitlines()[0][:300]}") from e
    o = jnp.swapaxes(o[:, :, :T], 1, 2)
    return o, (ht if output_final_state else None)
