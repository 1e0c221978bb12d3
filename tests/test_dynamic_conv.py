"""dynamic_causal_conv vs torch oracles written independently here: an unfold over a
left-padded sequence, and the release's decode loop (roll the [B, C, W] cache, put the
new input at W-1, sum with the kernel). float32 tolerance 1e-5 relative; bf16 1e-2."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from jet_jax.ops import dynamic_causal_conv, dynamic_causal_conv_step  # noqa: E402


def _impls():
    try:
        import pallas_kernels.dynamic_conv  # noqa: F401
    except ImportError:
        return ["reference"]
    return ["reference", "pallas"]


IMPLS = _impls()


def make(B, T, C, W, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, T, C)).astype(np.float32), rng.normal(size=(B, T, C, W)).astype(np.float32)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def torch_unfold_conv(x, kern, silu=False):
    """x: [B, T, C]; kern: [B, T, C, W]; zero history."""
    x, kern = torch.tensor(x), torch.tensor(kern)
    W = kern.shape[-1]
    xp = F.pad(x, (0, 0, W - 1, 0))  # W-1 zeros before the first token
    win = xp.unfold(1, W, 1)  # [B, T, C, W], last tap = current token
    y = (win * kern).sum(-1)
    return (F.silu(y) if silu else y).numpy()


def torch_decode_loop(x, kern, state, silu=False):
    """The release's decode cache semantics, token by token."""
    x, kern, state = torch.tensor(x), torch.tensor(kern), torch.tensor(state)
    ys = []
    for i in range(x.shape[1]):
        state = torch.cat([state[..., 1:], x[:, i, :, None]], dim=-1)
        y = (state * kern[:, i]).sum(-1)
        ys.append(F.silu(y) if silu else y)
    return torch.stack(ys, 1).numpy(), state.numpy()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T,W,act", [(1, 4, None), (3, 4, "silu"), (17, 4, None), (17, 4, "silu"), (9, 1, "silu"), (12, 3, None)])
def test_vs_torch_unfold(impl, T, W, act):
    x, kern = make(2, T, 5, W, seed=T * 10 + W)
    y = dynamic_causal_conv(x, kern, activation=act, implementation=impl)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert rel_err(y, torch_unfold_conv(x, kern, silu=act == "silu")) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16(impl):
    x, kern = make(2, 20, 8, 4, seed=1)
    xb, kb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(kern, jnp.bfloat16)
    y = dynamic_causal_conv(xb, kb, activation="silu", implementation=impl)
    assert y.dtype == jnp.bfloat16
    ref = torch_unfold_conv(np.asarray(xb, np.float32), np.asarray(kb, np.float32), silu=True)
    assert rel_err(y.astype(jnp.float32), ref) < 1e-2


@pytest.mark.parametrize("impl", IMPLS)
def test_conv_state_matches_decode_loop(impl):
    x, kern = make(2, 7, 6, 4, seed=2)
    state0 = np.random.default_rng(3).normal(size=(2, 6, 4)).astype(np.float32)
    y, st = dynamic_causal_conv(
        x, kern, conv_state=state0, output_final_state=True, activation="silu", implementation=impl
    )
    y_ref, st_ref = torch_decode_loop(x, kern, state0, silu=True)
    assert rel_err(y, y_ref) < 1e-5
    np.testing.assert_array_equal(np.asarray(st), st_ref)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", [2, 4, 9])
def test_final_state_is_last_inputs_zero_filled(impl, T):
    x, kern = make(1, T, 3, 4, seed=T)
    _, st = dynamic_causal_conv(x, kern, output_final_state=True, implementation=impl)
    # no state passed: the loop starts from zeros
    _, st_ref = torch_decode_loop(x, kern, np.zeros((1, 3, 4), np.float32))
    np.testing.assert_array_equal(np.asarray(st), st_ref)


@pytest.mark.parametrize("impl", IMPLS)
def test_split_call_equals_one_call(impl):
    x, kern = make(2, 15, 4, 4, seed=4)
    y = dynamic_causal_conv(x, kern, implementation=impl)
    y1, st = dynamic_causal_conv(x[:, :2], kern[:, :2], output_final_state=True, implementation=impl)
    y2 = dynamic_causal_conv(x[:, 2:], kern[:, 2:], conv_state=st, implementation=impl)
    assert rel_err(jnp.concatenate([y1, y2], 1), y) < 1e-6


@pytest.mark.parametrize("impl", IMPLS)
def test_segment_ids_equal_separate_documents(impl):
    lengths, ids = [5, 1, 2, 9, 3], [4, 0, 1, 4, 9]  # id 4 comes back: still a new document
    T = sum(lengths)
    x, kern = make(1, T, 6, 4, seed=5)
    seg = np.concatenate([np.full(n, i) for n, i in zip(lengths, ids)])[None]
    state0 = np.random.default_rng(6).normal(size=(1, 6, 4)).astype(np.float32)
    y, st = dynamic_causal_conv(
        x, kern, segment_ids=seg, conv_state=state0, output_final_state=True, activation="silu", implementation=impl
    )
    start = 0
    for i, n in enumerate(lengths):
        sl = slice(start, start + n)
        init = state0 if i == 0 else np.zeros_like(state0)  # conv_state belongs to the first document
        y_ref, st_ref = torch_decode_loop(x[:, sl], kern[:, sl], init, silu=True)
        assert rel_err(y[:, sl], y_ref) < 1e-5, f"document {i}"
        start += n
    # the final state only holds the last document's inputs
    np.testing.assert_array_equal(np.asarray(st), st_ref)


def test_grads_vs_torch():
    x, kern = make(2, 11, 3, 4, seed=7)
    w = np.random.default_rng(8).normal(size=x.shape).astype(np.float32)
    gx, gk = jax.grad(lambda a, b: (dynamic_causal_conv(a, b, activation="silu") * w).sum(), argnums=(0, 1))(x, kern)
    tx, tk = torch.tensor(x, requires_grad=True), torch.tensor(kern, requires_grad=True)
    xp = F.pad(tx, (0, 0, 3, 0))
    (F.silu((xp.unfold(1, 4, 1) * tk).sum(-1)) * torch.tensor(w)).sum().backward()
    assert rel_err(gx, tx.grad.numpy()) < 1e-5
    assert rel_err(gk, tk.grad.numpy()) < 1e-5


def test_step_matches_full_op():
    x, kern = make(2, 6, 5, 4, seed=9)
    state0 = np.random.default_rng(10).normal(size=(2, 5, 4)).astype(np.float32)
    y_full, st_full = dynamic_causal_conv(x, kern, conv_state=state0, output_final_state=True, activation="silu")
    st, ys = jnp.asarray(state0), []
    for i in range(x.shape[1]):
        y_t, st = dynamic_causal_conv_step(x[:, i], kern[:, i], st, activation="silu")
        ys.append(y_t)
    assert rel_err(jnp.stack(ys, 1), y_full) < 1e-6
    np.testing.assert_array_equal(np.asarray(st), np.asarray(st_full))


def test_errors():
    x, kern = make(1, 5, 3, 4)
    with pytest.raises(ValueError, match=r"x must be \[B, T, C\]"):
        dynamic_causal_conv(x[0], kern)
    with pytest.raises(ValueError, match=r"kernels must be \[B, T, C, W\]"):
        dynamic_causal_conv(x, kern[:, :4])
    with pytest.raises(ValueError, match=r"conv_state must be \[B, C, W\]"):
        dynamic_causal_conv(x, kern, conv_state=np.zeros((1, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"segment_ids must be \[B, T\]"):
        dynamic_causal_conv(x, kern, segment_ids=np.zeros((1, 6), np.int32))
    with pytest.raises(ValueError, match=r"segment_ids must be integer"):
        dynamic_causal_conv(x, kern, segment_ids=np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match=r"unknown activation 'relu'"):
        dynamic_causal_conv(x, kern, activation="relu")
    with pytest.raises(ValueError, match=r"unknown implementation 'fast'"):
        dynamic_causal_conv(x, kern, implementation="fast")
    with pytest.raises(ValueError, match=r"x_t must be \[B, C\]"):
        dynamic_causal_conv_step(x, kern[:, 0], np.zeros((1, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"conv_state must be \[B, C, W\]"):
        dynamic_causal_conv_step(x[:, 0], kern[:, 0], np.zeros((1, 3, 5), np.float32))


def test_pallas_missing_is_a_clear_error():
    if "pallas" in IMPLS:
        pytest.skip("pallas_kernels.dynamic_conv is importable; covered by the parametrised tests")
    x, kern = make(1, 5, 3, 4)
    with pytest.raises(ImportError, match=r"pallas_kernels\.dynamic_conv"):
        dynamic_causal_conv(x, kern, implementation="pallas")
