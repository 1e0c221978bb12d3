"""scan_layers: the scanned model equals the unrolled one (logits, hidden states, gradients,
decode with donated stacked caches after a left-padded chunked prefill)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jet_jax_configs.presets import TINY_JET
from jet_jax.generation import decode_step, generate, left_pad, prefill
from jet_jax.model import JetNemotronForCausalLM, layer_runs, stack_layers, unstack_layers

# Runs of 2 jet, 2 swa (window 32), 1 attn, 2 jet: three scanned runs and one single layer.
CFG = TINY_JET.replace(initializer_range=0.2, num_hidden_layers=7,
                       layer_types=("jet", "jet", "swa", "swa", "attn", "jet", "jet"))


@functools.cache
def _models():
    unrolled = JetNemotronForCausalLM(CFG, rngs=nnx.Rngs(0))
    scanned = JetNemotronForCausalLM(CFG, rngs=nnx.Rngs(0), scan_layers=True)
    return unrolled, scanned


def test_layer_runs():
    assert layer_runs(CFG.layer_types, True) == [(0, 2), (2, 4), (4, 5), (5, 7)]
    assert layer_runs(CFG.layer_types, False) == [(i, i + 1) for i in range(7)]
    # Cached calls keep one KV buffer per attention layer (updated in place when donated).
    assert _models()[1].cache_runs() == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 7)]


def test_same_parameter_tree():
    unrolled, scanned = _models()
    a = jax.tree.map(lambda x: x.shape, nnx.state(unrolled, nnx.Param))
    b = jax.tree.map(lambda x: x.shape, nnx.state(scanned, nnx.Param))
    assert a == b  # checkpoints and HF conversion see the per-layer tree either way


def test_scanned_logits_hidden_and_gradients_equal_unrolled():
    unrolled, scanned = _models()
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 512, (2, 24)), jnp.int32)
    seg = jnp.asarray([[1] * 10 + [2] * 14, [1] * 24])

    def loss(model):
        logits, hidden = model(ids, seg, return_hidden_states=True)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3]) + 0.1 * jnp.mean(hidden[3] ** 2), (logits, hidden)

    outs = []
    for m in (unrolled, scanned):
        graphdef, state = nnx.split(m)
        f = jax.jit(jax.value_and_grad(lambda s: loss(nnx.merge(graphdef, s)), has_aux=True))
        outs.append(f(state))
    (lu, (logits_u, hid_u)), gu = outs[0]
    (ls, (logits_s, hid_s)), gs = outs[1]
    np.testing.assert_allclose(logits_s, logits_u, atol=1e-5, rtol=1e-5)
    assert len(hid_s) == len(hid_u) == CFG.num_hidden_layers + 1
    for a, b in zip(hid_s, hid_u):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(gs), jax.tree.leaves(gu)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_scanned_decode_after_prefill_equals_full_forward():
    """Left-padded chunked prefill then greedy decode with the stacked caches (donated) ==
    the unrolled model's tokens, and the prefill logits == the full forward's last logits."""
    unrolled, scanned = _models()
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [3, 4, 5], list(range(20, 36))]
    batch = left_pad(prompts, multiple=8)
    cache = scanned.init_cache(3, 48)
    # one entry for the jet layers (both runs index rows of it), one KV buffer per attention layer
    assert [t for t, _ in scanned.cache_entries()] == ["jet", "swa", "swa", "attn"]
    assert cache[0]["state"].shape[0] == 4
    logits, _ = prefill(scanned, batch, cache, chunk_size=8)
    ref = unrolled(jnp.asarray(batch.ids), jnp.asarray(batch.segment_ids),
                   jnp.asarray(batch.positions))[:, -1]
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)
    want = generate(unrolled, prompts, max_new_tokens=12, prefill_chunk_size=8)
    got = generate(scanned, prompts, max_new_tokens=12, prefill_chunk_size=8)
    assert got == want
    stacked = stack_layers(unrolled)  # parameters stacked once, outside the jitted steps
    # one stack per linear type: both jet runs (layers 0-1 and 5-6) index rows of it
    assert stacked.stacked_types() == ("jet",)
    assert stacked.model.layer_stacks[0].mlp.fused_inputs.kernel.shape[0] == 4
    assert generate(stacked, prompts, max_new_tokens=12, prefill_chunk_size=8) == want


def test_stack_unstack_round_trip():
    unrolled, _ = _models()
    back = unstack_layers(stack_layers(unrolled))
    a = nnx.to_flat_state(nnx.state(unrolled, nnx.Param))
    b = nnx.to_flat_state(nnx.state(back, nnx.Param))
    assert [p for p, _ in a] == [p for p, _ in b]
    for (_, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x.get_value(), y.get_value())


def _compiled_decode_step(model, batch, length, dtype=jnp.float32):
    """(the compiled one-token decode step of `model`, its abstract cache [batch, length])."""
    graphdef, state = nnx.split(model)
    cache = jax.eval_shape(lambda: model.init_cache(batch, length, dtype))
    i32 = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return decode_step.lower(graphdef, state, i32, i32, cache).compile(), cache


def test_stacked_decode_updates_the_stacked_cache_in_place():
    """The compiled decode step of a stacked model (cache donated) writes each layer's new
    rows into the stacked cache in place: no copy of a whole stacked cache array, and
    temporaries under 10% of the cache (one layer's rows: 1/16 of the states here). A read of
    the old rows that XLA cannot order before the write made it copy the whole stack, twice
    per layer (`_written_after` in jet_jax.model)."""
    import re
    cfg = TINY_JET.replace(num_hidden_layers=17, layer_types=("jet",) * 8 + ("attn",) + ("jet",) * 8)
    compiled, cache = _compiled_decode_step(stack_layers(JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0))),
                                            256, 32)
    stacked = {",".join(map(str, x.shape)) for x in jax.tree.leaves(cache[0])}
    copied = set(re.findall(r"= f32\[([\d,]+)\]\S* copy\(", compiled.as_text()))
    assert not copied & stacked, copied & stacked
    temp = compiled.memory_analysis().temp_size_in_bytes
    cache_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    assert temp < 0.1 * cache_bytes, (temp, cache_bytes)


def test_bf16_stacks_slice_per_layer_on_cpu():
    """bf16 stacks are sliced one layer at a time on CPU (held as uint16 bits: XLA:CPU would
    convert each whole stack to float32 and hoist that out of the layer loop), give the
    unrolled model's logits, and unstack to the same parameters."""
    # 8 jet layers: the stack, not the embedding, would dominate a whole-stack convert
    cfg = CFG.replace(num_hidden_layers=10, layer_types=("jet",) * 4 + ("attn", "swa") + ("jet",) * 4)
    model = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    stacked = stack_layers(model)
    leaves = jax.tree.leaves(nnx.state(stacked.model.layer_stacks))
    assert {x.dtype for x in leaves} == ({jnp.dtype(jnp.uint16)} if jax.default_backend() == "cpu"
                                         else {jnp.dtype(jnp.bfloat16)})
    ids = jnp.asarray([[5, 6, 7, 8, 9, 10, 11, 12]])

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def cached_forward(graphdef, state, dtype):
        m = nnx.merge(graphdef, state)
        return m(ids, positions=jnp.arange(8)[None], cache=m.init_cache(1, 16, dtype))[0].astype(jnp.float32)
    # bf16 rounding over 10 random layers moves the logits ~25% of their range from float32
    # (same weights), unrolled or stacked alike; a wrong row would move them ~100%.
    graphdef32, _ = nnx.split(nnx.eval_shape(lambda: JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0))))
    ref = cached_forward(graphdef32, jax.tree.map(lambda x: x.astype(jnp.float32), nnx.state(model)),
                         jnp.float32)
    err = lambda m: float(jnp.abs(cached_forward(*nnx.split(m), jnp.bfloat16) - ref).max() / jnp.abs(ref).max())
    err_stacked, err_unrolled = err(stacked), err(model)
    assert err_stacked < 1.5 * err_unrolled + 0.01, (err_stacked, err_unrolled)
    for a, b in zip(jax.tree.leaves(nnx.state(unstack_layers(stacked), nnx.Param)),
                    jax.tree.leaves(nnx.state(model, nnx.Param))):
        assert a.dtype == b.dtype and bool(jnp.all(a == b))
    temp = _compiled_decode_step(stacked, 8, 16, jnp.bfloat16)[0].memory_analysis().temp_size_in_bytes
    stack_f32 = 2 * sum(x.size * x.dtype.itemsize for x in leaves)
    assert temp < stack_f32, (temp, stack_f32)  # 0.7 MB vs 2.4 MB with the whole-stack convert


def test_stacked_view_writes_the_per_layer_checkpoint(tmp_path):
    """HF export and Orbax save of a `stack_layers` view (bf16: its stacks are uint16 bits on
    CPU, its projections fused) write what the per-layer model writes; loading into a view
    is refused in one line."""
    from safetensors.numpy import load_file
    from jet_jax.checkpoint_io import load_model, load_params, save_orbax
    from jet_jax.convert.hf import to_hf
    model = JetNemotronForCausalLM(CFG, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    stacked = stack_layers(model)
    to_hf(model, tmp_path / "hf_model")
    to_hf(stacked, tmp_path / "hf_stacked")
    want, got = load_file(tmp_path / "hf_model" / "model.safetensors"), load_file(tmp_path / "hf_stacked" / "model.safetensors")
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key
    save_orbax(stacked, tmp_path / "orbax_stacked")
    back = load_model(tmp_path / "orbax_stacked")
    a = nnx.to_flat_state(nnx.state(model, nnx.Param))
    b = nnx.to_flat_state(nnx.state(back, nnx.Param))
    assert [p for p, _ in a] == [p for p, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert x.get_value().dtype == y.get_value().dtype
        np.testing.assert_array_equal(np.asarray(x.get_value(), np.float32), np.asarray(y.get_value(), np.float32))
    with pytest.raises(ValueError, match="stack_layers inference view"):
        load_params(stacked, tmp_path / "orbax_stacked")
