"""The chunk-parallel GPU kernels (pallas_kernels.gdr_gpu), on CPU, in interpret mode.

Oracles: FLA's `naive_recurrent_gated_delta_rule` (+ torch autograd for every gradient;
packed documents run per document) through the helpers of test_pallas_gdr, and the
jet_jax recurrent reference. Shapes: non-power-of-two Dk/Dv (24/40: the kernels pad to
32/64), T = 1, 63, 64, 65, 200 (partial chunks, one and several chunks), packed
documents, an initial state, bf16 inputs. Tolerances as in test_pallas_gdr: f32
max|err|/max|ref| <= 1e-4, bf16 2e-2. Plus: the kernels lower to Triton for CUDA (a
GPU-free check that every kernel body is accepted by the Triton lowering), and the
pre-launch shared-memory check refuses a configuration over Hopper's limit.
"""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy
pytest.importorskip("torch")
pytest.importorskip("fla.ops.gated_delta_rule.naive")

from pallas_kernels import block_sizes  # noqa: E402
from pallas_kernels.gdr import gated_delta_rule_pallas  # noqa: E402
from tests.test_pallas_gdr import (BF16_TOL, F32_TOL, _check, _fast_compile, _inputs, _oracle,  # noqa: E402
                                   _rel, _run, _segments)

DK, DV = 24, 40


@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
def test_gpu_kernels_match_fla_naive(T):
    B = 2
    arrs, wo, ws = _inputs(100 + T, B, T, 2, DK, DV)
    seg = _segments(B, T, T) if T > 2 else None
    _check(_run(arrs, wo, ws, backend="gpu", interpret="plain", seg=seg),
           _oracle(arrs, wo, ws, DK ** -0.5, seg=seg), F32_TOL)


def test_gpu_kernels_match_recurrent_reference():
    from jet_jax.ops.gated_delta_rule import gated_delta_rule
    B, T = 2, 200
    arrs, wo, ws = _inputs(7, B, T, 2, DK, DV)
    seg = jnp.asarray(_segments(B, T, 9))
    q, k, v, g, beta, h0 = (jnp.asarray(x) for x in arrs)
    kw = dict(output_final_state=True, segment_ids=seg)
    mine = lambda *a: gated_delta_rule_pallas(*a[:5], initial_state=a[5], interpret="plain", backend="gpu", **kw)
    ref = lambda *a: gated_delta_rule(*a[:5], initial_state=a[5], implementation="recurrent", **kw)

    def fwd_bwd(fn):
        def f(*a):
            (o, ht), vjp = jax.vjp(fn, *a)
            return o, ht, vjp((jnp.asarray(wo), jnp.asarray(ws)))
        return jax.jit(f)

    got = _fast_compile(fwd_bwd(mine), q, k, v, g, beta, h0)
    want = fwd_bwd(ref)(q, k, v, g, beta, h0)
    names = ["o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dh0"]
    for name, a, r in zip(names, [got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        assert _rel(np.asarray(a), np.asarray(r)) <= F32_TOL, name


def test_pallas_local_backward_kernel_matches_fla_naive():
    """The optional Pallas chunk-local backward (hand-derived adjoint) through the whole op."""
    B, T = 2, 150
    arrs, wo, ws = _inputs(41, B, T, 2, DK, DV)
    seg = _segments(B, T, 43)
    q, k, v, g, beta, h0 = (jnp.asarray(x) for x in arrs)

    def f(*a):
        return gated_delta_rule_pallas(*a[:5], initial_state=a[5], output_final_state=True,
                                       segment_ids=jnp.asarray(seg), interpret="plain", backend="gpu",
                                       local_bwd="pallas")

    @jax.jit
    def fwd_bwd(*a):
        (o, ht), vjp = jax.vjp(f, *a)
        return o, ht, vjp((jnp.asarray(wo), jnp.asarray(ws)))

    o, ht, grads = _fast_compile(fwd_bwd, q, k, v, g, beta, h0)
    _check((np.asarray(o), np.asarray(ht), [np.asarray(x) for x in grads]),
           _oracle(arrs, wo, ws, DK ** -0.5, seg=seg), F32_TOL)


def test_gpu_kernels_bf16():
    arrs, wo, ws = _inputs(19, 1, 65, 2, DK, DV, dtype=jnp.bfloat16)
    seg = _segments(1, 65, 4)
    _check(_run(arrs, wo, ws, backend="gpu", interpret="plain", dtype=jnp.bfloat16, seg=seg),
           _oracle(arrs, wo, ws, DK ** -0.5, seg=seg), BF16_TOL)


@pytest.mark.parametrize("precision, local_bwd, kernels", [("highest", "xla", 6), ("tf32", "xla", 6),
                                                           ("highest", "pallas", 7)])
def test_gpu_kernels_lower_to_triton_for_cuda(precision, local_bwd, kernels):
    """Forward and backward lower for the CUDA platform without a GPU: every pallas_call
    body goes through the Pallas Triton lowering (6 kernels: local, state, output; local,
    dvl, dstate; 7 with the optional Pallas chunk-local backward). Compiling to PTX and the real shared-memory allocation need a GPU."""
    B, T, H, Dk, Dv = 1, 128, 2, 96, 256
    sd = lambda s, dt=jnp.bfloat16: jax.ShapeDtypeStruct(s, dt)
    args = [sd((B, T, H, Dk)), sd((B, T, H, Dk)), sd((B, T, H, Dv)), sd((B, T, H), jnp.float32),
            sd((B, T, H), jnp.float32)]

    def loss(*a):
        o, _ = gated_delta_rule_pallas(*a, interpret=False, backend="gpu", precision=precision,
                                       local_bwd=local_bwd, check_smem=False)
        return o.astype(jnp.float32).sum()

    text = jax.jit(jax.grad(loss, argnums=range(5))).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == kernels


def test_shared_memory_refused_before_launch():
    need = block_sizes.gdr_gpu_smem_bytes(96, 256)
    assert max(need.values()) <= 0.71 * block_sizes.HOPPER_SMEM_BYTES, need
    with pytest.raises(block_sizes.KernelResourceError, match=r"gdr_gpu_local_bwd"):
        block_sizes.check_gdr_gpu_smem(96, 256, local_bwd=True)      # the optional kernel: over
    block_sizes.check_gdr_gpu_smem(128, 256)
    with pytest.raises(block_sizes.KernelResourceError, match=r"gdr_gpu_output .*Dk 256.*shared memory"):
        block_sizes.check_gdr_gpu_smem(256, 256)
    # the Pallas entry point refuses before tracing any kernel (interpret=False, backend gpu)
    x = jnp.zeros((1, 8, 1, 256))
    with pytest.raises(block_sizes.KernelResourceError, match=r"block_v"):
        gated_delta_rule_pallas(x, x, x, jnp.zeros((1, 8, 1)), jnp.zeros((1, 8, 1)), interpret=False,
                                backend="gpu")


def test_resource_exhausted_is_translated(monkeypatch):
    """A RESOURCE_EXHAUSTED from compiling/launching the kernels becomes a one-line error
    naming the kernels, their block sizes and the resource (the H200 message of issue 10)."""
    import pallas_kernels.gdr as gdr

    def fail(*a, **k):
        raise RuntimeError("RESOURCE_EXHAUSTED: Shared memory size limit exceeded: requested 311296, "
                           "available: 232448")

    monkeypatch.setattr(gdr, "_core", fail)
    x = jnp.zeros((1, 8, 1, 16))
    with pytest.raises(block_sizes.KernelResourceError,
                       match=r"gpu kernels, chunk 64, Dk 16, Dv 16, value blocks .*Shared memory size limit"):
        gated_delta_rule_pallas(x, x, x, jnp.zeros((1, 8, 1)), jnp.zeros((1, 8, 1)), interpret="plain",
                                backend="gpu")
