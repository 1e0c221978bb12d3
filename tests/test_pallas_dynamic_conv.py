"""Pallas dynamic causal convolution (pallas_kernels.dynamic_conv) against outside oracles.

Oracle: a direct torch implementation of the definition (section 2 of the reference)
written here, token by token over the taps,
    y[t, c] = act( sum_w kernels[t, c, w] * x[t - (W-1) + w, c] ),
with history from conv_state (or zeros) before the sequence and zero contributions from
other documents; gradients w.r.t. x, kernels and conv_state come from torch autograd.
The jet_jax XLA reference is compared too when importable.

Kernels run in interpret mode: "plain" (generic interpreter, NaN-filled output buffers,
so finite results prove every element is written) for the sweep; TPU semantics
(`pltpu.InterpretParams`) for a representative case. Tolerance: float32 max|err| /
max|ref| <= 1e-5 (W = 4 products, no accumulation depth); bf16 2e-2.
"""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy
torch = pytest.importorskip("torch")

from pallas_kernels.dynamic_conv import (  # noqa: E402
    dynamic_causal_conv_pallas, dynamic_causal_conv_step)

F32_TOL = 1e-5
BF16_TOL = 2e-2


# Interpret-mode kernels become large XLA CPU programs; the LLVM optimisation passes
# dominate their compile time and buy nothing for these tiny shapes.
_FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _fast_compile(fn, *args):
    """Run jitted fn(*args), compiled with cheap XLA CPU options (test speed only)."""
    return fn.lower(*args).compile(compiler_options=_FAST)(*args)


def _inputs(seed, B, T, C, W=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, C)).astype(np.float32)
    kern = rng.standard_normal((B, T, C, W)).astype(np.float32)
    state = rng.standard_normal((B, C, W)).astype(np.float32)
    wy = rng.standard_normal((B, T, C)).astype(np.float32)
    ws = rng.standard_normal((B, C, W)).astype(np.float32)
    return x, kern, state, wy, ws


def _segments(B, T, seed):
    rng = np.random.default_rng(seed)
    seg = np.zeros((B, T), np.int32)
    for b in range(B):
        for c in rng.choice(np.arange(1, T), size=min(3, T - 1), replace=False):
            seg[b, c:] += 1
    return seg


def _oracle(x, kern, state, wy, ws, seg, act):
    """torch definition + autograd: y, final_state, dx, dkern, dstate."""
    xt, kt, st = (torch.tensor(a, requires_grad=True) for a in (x, kern, state))
    B, T, C = x.shape
    W = kern.shape[-1]
    hist = st.transpose(1, 2)                                # [B, W, C], oldest first
    full = torch.cat([hist, xt], 1)                          # position p at index p + W
    doc = (np.zeros((B, T), np.int64) if seg is None
           else np.concatenate([[[0]] * B, np.cumsum(np.diff(seg, axis=1) != 0, 1)], 1))
    ys = []
    for t in range(T):
        acc = torch.zeros(B, C)
        for w in range(W):
            p = t - (W - 1) + w
            same = torch.tensor([(doc[b, t] == (doc[b, p] if p >= 0 else 0)) for b in range(B)])
            acc = acc + torch.where(same[:, None], kt[:, t, :, w] * full[:, p + W], 0.0)
        ys.append(torch.nn.functional.silu(acc) if act == "silu" else acc)
    y = torch.stack(ys, 1)
    # final state: last W inputs, entries from documents before the last one zeroed
    tail = []
    for j in range(W):
        p = T - W + j
        keep = torch.tensor([(doc[b, -1] == (doc[b, p] if p >= 0 else 0)) for b in range(B)])
        tail.append(torch.where(keep[:, None], full[:, p + W], 0.0))
    fs = torch.stack(tail, -1)                               # [B, C, W]
    ((y * torch.tensor(wy)).sum() + (fs * torch.tensor(ws)).sum()).backward()
    return [a.detach().numpy() for a in (y, fs, xt.grad, kt.grad, st.grad)]


def _run(x, kern, state, wy, ws, seg, act, interpret, dtype=jnp.float32):
    segj = None if seg is None else jnp.asarray(seg)

    @jax.jit
    def fwd_bwd(x, kern, state):
        def f(x, kern, state):
            return dynamic_causal_conv_pallas(x, kern, segment_ids=segj, conv_state=state,
                                              output_final_state=True, activation=act,
                                              interpret=interpret)
        (y, fs), vjp = jax.vjp(f, x, kern, state)
        return (y, fs, *vjp((jnp.asarray(wy).astype(y.dtype), jnp.asarray(ws).astype(fs.dtype))))

    out = _fast_compile(fwd_bwd, *(jnp.asarray(a).astype(dtype) for a in (x, kern, state)))
    return [np.asarray(a.astype(jnp.float32)) for a in out]


def _check(got, want, tol):
    for name, a, r in zip(["y", "final_state", "dx", "dkernels", "dconv_state"], got, want):
        assert a.shape == r.shape, (name, a.shape, r.shape)
        assert np.all(np.isfinite(a)), f"{name}: non-finite (unwritten output?)"
        err = np.max(np.abs(a - r)) / max(np.max(np.abs(r)), 1e-30)
        assert err <= tol, f"{name}: rel err {err:.3g} > {tol}"


@pytest.mark.parametrize("T,C,segs,act", [
    (1, 16, False, None), (3, 16, False, "silu"), (65, 24, True, "silu"),
    (130, 256, True, None), (300, 16, True, "silu"),     # 300: two 256-row time blocks
])
def test_matches_torch_definition(T, C, segs, act):
    B = 2
    x, kern, state, wy, ws = _inputs(T * 7 + C, B, T, C)
    seg = _segments(B, T, T) if segs else None
    _check(_run(x, kern, state, wy, ws, seg, act, "plain"),
           _oracle(x, kern, state, wy, ws, seg, act), F32_TOL)


def test_tpu_interpret_semantics():
    B, T, C = 1, 300, 128
    x, kern, state, wy, ws = _inputs(5, B, T, C)
    seg = _segments(B, T, 9)
    _check(_run(x, kern, state, wy, ws, seg, "silu", True),
           _oracle(x, kern, state, wy, ws, seg, "silu"), F32_TOL)


def test_bf16():
    x, kern, state, wy, ws = _inputs(3, 2, 65, 32)
    rt = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))
    x, kern, state = rt(x), rt(kern), rt(state)
    _check(_run(x, kern, state, wy, ws, None, "silu", "plain", dtype=jnp.bfloat16),
           _oracle(x, kern, state, wy, ws, None, "silu"), BF16_TOL)


def test_no_state_defaults_to_zero_history():
    x, kern, _, _, _ = _inputs(4, 1, 9, 16)
    y = dynamic_causal_conv_pallas(jnp.asarray(x), jnp.asarray(kern), interpret="plain")
    zeros = np.zeros((1, 16, 4), np.float32)
    ry = _oracle(x, kern, zeros, np.zeros_like(x), zeros, None, None)[0]
    np.testing.assert_allclose(np.asarray(y), ry, rtol=0, atol=F32_TOL * np.abs(ry).max())


def test_decode_steps_continue_prefill():
    """prefill(T0) then one-token steps == one conv over the whole sequence."""
    B, T, C, T0 = 2, 12, 16, 7
    x, kern, state, _, _ = _inputs(6, B, T, C)
    xj, kj, sj = jnp.asarray(x), jnp.asarray(kern), jnp.asarray(state)
    full = dynamic_causal_conv_pallas(xj, kj, conv_state=sj, activation="silu",
                                      interpret="plain")
    y0, st = dynamic_causal_conv_pallas(xj[:, :T0], kj[:, :T0], conv_state=sj,
                                        output_final_state=True, activation="silu",
                                        interpret="plain")
    steps = [y0]
    for t in range(T0, T):
        yt, st = dynamic_causal_conv_step(xj[:, t], kj[:, t], st, activation="silu")
        steps.append(yt[:, None])
    np.testing.assert_allclose(np.concatenate(steps, 1), np.asarray(full), rtol=0, atol=1e-5)


def test_matches_jet_jax_reference():
    ref = pytest.importorskip("jet_jax.ops.dynamic_conv")
    B, T, C = 2, 70, 16
    x, kern, state, wy, ws = _inputs(8, B, T, C)
    seg = jnp.asarray(_segments(B, T, 2))
    args = (jnp.asarray(x), jnp.asarray(kern))
    kw = dict(segment_ids=seg, conv_state=jnp.asarray(state), activation="silu")
    mine = dynamic_causal_conv_pallas(*args, interpret="plain", **kw)
    theirs = ref.dynamic_causal_conv(*args, **kw)      # default: XLA on CPU
    np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=0,
                               atol=F32_TOL * float(np.abs(np.asarray(theirs)).max()))


def test_kernel_lowers_to_mosaic_for_tpu():
    """Forward and backward lower for the TPU platform without a TPU (Mosaic lowering of the
    kernel bodies); compiling for a chip and running need a TPU."""
    args = [jax.ShapeDtypeStruct((1, 300, 256), jnp.bfloat16), jax.ShapeDtypeStruct((1, 300, 256, 4), jnp.bfloat16)]

    def loss(x, k):
        return dynamic_causal_conv_pallas(x, k, activation="silu", interpret=False).astype(jnp.float32).sum()

    text = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") >= 1
