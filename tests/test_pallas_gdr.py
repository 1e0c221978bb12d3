"""Pallas chunked gated delta rule (pallas_kernels.gdr) against outside oracles, on CPU.

Oracle: FLA's `naive_recurrent_gated_delta_rule` (torch, float32 token-by-token
recurrence; it does not l2-normalise, so q, k are normalised in torch first) and torch
autograd through it for every gradient. Packed documents: the oracle is run per document
(the first one from the initial state, later ones from zero) and concatenated, which is
what "reset the state at each document start" means. The jet_jax recurrent reference is
compared as well when it is importable.

Kernels run in interpret mode: "plain" (Pallas' generic interpreter, which NaN-fills
output buffers, so an all-finite result proves every output element was written) for the
shape sweep, and TPU semantics (`pltpu.InterpretParams`) for the TPU kernel on a
representative case. Both the TPU kernel and the GPU (Triton-route) kernel body are run.

Tolerances: float32 max|err| / max|ref| <= 1e-4 (outputs, final state, all gradients);
bfloat16 inputs: 2e-2 (bf16 has 8 mantissa bits; the oracle sees the same bf16-rounded
inputs in float32, so the bound covers only the bf16 output/gradient rounding and f32
reassociation).
"""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy
torch = pytest.importorskip("torch")
naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")

from pallas_kernels.gdr import gated_delta_rule_pallas  # noqa: E402

F32_TOL = 1e-4
BF16_TOL = 2e-2


# Interpret-mode kernels become large XLA CPU programs; the LLVM optimisation passes
# dominate their compile time and buy nothing for these tiny shapes.
_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _fast_compile(fn, *args):
    """Run jitted fn(*args), compiled with cheap XLA CPU options (test speed only)."""
    return fn.lower(*args).compile(compiler_options=_FAST)(*args)


def _inputs(seed, B, T, H, Dk, Dv, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, T, H, Dk)).astype(np.float32)
    k = rng.standard_normal((B, T, H, Dk)).astype(np.float32)
    v = rng.standard_normal((B, T, H, Dv)).astype(np.float32)
    g = np.log(rng.uniform(0.8, 1.0, (B, T, H))).astype(np.float32)    # realistic decays
    beta = rng.uniform(0.0, 1.0, (B, T, H)).astype(np.float32)
    h0 = rng.standard_normal((B, H, Dk, Dv)).astype(np.float32)
    wo = rng.standard_normal((B, T, H, Dv)).astype(np.float32)       # loss weights
    ws = rng.standard_normal((B, H, Dk, Dv)).astype(np.float32)
    q, k, v = (jnp.asarray(x, dtype).astype(np.float32) for x in (q, k, v))  # bf16-round
    return [np.asarray(x) for x in (q, k, v, g, beta, h0)], wo, ws


def _segments(B, T, seed):
    rng = np.random.default_rng(seed)
    seg = np.zeros((B, T), np.int32)
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(1, T), size=min(3, T - 1), replace=False))
        for c in cuts:
            seg[b, c:] += 1
    return seg


def _oracle(arrs, wo, ws, scale, seg=None, l2=True):
    """FLA naive recurrence (+ torch autograd): o, ht, grads of sum(o*wo)+sum(ht*ws)."""
    ts = [torch.tensor(x, dtype=torch.float64 if False else torch.float32, requires_grad=True)
          for x in arrs]
    q, k, v, g, beta, h0 = ts

    def nrm(x):
        return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6) if l2 else x

    qn, kn = nrm(q), nrm(k)
    B, T = q.shape[:2]
    os_, hts = [], []
    for b in range(B):
        bounds = [0, T] if seg is None else [0, *np.flatnonzero(np.diff(seg[b])) + 1, T]
        h = h0[b:b + 1]
        parts = []
        for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
            init = h if i == 0 else torch.zeros_like(h0[b:b + 1])
            o, h = naive.naive_recurrent_gated_delta_rule(
                qn[b:b + 1, s:e], kn[b:b + 1, s:e], v[b:b + 1, s:e], beta[b:b + 1, s:e],
                g[b:b + 1, s:e], scale=scale, initial_state=init, output_final_state=True)
            parts.append(o)
        os_.append(torch.cat(parts, 1))
        hts.append(h)
    o, ht = torch.cat(os_, 0), torch.cat(hts, 0)
    ((o * torch.tensor(wo)).sum() + (ht * torch.tensor(ws)).sum()).backward()
    return o.detach().numpy(), ht.detach().numpy(), [t.grad.numpy() for t in ts]


def _run(arrs, wo, ws, *, backend, interpret, dtype=np.float32, seg=None, l2=True,
         scale=None):
    q, k, v, g, beta, h0 = (jnp.asarray(x) for x in arrs)
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
    segj = None if seg is None else jnp.asarray(seg)

    def f(q, k, v, g, beta, h0):
        o, ht = gated_delta_rule_pallas(q, k, v, g, beta, scale=scale, initial_state=h0,
                                        output_final_state=True, segment_ids=segj,
                                        use_qk_l2norm=l2, interpret=interpret,
                                        backend=backend)
        return o, ht

    @jax.jit        # one compile for the wrapper ops instead of op-by-op dispatch
    def fwd_bwd(*args):
        (o, ht), vjp = jax.vjp(f, *args)
        return o, ht, vjp((jnp.asarray(wo).astype(o.dtype), jnp.asarray(ws)))

    o, ht, grads = _fast_compile(fwd_bwd, q, k, v, g, beta, h0)
    return (np.asarray(o.astype(jnp.float32)), np.asarray(ht),
            [np.asarray(x.astype(jnp.float32)) for x in grads])


def _rel(a, r):
    return float(np.max(np.abs(a - r)) / max(np.max(np.abs(r)), 1e-30))


def _check(got, want, tol):
    names = ["o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dh0"]
    o, ht, grads = got
    ro, rht, rgrads = want
    for name, a, r in zip(names, [o, ht, *grads], [ro, rht, *rgrads]):
        assert a.shape == r.shape, (name, a.shape, r.shape)
        assert np.all(np.isfinite(a)), f"{name}: non-finite (unwritten output?)"
        assert _rel(a, r) <= tol, f"{name}: rel err {_rel(a, r):.3g} > {tol}"


@pytest.mark.parametrize("T", [1, 63, 64, 65, 130])
def test_tpu_kernel_matches_fla_small(T):
    arrs, wo, ws = _inputs(T, 1, T, 2, 16, 32)
    _check(_run(arrs, wo, ws, backend="tpu", interpret="plain"),
           _oracle(arrs, wo, ws, 16 ** -0.5), F32_TOL)


@pytest.mark.slow      # the GPU body is covered by the segment, 96/256 and bf16 tests
@pytest.mark.parametrize("T", [1, 63, 64, 65, 130])
def test_gpu_kernel_body_matches_fla_small(T):
    arrs, wo, ws = _inputs(T + 100, 1, T, 2, 16, 32)
    _check(_run(arrs, wo, ws, backend="gpu", interpret="plain"),
           _oracle(arrs, wo, ws, 16 ** -0.5), F32_TOL)


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_model_head_dims_96_256(backend):
    # Dk=96 exercises the non-128 key dim (TPU: full-dim block; GPU: zero-pad to 128) and
    # Dv=256 the multi-value-block GPU grid (4 blocks of 64).
    arrs, wo, ws = _inputs(7, 1, 65, 1, 96, 256)
    _check(_run(arrs, wo, ws, backend=backend, interpret="plain"),
           _oracle(arrs, wo, ws, 96 ** -0.5), F32_TOL)


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_segment_ids_reset_state(backend):
    B, T = 2, 130
    arrs, wo, ws = _inputs(11, B, T, 2, 16, 32)
    seg = _segments(B, T, 3)
    _check(_run(arrs, wo, ws, backend=backend, interpret="plain", seg=seg),
           _oracle(arrs, wo, ws, 16 ** -0.5, seg=seg), F32_TOL)


def test_tpu_kernel_tpu_interpret_semantics():
    """The TPU kernel under pltpu.InterpretParams (TPU grid order, VMEM scratch)."""
    B, T = 1, 130
    arrs, wo, ws = _inputs(13, B, T, 2, 16, 32)
    seg = _segments(B, T, 5)
    _check(_run(arrs, wo, ws, backend="tpu", interpret=True, seg=seg),
           _oracle(arrs, wo, ws, 16 ** -0.5, seg=seg), F32_TOL)


def test_no_l2norm_custom_scale():
    arrs, wo, ws = _inputs(17, 1, 65, 2, 16, 32)
    arrs = [np.array(x) for x in arrs]
    arrs[0] *= 0.2      # keep the un-normalised recurrence well conditioned
    arrs[1] /= np.linalg.norm(arrs[1], axis=-1, keepdims=True)
    _check(_run(arrs, wo, ws, backend="tpu", interpret="plain", l2=False, scale=0.5),
           _oracle(arrs, wo, ws, 0.5, l2=False), F32_TOL)


@pytest.mark.parametrize("backend", ["tpu", "gpu"])
def test_bf16_inputs(backend):
    arrs, wo, ws = _inputs(19, 1, 65, 2, 32, 64, dtype=jnp.bfloat16)
    _check(_run(arrs, wo, ws, backend=backend, interpret="plain", dtype=jnp.bfloat16),
           _oracle(arrs, wo, ws, 32 ** -0.5), BF16_TOL)


def test_without_initial_or_final_state():
    arrs, wo, ws = _inputs(23, 1, 65, 2, 16, 32)
    q, k, v, g, beta, _ = (jnp.asarray(x) for x in arrs)
    o, ht = gated_delta_rule_pallas(q, k, v, g, beta, interpret="plain")
    assert ht is None
    arrs = [*arrs[:5], np.zeros_like(arrs[5])]
    ro, _, _ = _oracle(arrs, wo, ws, 16 ** -0.5)
    assert _rel(np.asarray(o), ro) <= F32_TOL


def test_matches_jet_jax_reference():
    ref = pytest.importorskip("jet_jax.ops.gated_delta_rule")
    B, T = 2, 130
    arrs, wo, ws = _inputs(29, B, T, 2, 16, 32)
    seg = jnp.asarray(_segments(B, T, 7))
    q, k, v, g, beta, h0 = (jnp.asarray(x) for x in arrs)
    kw = dict(initial_state=h0, output_final_state=True, segment_ids=seg)

    def loss(fn, *a):
        o, ht = fn(*a)
        return jnp.sum(o * wo) + jnp.sum(ht * ws)

    mine = lambda *a: gated_delta_rule_pallas(*a, interpret="plain", **kw)
    theirs = lambda *a: ref.gated_delta_rule(*a, implementation="recurrent", **kw)
    outs = (_fast_compile(jax.jit(fn), q, k, v, g, beta) for fn in (mine, theirs))
    for a, r in zip(*outs):
        assert _rel(np.asarray(a), np.asarray(r)) <= F32_TOL
    args = (q, k, v, g, beta)
    ga = _fast_compile(jax.jit(jax.grad(lambda *a: loss(mine, *a), argnums=range(5))), *args)
    gr = _fast_compile(jax.jit(jax.grad(lambda *a: loss(theirs, *a), argnums=range(5))), *args)
    for a, r in zip(ga, gr):
        assert _rel(np.asarray(a), np.asarray(r)) <= F32_TOL


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tpu", "gpu"])
@pytest.mark.parametrize("T", [63, 64, 65, 130])
def test_model_dims_sweep_slow(backend, T):
    arrs, wo, ws = _inputs(31 + T, 2, T, 2, 128, 256)
    seg = _segments(2, T, T)
    _check(_run(arrs, wo, ws, backend=backend, interpret="plain", seg=seg),
           _oracle(arrs, wo, ws, 128 ** -0.5, seg=seg), F32_TOL)


@pytest.mark.slow
def test_tpu_interpret_model_dims_slow():
    arrs, wo, ws = _inputs(37, 1, 130, 1, 96, 256)
    _check(_run(arrs, wo, ws, backend="tpu", interpret=True),
           _oracle(arrs, wo, ws, 96 ** -0.5), F32_TOL)


def test_tpu_kernels_lower_to_mosaic_for_tpu():
    """Forward and backward lower for the TPU platform without a TPU (the Mosaic lowering of
    both kernel bodies); compiling them for a chip and running them needs a TPU."""
    B, T, H, Dk, Dv = 1, 128, 2, 96, 256
    sd = lambda s, dt=jnp.bfloat16: jax.ShapeDtypeStruct(s, dt)
    args = [sd((B, T, H, Dk)), sd((B, T, H, Dk)), sd((B, T, H, Dv)), sd((B, T, H), jnp.float32),
            sd((B, T, H), jnp.float32)]

    def loss(*a):
        o, _ = gated_delta_rule_pallas(*a, interpret=False, backend="tpu")
        return o.astype(jnp.float32).sum()

    text = jax.jit(jax.grad(loss, argnums=range(5))).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 2
