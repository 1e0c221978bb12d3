"""gated_delta_rule vs outside oracles: FLA's naive recurrence and transformers' Qwen3-Next torch refs.

Tolerances: float32 relative error (max |err| / max |ref|) <= 1e-4 (2e-4 for gradients,
which go through a 64-step triangular solve); bf16 inputs <= 2e-2 against the float32
oracle run on the same (bf16-rounded) inputs.
"""
import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # FLA warns that Triton has no GPU here
    naive_mod = pytest.importorskip("fla.ops.gated_delta_rule.naive")
    qwen3_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")

from jet_jax.ops import gated_delta_rule, gated_delta_rule_step  # noqa: E402

fla_naive = naive_mod.naive_recurrent_gated_delta_rule
# with FLA installed transformers routes these names to Triton kernels; take the pure-torch originals
hf_chunk = inspect.unwrap(qwen3_next.torch_chunk_gated_delta_rule)
hf_recurrent = inspect.unwrap(qwen3_next.torch_recurrent_gated_delta_rule)

IMPLS = ["recurrent", "chunked"]


def make_inputs(B, T, H, Dk, Dv, seed=0, g_lo=-1.0, g_hi=0.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, T, H, Dk))
    k = rng.normal(size=(B, T, H, Dk))
    v = rng.normal(size=(B, T, H, Dv))
    g = rng.uniform(g_lo, g_hi, size=(B, T, H))
    beta = rng.uniform(0.05, 1.0, size=(B, T, H))
    h0 = rng.normal(size=(B, H, Dk, Dv)) * 0.5
    return [a.astype(dtype) for a in (q, k, v, g, beta)] + [h0.astype(np.float32)]


def torch_l2norm(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def t(x, grad=False):
    return torch.tensor(np.asarray(x, np.float32), requires_grad=grad)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T", [1, 63, 64, 65, 300])
def test_forward_vs_fla_naive(impl, T):
    q, k, v, g, beta, h0 = make_inputs(2, T, 2, 16, 32, seed=T)
    # FLA's naive ref does not normalise q/k: hand it normalised ones and switch ours off
    qn, kn = torch_l2norm(t(q)), torch_l2norm(t(k))
    o_ref, s_ref = fla_naive(qn, kn, t(v), t(beta), t(g), initial_state=t(h0), output_final_state=True)
    o, s = gated_delta_rule(
        qn.numpy(), kn.numpy(), v, g, beta, initial_state=h0, output_final_state=True,
        use_qk_l2norm=False, implementation=impl,
    )
    assert o.dtype == jnp.float32 and o.shape == v.shape and s.shape == h0.shape
    assert rel_err(o, o_ref) < 1e-4
    assert rel_err(s, s_ref) < 1e-4


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("oracle", ["chunk", pytest.param("recurrent", marks=pytest.mark.slow)])
def test_forward_vs_transformers_with_l2norm(impl, oracle):
    q, k, v, g, beta, h0 = make_inputs(1, 130, 3, 16, 24, seed=1)
    fn = hf_chunk if oracle == "chunk" else hf_recurrent
    o_ref, s_ref = fn(
        t(q), t(k), t(v), t(g), t(beta), initial_state=t(h0), output_final_state=True, use_qk_l2norm_in_kernel=True
    )
    o, s = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, implementation=impl)
    assert rel_err(o, o_ref) < 1e-4
    assert rel_err(s, s_ref) < 1e-4


@pytest.mark.parametrize("impl", IMPLS)
def test_dk_ne_dv_and_custom_scale(impl):
    q, k, v, g, beta, h0 = make_inputs(1, 65, 2, 96, 256, seed=2)
    qn, kn = torch_l2norm(t(q)), torch_l2norm(t(k))
    o_ref, s_ref = fla_naive(qn, kn, t(v), t(beta), t(g), scale=0.3, initial_state=t(h0), output_final_state=True)
    o, s = gated_delta_rule(q, k, v, g, beta, scale=0.3, initial_state=h0, output_final_state=True, implementation=impl)
    assert o.shape == (1, 65, 2, 256)
    assert rel_err(o, o_ref) < 1e-4
    assert rel_err(s, s_ref) < 1e-4


def test_no_initial_state_and_no_final_state():
    q, k, v, g, beta, _ = make_inputs(1, 70, 2, 8, 8, seed=3)
    o_ref, _ = hf_chunk(t(q), t(k), t(v), t(g), t(beta), use_qk_l2norm_in_kernel=True)
    for impl in IMPLS + ["auto"]:
        o, s = gated_delta_rule(q, k, v, g, beta, implementation=impl)
        assert s is None
        assert rel_err(o, o_ref) < 1e-4


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("g_range", [(-20.0, -20.0), (-1e-6, 0.0), pytest.param((-30.0, 0.0), marks=pytest.mark.slow)])
def test_extreme_decay_finite(impl, g_range):
    q, k, v, g, beta, h0 = make_inputs(1, 130, 2, 16, 16, seed=4, g_lo=g_range[0], g_hi=g_range[1])
    o_ref, s_ref = hf_recurrent(
        t(q), t(k), t(v), t(g), t(beta), initial_state=t(h0), output_final_state=True, use_qk_l2norm_in_kernel=True
    )

    def loss(*a):
        o, s = gated_delta_rule(*a[:5], initial_state=a[5], output_final_state=True, implementation=impl)
        return (o**2).sum() + (s**2).sum(), (o, s)

    grads, (o, s) = jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5), has_aux=True)(q, k, v, g, beta, h0)
    for x in (o, s, *grads):
        assert np.isfinite(np.asarray(x)).all()
    assert rel_err(o, o_ref) < 1e-4
    assert rel_err(s, s_ref) < 1e-4


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_inputs(impl):
    q, k, v, g, beta, h0 = make_inputs(1, 100, 2, 32, 32, seed=5)
    qb, kb, vb, gb, bb = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v, g, beta))
    as32 = lambda x: np.asarray(x.astype(jnp.float32))
    o_ref, s_ref = hf_chunk(
        *(t(as32(x)) for x in (qb, kb, vb, gb, bb)), initial_state=t(h0), output_final_state=True,
        use_qk_l2norm_in_kernel=True,
    )
    o, s = gated_delta_rule(qb, kb, vb, gb, bb, initial_state=h0, output_final_state=True, implementation=impl)
    assert o.dtype == jnp.bfloat16 and s.dtype == jnp.float32
    assert rel_err(o.astype(jnp.float32), o_ref) < 2e-2
    assert rel_err(s, s_ref) < 1e-4  # the state stays float32


# --------------------------------------------------------------------------- gradients


def _torch_grads(fn, arrays, weights, **kw):
    """Grad of sum(o * w_o) + sum(S * w_s) wrt (q, k, v, g, beta, h0) via torch autograd."""
    q, k, v, g, beta, h0 = (t(a, grad=True) for a in arrays)
    o, s = fn(q, k, v, g, beta, h0, **kw)
    ((o * t(weights[0])).sum() + (s * t(weights[1])).sum()).backward()
    return [x.grad.numpy() for x in (q, k, v, g, beta, h0)]


def _jax_grads(arrays, weights, **kw):
    def loss(*a):
        o, s = gated_delta_rule(*a[:5], initial_state=a[5], output_final_state=True, **kw)
        return (o * weights[0]).sum() + (s * weights[1]).sum()

    return jax.grad(loss, argnums=tuple(range(6)))(*arrays)


@pytest.mark.parametrize("impl", IMPLS)
def test_grads_vs_fla_naive(impl):
    arrays = make_inputs(1, 100, 2, 16, 24, seed=6)
    rng = np.random.default_rng(7)
    weights = (rng.normal(size=arrays[2].shape).astype(np.float32), rng.normal(size=arrays[5].shape).astype(np.float32))

    def fla(q, k, v, g, beta, h0):  # our l2norm is switched on: apply the same one outside FLA
        return fla_naive(torch_l2norm(q), torch_l2norm(k), v, beta, g, initial_state=h0, output_final_state=True)

    ref = _torch_grads(fla, arrays, weights)
    got = _jax_grads(arrays, weights, implementation=impl)
    for name, a, b in zip("q k v g beta h0".split(), got, ref):
        assert rel_err(a, b) < 2e-4, name


@pytest.mark.parametrize("impl", IMPLS)
def test_grads_vs_transformers_chunk(impl):
    arrays = make_inputs(2, 65, 2, 16, 8, seed=8, g_lo=-3.0)
    rng = np.random.default_rng(9)
    weights = (rng.normal(size=arrays[2].shape).astype(np.float32), rng.normal(size=arrays[5].shape).astype(np.float32))

    def hf(q, k, v, g, beta, h0):
        return hf_chunk(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)

    ref = _torch_grads(hf, arrays, weights)
    got = _jax_grads(arrays, weights, implementation=impl)
    for name, a, b in zip("q k v g beta h0".split(), got, ref):
        assert rel_err(a, b) < 2e-4, name


# --------------------------------------------------------------------------- packed documents


def _packed_case(seed=10):
    # boundaries mid-chunk, exactly at a chunk edge (64), a one-token document, and an id
    # that comes back later (still a new document)
    lengths = [30, 34, 1, 70, 5, 60]
    ids = [0, 1, 2, 3, 1, 7]
    T = sum(lengths)
    arrays = make_inputs(2, T, 2, 8, 16, seed=seed)
    seg = np.concatenate([np.full(n, i) for n, i in zip(lengths, ids)])
    seg = np.stack([seg, np.zeros_like(seg)])  # row 1: a single document
    return arrays, seg, lengths


@pytest.mark.parametrize("impl", IMPLS)
def test_segment_ids_equal_separate_documents(impl):
    (q, k, v, g, beta, h0), seg, lengths = _packed_case()
    o, s = gated_delta_rule(
        q, k, v, g, beta, initial_state=h0, output_final_state=True, segment_ids=seg, implementation=impl
    )
    # row 0, document by document through the outside oracle; initial_state only for the first
    start = 0
    for i, n in enumerate(lengths):
        sl = slice(start, start + n)
        init = t(h0[:1]) if i == 0 else None
        o_ref, s_ref = hf_recurrent(
            *(t(x[:1, sl]) for x in (q, k, v, g, beta)), initial_state=init, output_final_state=True,
            use_qk_l2norm_in_kernel=True,
        )
        assert rel_err(o[:1, sl], o_ref) < 1e-4, f"document {i}"
        start += n
    assert rel_err(s[:1], s_ref) < 1e-4
    # row 1 is one document: same as no segment_ids
    o1, s1 = gated_delta_rule(*(x[1:] for x in (q, k, v, g, beta)), initial_state=h0[1:], output_final_state=True)
    assert rel_err(o[1:], o1) < 1e-5 and rel_err(s[1:], s1) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_segment_ids_grads_equal_separate_documents(impl):
    (q, k, v, g, beta, h0), seg, lengths = _packed_case(seed=11)
    arrays = [x[:1] for x in (q, k, v, g, beta)] + [h0[:1]]
    w = np.random.default_rng(12).normal(size=arrays[2].shape).astype(np.float32)

    def packed(*a):
        o, _ = gated_delta_rule(*a[:5], initial_state=a[5], segment_ids=seg[:1], implementation=impl)
        return (o * w).sum()

    got = jax.grad(packed, argnums=tuple(range(6)))(*arrays)
    # oracle: each document alone through transformers' recurrent ref, grads by torch autograd
    tq, tk, tv, tg, tb, th0 = (t(x, grad=True) for x in arrays)
    outs, start = [], 0
    for i, n in enumerate(lengths):
        sl = slice(start, start + n)
        o, _ = hf_recurrent(tq[:, sl], tk[:, sl], tv[:, sl], tg[:, sl], tb[:, sl],
                            initial_state=th0 if i == 0 else None, use_qk_l2norm_in_kernel=True)
        outs.append(o)
        start += n
    (torch.cat(outs, 1) * t(w)).sum().backward()
    for name, a, b in zip("q k v g beta h0".split(), got, (tq, tk, tv, tg, tb, th0)):
        assert rel_err(a, b.grad.numpy()) < 2e-4, name


# --------------------------------------------------------------------------- decode step


def test_step_matches_full_op():
    q, k, v, g, beta, h0 = make_inputs(2, 12, 3, 16, 8, seed=13)
    o_full, s_full = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    s = jnp.asarray(h0)
    outs = []
    for i in range(q.shape[1]):
        o_t, s = gated_delta_rule_step(q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i], s)
        outs.append(o_t)
    assert rel_err(jnp.stack(outs, 1), o_full) < 1e-5
    assert rel_err(s, s_full) < 1e-5
    assert s.dtype == jnp.float32


@pytest.mark.parametrize("g_range", [(-1.0, 0.0), (-8.0, -3.0)])
def test_fused_step_matches_fla_naive_and_reference_step(g_range):
    """Decoding token by token with the fused step (the state read once per step) gives FLA's
    naive recurrence, and each step equals the reference step, over 40 steps (rounding could
    drift across steps), Dk != Dv, with mild and strong decay."""
    q, k, v, g, beta, h0 = make_inputs(3, 40, 2, 24, 40, seed=17, g_lo=g_range[0], g_hi=g_range[1])
    s_fused = s_ref = jnp.asarray(h0)
    outs = []
    for i in range(q.shape[1]):
        x = (q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i])
        o_f, s_fused = gated_delta_rule_step(*x, s_fused, implementation="fused")
        o_r, s_ref = gated_delta_rule_step(*x, s_ref, implementation="recurrent")
        assert rel_err(o_f, o_r) < 1e-5 and rel_err(s_fused, s_ref) < 1e-5, i
        outs.append(o_f)
    o_fla, s_fla = fla_naive(torch_l2norm(t(q)), torch_l2norm(t(k)), t(v), t(beta), t(g),
                             initial_state=t(h0), output_final_state=True)
    assert rel_err(jnp.stack(outs, 1), o_fla.numpy()) < 1e-4
    assert rel_err(s_fused, s_fla.numpy()) < 1e-4


def test_fused_step_bf16_inputs():
    """bf16 q/k/v (as a bf16 model decodes): the fused step's output and f32 state against the
    reference step on the same inputs."""
    q, k, v, g, beta, h0 = make_inputs(2, 1, 3, 32, 16, seed=18)
    x = [jnp.asarray(a[:, 0], jnp.bfloat16) for a in (q, k, v)] + [g[:, 0], beta[:, 0]]
    o_f, s_f = gated_delta_rule_step(*x, h0, implementation="fused")
    o_r, s_r = gated_delta_rule_step(*x, h0, implementation="recurrent")
    assert o_f.dtype == jnp.bfloat16 and s_f.dtype == jnp.float32
    assert rel_err(o_f.astype(jnp.float32), o_r.astype(jnp.float32)) < 1e-2
    assert rel_err(s_f, s_r) < 1e-5


# --------------------------------------------------------------------------- errors


def test_errors():
    q, k, v, g, beta, h0 = make_inputs(1, 5, 2, 4, 6)
    with pytest.raises(ValueError, match=r"k shape .* must equal q shape"):
        gated_delta_rule(q, k[..., :3], v, g, beta)
    with pytest.raises(ValueError, match=r"v must be \[B, T, H, Dv\]"):
        gated_delta_rule(q, k, v[:, :4], g, beta)
    with pytest.raises(ValueError, match=r"g must be \[B, T, H\]"):
        gated_delta_rule(q, k, v, g[..., None], beta)
    with pytest.raises(ValueError, match=r"beta must be \[B, T, H\]"):
        gated_delta_rule(q, k, v, g, beta[:, :, :1])
    with pytest.raises(ValueError, match=r"q must be \[B, T, H, Dk\]"):
        gated_delta_rule(q[0], k[0], v, g, beta)
    with pytest.raises(ValueError, match=r"initial_state must be \[B, H, Dk, Dv\]"):
        gated_delta_rule(q, k, v, g, beta, initial_state=h0[..., :5])
    with pytest.raises(ValueError, match=r"segment_ids must be \[B, T\]"):
        gated_delta_rule(q, k, v, g, beta, segment_ids=np.zeros((1, 4), np.int32))
    with pytest.raises(ValueError, match=r"segment_ids must be integer"):
        gated_delta_rule(q, k, v, g, beta, segment_ids=np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match=r"q must be floating point"):
        gated_delta_rule(q.astype(np.int32), k, v, g, beta)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=r"remat_chunks must be a positive int or None"):
            gated_delta_rule(q, k, v, g, beta, implementation="chunked", remat_chunks=bad)
    with pytest.raises(ValueError, match=r"unknown implementation 'fast'"):
        gated_delta_rule(q, k, v, g, beta, implementation="fast")
    with pytest.raises(ValueError, match=r"gated_delta_rule_step: unknown implementation 'chunked'"):
        gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], h0, implementation="chunked")
    with pytest.raises(ValueError, match=r"q_t must be \[B, H, Dk\]"):
        gated_delta_rule_step(q, k[:, 0], v[:, 0], g[:, 0], beta[:, 0], h0)
    with pytest.raises(ValueError, match=r"initial_state must be \[B, H, Dk, Dv\]"):
        gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], h0[:, :1])


def test_pallas_missing_is_a_clear_error():
    try:
        import pallas_kernels.gdr  # noqa: F401
    except ImportError:
        q, k, v, g, beta, _ = make_inputs(1, 5, 2, 4, 6)
        with pytest.raises(ImportError, match=r"pallas_kernels\.gdr"):
            gated_delta_rule(q, k, v, g, beta, implementation="pallas")
    else:
        pytest.skip("pallas_kernels.gdr is importable; its own tests cover it")


@pytest.mark.parametrize("remat_chunks", [8, 5, None])
def test_chunked_across_recomputation_groups_matches_fla_naive(remat_chunks):
    """T = 1100 is 18 chunks: three groups of 8 (the default; the last partial), four of 5, or
    one group (None): outputs, state and all gradients against FLA's naive recurrence, with
    packed documents crossing group edges."""
    arrays = make_inputs(1, 1100, 1, 8, 8, seed=21)
    rng = np.random.default_rng(22)
    weights = (rng.normal(size=arrays[2].shape).astype(np.float32), rng.normal(size=arrays[5].shape).astype(np.float32))
    ref = _torch_grads(lambda q, k, v, g, beta, h0: fla_naive(torch_l2norm(q), torch_l2norm(k), v, beta, g,
                                                               initial_state=h0, output_final_state=True),
                       arrays, weights)
    got = _jax_grads(arrays, weights, implementation="chunked", remat_chunks=remat_chunks)
    for name, a, b in zip("q k v g beta h0".split(), got, ref):
        assert rel_err(a, b) < 2e-4, name
    seg = np.repeat([1, 2, 3], [500, 30, 570])[None]  # boundaries at 500 (inside group 0) and 530
    o, _ = gated_delta_rule(*arrays[:5], segment_ids=jnp.asarray(seg), implementation="chunked",
                            remat_chunks=remat_chunks)
    o_ref, _ = gated_delta_rule(*arrays[:5], segment_ids=jnp.asarray(seg), implementation="recurrent")
    assert rel_err(o, o_ref) < 1e-4


@pytest.mark.parametrize("impl", IMPLS)
def test_single_token_with_segment_ids_continues_state(impl):
    """T = 1 with segment ids (a one-token prefill) continues the initial state."""
    q, k, v, g, beta, h0 = make_inputs(2, 1, 2, 8, 8, seed=31)
    seg = jnp.ones((2, 1), jnp.int32)
    o, s = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                            segment_ids=seg, implementation=impl)
    o_ref, s_ref = gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], h0)
    assert rel_err(o[:, 0], o_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5


@pytest.mark.parametrize("C", [1, 2, 48, 64])
def test_ut_inverse_matches_numpy(C):
    """The chunked form's (I + A)^-1 (A strictly lower, as beta * decayed k.k^T builds it from
    nearly parallel keys, the case a doubling series gets wrong) against numpy's float64
    inverse; C = 48 goes through the padding to 64. Relative error 1e-5."""
    import importlib

    inverse = importlib.import_module("jet_jax.ops.gated_delta_rule")._unit_lower_inverse
    rng = np.random.default_rng(C)
    k = rng.normal(size=(3, 1, 16)) + 0.1 * rng.normal(size=(3, C, 16))  # nearly parallel rows
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    beta = rng.uniform(0.5, 1.0, size=(3, C, 1))
    A = np.tril(beta * (k @ np.swapaxes(k, -1, -2)), -1)
    got = np.asarray(inverse(jnp.asarray(A, jnp.float32)), np.float64)
    want = np.linalg.inv(np.eye(C) + A)
    assert rel_err(got, want) < 1e-5, rel_err(got, want)
