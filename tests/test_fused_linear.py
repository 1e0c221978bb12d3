"""Fused input projections (jet_jax.layers.fused_linear): one product equals the parts'
own, fuse/unfuse round-trips values and metadata, and a stacked (fused) model of every
mixer type gives the unfused model's logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jet_jax_configs.presets import TINY_JET
from jet_jax.layers.attention import Attention
from jet_jax.layers.fused_linear import FusedLinear, fuse_inputs, project_inputs, unfuse_inputs
from jet_jax.layers.jet_block import JetBlock
from jet_jax.model import JetNemotronForCausalLM, stack_layers, unstack_layers
from jet_jax.sharding import partitioned


def _linears(bias, sizes=(5, 3, 7), d=6, seed=0):
    rngs = nnx.Rngs(seed)
    init = partitioned(nnx.initializers.normal(1.0), "embed", "heads")
    binit = partitioned(nnx.initializers.normal(1.0), "heads")
    return [nnx.Linear(d, n, use_bias=bias, kernel_init=init, bias_init=binit, rngs=rngs) for n in sizes]


@pytest.mark.parametrize("bias", [False, True])
def test_fused_outputs_equal_the_parts(bias):
    parts = _linears(bias)
    x = jax.random.normal(jax.random.key(1), (2, 4, 6))
    fused = FusedLinear(parts)
    assert fused.kernel.shape == (6, 15)
    for got, part in zip(fused(x), parts):
        np.testing.assert_allclose(got, part(x), rtol=1e-6, atol=1e-6)
    # the fused output axis mixes logical axes: left unnamed
    assert fused.kernel.get_metadata()["out_sharding"] == ("embed", None)


def test_unfuse_gives_back_values_and_metadata():
    parts = _linears(True)
    back = FusedLinear(parts).unfuse()
    for a, b in zip(parts, back):
        assert (b.in_features, b.out_features, b.use_bias) == (a.in_features, a.out_features, True)
        np.testing.assert_array_equal(b.kernel[...], a.kernel[...])
        np.testing.assert_array_equal(b.bias[...], a.bias[...])
        assert b.kernel.get_metadata()["out_sharding"] == ("embed", "heads")
        assert b.bias.get_metadata()["out_sharding"] == ("heads",)


def test_parts_that_differ_are_refused():
    a = nnx.Linear(4, 2, rngs=nnx.Rngs(0))
    b = nnx.Linear(4, 2, use_bias=False, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="use_bias"):
        FusedLinear([a, b])


@pytest.mark.parametrize("make", [
    lambda: JetBlock(TINY_JET, rngs=nnx.Rngs(0)),
    lambda: Attention(TINY_JET, window=None, rngs=nnx.Rngs(0)),
], ids=["jet", "attn"])
def test_fuse_inputs_in_place_and_back(make):
    module = make()
    x = jax.random.normal(jax.random.key(2), (1, 5, TINY_JET.hidden_size))
    want = project_inputs(module, x)
    before = nnx.to_flat_state(nnx.state(module, nnx.Param))
    fuse_inputs(module)
    paths = type(module).INPUT_PROJECTIONS
    assert not any(hasattr(module, p.split(".")[0]) and p.count(".") == 0 for p in paths)
    got = project_inputs(module, x)
    assert len(got) == len(paths)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    unfuse_inputs(module)
    after = nnx.to_flat_state(nnx.state(module, nnx.Param))
    assert [p for p, _ in after] == [p for p, _ in before]
    for (_, a), (_, b) in zip(after, before):
        np.testing.assert_array_equal(a.get_value(), b.get_value())


def test_stacked_fused_model_equals_unfused():
    """Every mixer type with its projections fused (jet, full and sliding attention with
    q/k/v biases, the MLPs): the stacked view's logits and cached decode equal the per-layer
    model's; unstacking gives the same parameter tree, values and sharding names."""
    cfg = TINY_JET.replace(initializer_range=0.2, num_hidden_layers=5,
                           layer_types=("jet", "jet", "attn", "swa", "jet"))
    assert cfg.qkv_bias  # qwen2 family: q/k/v biases
    model = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(3))
    # biases are zero at init: give them values so a wrong split would show
    for layer in model.model.layers:
        if isinstance(layer.self_attn, Attention):
            for p in ("q_proj", "k_proj", "v_proj"):
                lin = getattr(layer.self_attn, p)
                lin.bias[...] = jax.random.normal(jax.random.key(len(p)), lin.bias.shape)
    stacked = stack_layers(model)
    assert all(getattr(m, "fused_inputs", None) is not None
               for m in (stacked.model.layer_stacks[0].self_attn, stacked.model.layer_stacks[0].mlp,
                         stacked.model.layers[0].self_attn, stacked.model.layers[1].mlp))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    want, _ = model(ids, positions=pos, cache=model.init_cache(2, 16))
    got, _ = stacked(ids, positions=pos, cache=stacked.init_cache(2, 16))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    back = unstack_layers(stacked)
    a = nnx.to_flat_state(nnx.state(model, nnx.Param))
    b = nnx.to_flat_state(nnx.state(back, nnx.Param))
    assert [p for p, _ in a] == [p for p, _ in b]
    for (_, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x.get_value(), y.get_value())
        assert x.get_metadata().get("out_sharding") == y.get_metadata().get("out_sharding")
