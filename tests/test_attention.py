"""The attention op's implementations against its dense reference and jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jet_jax.ops.attention import cudnn_arguments, dot_product_attention, visibility_mask

B, T, H, KV, D = 2, 77, 4, 2, 16  # T is not a multiple of any block used below
TOL = dict(atol=2e-5, rtol=2e-5)


def _qkv(t=T, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(ks[0], (B, t, H, D)), jax.random.normal(ks[1], (B, t, KV, D)),
            jax.random.normal(ks[2], (B, t, KV, D)))


SEG = jnp.array([[1] * 30 + [2] * 20 + [3] * 27, [0] * 5 + [1] * 72])


def _impl_kw(impl):
    if impl == "chunked":
        return dict(q_block=16, kv_block=8)
    if impl == "splash":
        return dict(splash_interpret=True)
    return {}


@pytest.mark.parametrize("impl", ["chunked", "splash"])
@pytest.mark.parametrize("window", [None, 9])
@pytest.mark.parametrize("segments", [False, True])
def test_implementation_matches_reference(impl, window, segments):
    q, k, v = _qkv()
    seg = SEG if segments else None
    kw = dict(window=window, q_segment_ids=seg, kv_segment_ids=seg)
    ref = dot_product_attention(q, k, v, implementation="xla", **kw)
    out = dot_product_attention(q, k, v, implementation=impl, **kw, **_impl_kw(impl))
    np.testing.assert_allclose(out, ref, **TOL)

    def loss(impl, extra):
        w = jnp.linspace(-1, 1, D)
        return lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, implementation=impl, **kw,
                                                             **extra) * w)
    g_ref = jax.grad(loss("xla", {}), argnums=(0, 1, 2))(q, k, v)
    g = jax.grad(loss(impl, _impl_kw(impl)), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
@pytest.mark.parametrize("window", [None, 9])
def test_matches_jax_nn_dot_product_attention(impl, window):
    """Outside oracle: jax.nn.dot_product_attention (XLA) with is_causal / local_window_size
    (the arguments the cudnn path passes), GQA."""
    q, k, v = _qkv()
    args, kw = cudnn_arguments(q, k, v, window=window, scale=D ** -0.5, kv_lengths=None)
    want = jax.nn.dot_product_attention(*args, **kw, implementation="xla")
    got = dot_product_attention(q, k, v, window=window, implementation=impl, **_impl_kw(impl))
    np.testing.assert_allclose(got, want, **TOL)


def test_cudnn_arguments_express_right_padding():
    """The seq-length arguments the cudnn path builds equal the reference with padded keys hidden."""
    q, k, v = _qkv()
    lengths = jnp.array([T, 50])
    args, kw = cudnn_arguments(q, k, v, window=None, scale=D ** -0.5, kv_lengths=lengths)
    want = jax.nn.dot_product_attention(*args, **kw, implementation="xla")
    pos = jnp.where(jnp.arange(T)[None] < lengths[:, None], jnp.arange(T)[None], -1)
    got = dot_product_attention(q, k, v, kv_positions=pos, implementation="chunked", q_block=16,
                                kv_block=8)
    valid = (jnp.arange(T)[None] < lengths[:, None])[:, :, None, None]
    np.testing.assert_allclose(jnp.where(valid, got, 0), jnp.where(valid, want, 0), **TOL)


def test_chunked_with_cache_positions():
    """A prefill chunk against a ring buffer: arbitrary key positions, empty slots (-1)."""
    q, _, _ = _qkv(t=5)
    _, k, v = _qkv(t=40, seed=1)
    rng = np.random.default_rng(0)
    kpos = jnp.asarray(np.stack([rng.permutation(40) - 3 for _ in range(B)]).clip(-1))
    qpos = jnp.broadcast_to(jnp.arange(33, 38), (B, 5))
    for window in (None, 7):
        kw = dict(q_positions=qpos, kv_positions=kpos, window=window)
        ref = dot_product_attention(q, k, v, implementation="xla", **kw)
        out = dot_product_attention(q, k, v, implementation="chunked", q_block=2, kv_block=16, **kw)
        np.testing.assert_allclose(out, ref, **TOL)


def test_reference_mask_and_empty_rows():
    qpos = jnp.array([[0, 1, 2, -1]])
    kpos = jnp.array([[0, -1, 1, 2]])
    m = visibility_mask(qpos, kpos, window=2)
    assert m.tolist() == [[[True, False, False, False], [True, False, True, False],
                           [False, False, True, True], [False, False, False, False]]]
    q, k, v = _qkv(t=4)
    out = dot_product_attention(q[:1], k[:1], v[:1], q_positions=qpos, kv_positions=kpos,
                                implementation="chunked", q_block=2, kv_block=2)
    assert float(jnp.abs(out[0, 3]).max()) == 0.0  # a query that sees nothing outputs zeros


def test_bad_input_names_the_problem():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="unknown implementation"):
        dot_product_attention(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match="q_segment_ids must be"):
        dot_product_attention(q, k, v, q_segment_ids=SEG[:, :10], kv_segment_ids=SEG)
    with pytest.raises(ValueError, match="not a multiple"):
        dot_product_attention(q[:, :, :3], k, v)


def test_model_with_chunked_attention_equals_reference():
    """Whole model (attn + swa layers, packed documents), full forward and a cached chunked
    prefill: attention_implementation='chunked' (tiny blocks) == 'xla'."""

    from flax import nnx

    from jet_jax_configs.presets import TINY_QWEN2
    from jet_jax.generation import left_pad, prefill
    from jet_jax.model import JetNemotronForCausalLM
    import jet_jax.ops.attention as attention_op

    cfg = TINY_QWEN2.replace(num_hidden_layers=2, layer_types=("attn", "swa"), window_size=6,
                             initializer_range=0.2)
    ref = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), attention_implementation="xla")
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 21)), jnp.int32)
    seg = jnp.asarray([[1] * 9 + [2] * 12, [1] * 21])
    old = (attention_op.Q_BLOCK, attention_op.KV_BLOCK)
    attention_op.Q_BLOCK, attention_op.KV_BLOCK = 4, 8  # several blocks at this tiny T
    try:
        chunked = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), attention_implementation="chunked")
        np.testing.assert_allclose(chunked(ids, seg), ref(ids, seg), **TOL)
        batch = left_pad([[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [7, 8, 9]], multiple=4)
        a, _ = prefill(ref, batch, ref.init_cache(2, 16), chunk_size=4)
        b, _ = prefill(chunked, batch, chunked.init_cache(2, 16), chunk_size=4)
        np.testing.assert_allclose(b, a, **TOL)
    finally:
        attention_op.Q_BLOCK, attention_op.KV_BLOCK = old


def test_auto_picks_only_verified_implementations():
    from jet_jax.ops.attention import choose_implementation
    assert choose_implementation(4096, 4096, "cpu") == "chunked"
    assert choose_implementation(1, 4096, "cpu") == "xla"
    assert choose_implementation(64, 64, "cpu") == "xla"
    for backend in ("gpu", "cuda", "tpu"):  # nothing but the reference has run there yet
        assert choose_implementation(4096, 4096, backend) == "xla"


def test_backend_problem_names_the_hardware_a_kernel_needs():
    from jet_jax.ops.attention import backend_problem
    assert backend_problem("splash", "tpu") is None and backend_problem("cudnn", "gpu") is None
    assert backend_problem("splash", "gpu") == "'splash' runs on TPU only, this backend is gpu"
    assert "NVIDIA GPUs only, this backend is tpu" in backend_problem("cudnn", "tpu")
    assert all(backend_problem(i, "cpu") is None for i in ("auto", "xla", "chunked"))
    assert "this backend is cpu" in backend_problem("splash")  # default: JAX's backend (CPU here)
