"""PostNAS candidate mixers (jet_jax.layers.zoo): registry, chunked == recurrent (values and
gradients), cached decode / prefill == full forward, packed documents == documents alone, and
the core recurrences against flash-linear-attention's naive PyTorch references (and the
whole Mamba2 block against FLA's pure-torch `Mamba2.torch_forward`).

Tolerances (all float32): chunked vs recurrent and cache vs full: max |err| <= 1e-4 * max|ref|
(observed ~1e-7); against FLA: 1e-4 relative (different summation order, f32 both sides).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jet_jax.layers.zoo import MIXERS, get_mixer
from jet_jax.layers.zoo.base import decay_attention_chunked, decay_attention_recurrent
from jet_jax.layers.zoo.gated_deltanet import delta_rule_chunked, delta_rule_recurrent
from jet_jax.layers.zoo.retnet import retention_log_decay
from jet_jax.ops.gated_delta_rule import l2norm

NAMES = ["gdn", "deltanet", "retnet", "gla", "mamba2"]
D, H, DK, EXPAND_V, CHUNK = 32, 2, 8, 2, 8
B, T = 2, 21     # T not a multiple of CHUNK: exercises the padded tail chunk
REL = 1e-4


def close(got, ref, rel=REL, what=""):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    scale = max(np.abs(ref).max(), 1e-12)
    err = np.abs(got - ref).max()
    assert err <= rel * scale, f"{what}: max err {err:.3g} > {rel} * {scale:.3g}"


def make(name, implementation="chunked", seed=0):
    return get_mixer(name)(D, num_heads=H, head_dim=DK, expand_v=EXPAND_V, rngs=nnx.Rngs(seed),
                           implementation=implementation, chunk_size=CHUNK)


def inputs(seed=1, t=T):
    return jax.random.normal(jax.random.key(seed), (B, t, D), jnp.float32)


def random_cache(model, seed=2):
    """A cache with random (non-zero) conv history and recurrent state."""
    cache = model.init_cache(B)
    keys = jax.random.split(jax.random.key(seed), len(cache))
    return {n: 0.3 * jax.random.normal(kk, a.shape, a.dtype) for kk, (n, a) in zip(keys, cache.items())}


@nnx.jit
def apply(model, x, segment_ids, cache):
    """One jitted mixer call (eager calls would re-trace the scans on every decode step)."""
    return model(x, segment_ids=segment_ids, cache=cache)


PACKED = jnp.array([[0] * 7 + [1] * 7 + [2] * 7, [4] * 21])   # boundaries fall mid-chunk


# ----------------------------------------------------------------------------- registry


def test_registry_names():
    assert sorted(MIXERS) == sorted(NAMES)
    for name in NAMES:
        assert get_mixer(name) is MIXERS[name]


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as e:
        get_mixer("rwkv7")
    for name in NAMES:
        assert name in str(e.value)


def test_bad_implementation():
    with pytest.raises(ValueError):
        make("gdn", implementation="fused")


# ----------------------------------------------------------------------------- per block


@pytest.mark.parametrize("name", NAMES)
def test_chunked_matches_recurrent_values_and_grads(name):
    """From a random non-zero cache, over packed documents: outputs, new cache, and the
    gradients of a loss on both wrt x, the cache and every parameter agree."""
    model = make(name)
    x = inputs()
    cache = random_cache(model)
    w = jax.random.normal(jax.random.key(9), (B, T, D))

    def loss(m, x, cache):
        y, new = m(x, segment_ids=PACKED, cache=cache)
        return jnp.sum(y * w) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(new)), (y, new)

    res, grads = {}, {}
    for impl in ("recurrent", "chunked"):
        model.implementation = impl
        grad_fn = nnx.jit(nnx.grad(loss, argnums=(0, 1, 2), has_aux=True))
        grads[impl], res[impl] = grad_fn(model, x, cache)
    close(res["chunked"][0], res["recurrent"][0], what=f"{name} y")
    for key in cache:
        close(res["chunked"][1][key], res["recurrent"][1][key], what=f"{name} cache[{key}]")
    gm_c, gx_c, gc_c = grads["chunked"]
    gm_r, gx_r, gc_r = grads["recurrent"]
    close(gx_c, gx_r, what=f"{name} dx")
    for key in cache:
        close(gc_c[key], gc_r[key], what=f"{name} dcache[{key}]")
    flat_c, flat_r = nnx.to_flat_state(gm_c), nnx.to_flat_state(gm_r)
    assert len(flat_c) == len(flat_r) > 0
    for (path, vc), (_, vr) in zip(flat_c, flat_r):
        close(vc[...], vr[...], what=f"{name} d{'/'.join(map(str, path))}")


@pytest.mark.parametrize("name", NAMES)
def test_decode_and_prefill_match_full_forward(name):
    model = make(name)
    x = inputs()
    # all-zero segment ids: one document, and the same call signatures as the packed test
    y_full, _ = apply(model, x, jnp.zeros((B, T), jnp.int32), None)
    seg1 = jnp.zeros((B, 1), jnp.int32)

    # token by token from an empty cache
    cache, ys = model.init_cache(B), []
    for t in range(T):
        y, cache = apply(model, x[:, t:t + 1], seg1, cache)
        ys.append(y)
    close(jnp.concatenate(ys, axis=1), y_full, what=f"{name} decode")
    assert jax.tree.map(lambda a: (a.shape, a.dtype), cache) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), model.init_cache(B))

    # prefill 16 (chunked, two chunks) then decode the rest
    y_pre, cache = apply(model, x[:, :16], jnp.zeros((B, 16), jnp.int32), model.init_cache(B))
    ys = [y_pre]
    for t in range(16, T):
        y, cache = apply(model, x[:, t:t + 1], seg1, cache)
        ys.append(y)
    close(jnp.concatenate(ys, axis=1), y_full, what=f"{name} prefill+decode")


@pytest.mark.parametrize("name", NAMES)
def test_packed_documents_do_not_leak(name):
    model = make(name)
    x = inputs()
    y, _ = apply(model, x, PACKED, None)
    # row 0 holds three 7-token documents: run them alone, as one batch
    alone = [apply(model, x[r].reshape(3, 7, D), None, None)[0] for r in range(B)]
    close(y[0].reshape(3, 7, D), alone[0], what=f"{name} packed docs")
    # row 1 is a single document: same as the unpacked forward
    close(y[1], apply(model, x, jnp.zeros((B, T), jnp.int32), None)[0][1], what=f"{name} single doc")

    # packed prefill of 16 whose last document started 2 tokens before its end (so the
    # short-conv history straddles the boundary), then decode continuing that document
    seg = jnp.broadcast_to(PACKED[:1], (B, T))
    _, cache = apply(model, x[:, :16], seg[:, :16], model.init_cache(B))
    ys = []
    for t in range(16, T):
        y, cache = apply(model, x[:, t:t + 1], seg[:, t:t + 1], cache)
        ys.append(y)
    last_doc_alone = jnp.stack([alone[r][2, 2:] for r in range(B)])
    close(jnp.concatenate(ys, axis=1), last_doc_alone, what=f"{name} packed prefill + decode")


@pytest.mark.parametrize("name", NAMES)
def test_cache_bytes(name):
    model = make(name)
    cache = model.init_cache(3)
    assert model.cache_bytes(3) == sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(cache))
    assert cache["state"].dtype == jnp.float32


def test_logical_axis_names():
    model = make("gdn")
    names = {tuple(v.get_metadata().get("out_sharding") or ())
             for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert ("embed", "heads") in names and ("heads", "embed") in names


# ----------------------------------------------------------------------------- FLA oracles

torch = pytest.importorskip("torch")


def _rand(shape, seed):
    return np.asarray(jax.random.normal(jax.random.key(seed), shape, jnp.float32))


def _t(a):
    return torch.from_numpy(np.array(a))


NO_DOC = jnp.zeros((B, T), jnp.int32)
# jitted (eager calls compile every primitive separately: several times slower here)
decay_attention_recurrent = jax.jit(decay_attention_recurrent, static_argnames="scale")
decay_attention_chunked = jax.jit(decay_attention_chunked, static_argnames=("scale", "chunk_size"))
delta_rule_recurrent = jax.jit(delta_rule_recurrent, static_argnames="scale")
delta_rule_chunked = jax.jit(delta_rule_chunked, static_argnames="scale")


@pytest.mark.parametrize("decay", ["per_key_dim", "per_head"])
def test_decay_attention_vs_fla_naive_recurrent_gla(decay):
    """Per-key-dim decay vs FLA's naive GLA; per-head decay vs its naive simple GLA."""
    from fla.ops.gla.naive import naive_recurrent_gla
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla
    Hh, K, V = 3, 8, 16
    q, k = _rand((B, T, Hh, K), 1), _rand((B, T, Hh, K), 2)
    v = _rand((B, T, Hh, V), 3)
    s0 = _rand((B, Hh, K, V), 5)
    if decay == "per_key_dim":
        g = np.asarray(jax.nn.log_sigmoid(_rand((B, T, Hh, K), 4)) / 16)
        o_ref, s_ref = naive_recurrent_gla(_t(q), _t(k), _t(v), _t(g), initial_state=_t(s0),
                                           output_final_state=True)
    else:
        g = np.asarray(jax.nn.log_sigmoid(_rand((B, T, Hh), 4) + 2.0))
        o_ref, s_ref = naive_recurrent_simple_gla(_t(q), _t(k), _t(v), _t(g), scale=K ** -0.5,
                                                  initial_state=_t(s0), output_final_state=True)
    for fn in (decay_attention_recurrent, decay_attention_chunked):
        o, s = fn(q, k, v, g, scale=K ** -0.5, doc=NO_DOC, initial_state=s0)
        close(o, o_ref.numpy(), what=f"{fn.__name__} o")
        close(s, s_ref.numpy(), what=f"{fn.__name__} state")


def test_retention_vs_fla_naive_retention():
    from fla.ops.retention.naive import naive_retention
    Hh, K, V = 3, 8, 16
    q, k = _rand((B, T, Hh, K), 1), _rand((B, T, Hh, K), 2)
    v = _rand((B, T, Hh, V), 3)
    tr = lambda a: _t(np.swapaxes(a, 1, 2))                      # FLA naive: [B, H, T, D]
    o_ref = naive_retention(tr(q), tr(k), tr(v)).transpose(1, 2).numpy()
    g = jnp.broadcast_to(retention_log_decay(Hh), (B, T, Hh))
    for fn in (decay_attention_recurrent, decay_attention_chunked):
        o, _ = fn(q, k, v, g, scale=K ** -0.5, doc=NO_DOC)
        close(o, o_ref, what=fn.__name__)


def test_delta_rule_vs_fla_naive():
    from fla.ops.delta_rule.naive import delta_rule_recurrence
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
    Hh, K, V = 3, 8, 16
    q = np.asarray(l2norm(_rand((B, T, Hh, K), 1)))
    k = np.asarray(l2norm(_rand((B, T, Hh, K), 2)))
    v = _rand((B, T, Hh, V), 3)
    beta = np.asarray(jax.nn.sigmoid(_rand((B, T, Hh), 4)))
    g = np.asarray(-jax.nn.softplus(_rand((B, T, Hh), 6)))
    s0 = _rand((B, Hh, K, V), 5)
    tr = lambda a: _t(np.swapaxes(a, 1, 2))
    o_dn, s_dn = delta_rule_recurrence(tr(q), tr(k), tr(v), tr(beta), initial_state=_t(s0))
    o_gdn, s_gdn = naive_recurrent_gated_delta_rule(_t(q), _t(k), _t(v), _t(beta), _t(g),
                                                    initial_state=_t(s0), output_final_state=True)
    for fn in (delta_rule_recurrent, delta_rule_chunked):
        o, s = fn(q, k, v, None, beta, scale=K ** -0.5, doc=NO_DOC, initial_state=s0)
        close(o, np.swapaxes(o_dn.numpy(), 1, 2), what=f"{fn.__name__} deltanet o")
        close(s, s_dn.numpy(), what=f"{fn.__name__} deltanet state")
        o, s = fn(q, k, v, g, beta, scale=K ** -0.5, doc=NO_DOC, initial_state=s0)
        close(o, o_gdn.numpy(), what=f"{fn.__name__} gdn o")
        close(s, s_gdn.numpy(), what=f"{fn.__name__} gdn state")


def test_mamba2_block_vs_fla_torch_forward():
    """The whole block against FLA's pure-torch Mamba2 path, weights copied across."""
    from fla.layers.mamba2 import Mamba2 as FlaMamba2
    from fla.modules.norm.layernorm_gated import rms_norm_ref
    model = make("mamba2")
    P, N, V = model.head_v_dim, model.state_size, model.value_dim
    torch.manual_seed(0)
    ref = FlaMamba2(num_heads=H, head_dim=P, hidden_size=D, state_size=N, expand=V / D,
                    n_groups=1, conv_kernel=model.conv_size, chunk_size=CHUNK, backend="triton")
    ref.act = torch.nn.functional.silu          # FLA's swish is a Triton kernel (no GPU here)
    norm = ref.norm
    norm.forward = lambda x, z: rms_norm_ref(x, norm.weight, None, z, eps=norm.eps,
                                             group_size=norm.group_size, norm_before_gate=False)
    with torch.no_grad():
        for p in ref.parameters():   # randomise everything (FLA inits D, norm to ones)
            p.add_(0.1 * torch.randn_like(p))
    sd = {n: p.detach().numpy() for n, p in ref.named_parameters()}
    model.in_proj.kernel[...] = jnp.asarray(sd["in_proj.weight"].T)
    model.conv.weight[...] = jnp.asarray(sd["conv1d.weight"][:, 0, :].T)
    model.conv.bias[...] = jnp.asarray(sd["conv1d.bias"])
    model.dt_bias[...] = jnp.asarray(sd["dt_bias"])
    model.A_log[...] = jnp.asarray(sd["A_log"])
    model.D[...] = jnp.asarray(sd["D"])
    model.norm_weight[...] = jnp.asarray(sd["norm.weight"])
    model.out_proj.kernel[...] = jnp.asarray(sd["out_proj.weight"].T)
    x = inputs()
    with torch.no_grad():
        y_ref, _, s_ref = ref.torch_forward(_t(x), None, use_cache=True)
    for impl in ("recurrent", "chunked"):
        model.implementation = impl
        y, cache = apply(model, x, None, model.init_cache(B))
        close(y, y_ref.numpy(), what=f"mamba2 {impl} y")
        close(jnp.swapaxes(cache["state"], -1, -2), s_ref.numpy(), what=f"mamba2 {impl} state")
