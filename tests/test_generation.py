"""Generation: cached decoding == full forward, chunked prefill, left-padded batches, sampling,
greedy equality with transformers' `generate`, the generate CLI."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jet_jax_configs.presets import TINY_JET, TINY_QWEN2
from jet_jax.generation import generate, generate_stream, left_pad, prefill
from jet_jax.model import JetNemotronForCausalLM
from jet_jax.sampling import SamplingConfig, filtered_logits, sample, top_k_filter, top_p_filter

# A larger init than the presets' 0.02 so that greedy continuations of a random model do not
# degenerate into repeating the last token (which would make the batching tests vacuous).
# Fewer layers than the presets keep compile times down; the student still mixes jet, swa
# (window 32) and attn layers.
CONFIGS = {"teacher": TINY_QWEN2.replace(initializer_range=0.2, num_hidden_layers=2,
                                         layer_types=("attn",) * 2),
           "student": TINY_JET.replace(initializer_range=0.2, num_hidden_layers=3,
                                       layer_types=("jet", "swa", "attn"))}
B, T = 3, 40  # the shape of every full forward (one compile per model)


@functools.cache
def _model(name):
    return JetNemotronForCausalLM(CONFIGS[name], rngs=nnx.Rngs(0))


@functools.cache
def _jitted(name):
    graphdef, state = nnx.split(_model(name))

    @jax.jit
    def full(ids, seg):
        return nnx.merge(graphdef, state)(ids, seg)

    @jax.jit
    def cached(ids, seg, pos, cache):
        return nnx.merge(graphdef, state)(ids, seg, pos, cache=cache)

    return full, cached


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_decoding_matches_full_forward(name):
    """Prefill 12 tokens, then decode 28 one at a time (past the swa window of 32): the same
    logits as one full forward over all 40."""
    model = _model(name)
    full, cached = _jitted(name)
    b, t, p = B, T, 12
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 512, (b, t)), jnp.int32)
    ones = jnp.ones((b, t), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    ref = np.asarray(full(ids, ones))
    cache = model.init_cache(b, t)
    logits, cache = cached(ids[:, :p], ones[:, :p], pos[:, :p], cache)
    outs = [np.asarray(logits)]
    for i in range(p, t):
        logits, cache = cached(ids[:, i:i + 1], ones[:, i:i + 1], pos[:, i:i + 1], cache)
        outs.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chunked_left_padded_prefill(name):
    """Prefill of left-padded prompts in chunks of 8 == one chunk == the full forward (the
    17-token row starts with two chunks of pure padding)."""
    model = _model(name)
    full, _ = _jitted(name)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 512, n).tolist() for n in (40, 17, 33)]
    batch = left_pad(prompts, pad_id=0, multiple=8)
    assert batch.padded_length == 40
    one, _ = prefill(model, batch, model.init_cache(3, 48), chunk_size=None)
    chunked, _ = prefill(model, batch, model.init_cache(3, 48), chunk_size=8)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(one), atol=1e-4, rtol=0)
    # Without a cache, padding (segment 0) is a separate document, so this is each prompt
    # run on its own.
    ref = np.asarray(full(jnp.asarray(batch.ids), jnp.asarray(batch.segment_ids)))[:, -1]
    np.testing.assert_allclose(np.asarray(chunked), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_generation_matches_one_by_one(name):
    model = _model(name)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 512, n).tolist() for n in (3, 37, 11)]
    kw = dict(max_new_tokens=12, max_length=64, prefill_chunk_size=8)  # shared compiled shapes
    batched = generate(model, prompts, **kw)
    single = [generate(model, [p], **kw)[0] for p in prompts]
    assert batched == single
    assert all(len(r) == 12 for r in batched)
    assert len({tuple(r) for r in batched}) == 3 and all(len(set(r)) > 2 for r in batched)
    # Stop tokens: each row ends at its first stop token; the other rows are unaffected.
    stop = (batched[0][4], batched[2][7])
    expected = []
    for r in batched:
        cut = next((j for j, t in enumerate(r) if t in stop), None)
        expected.append(r if cut is None else r[:cut + 1])
    assert generate(model, prompts, stop_tokens=stop, **kw) == expected


def test_stream_matches_loop_and_seed_reproducible():
    model = _model("teacher")
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    sampling = SamplingConfig(temperature=1.0, top_k=50, top_p=0.9)
    kw = dict(max_new_tokens=10, sampling=sampling, max_length=32)
    a = generate(model, prompts, seed=3, **kw)
    assert generate(model, prompts, seed=3, **kw) == a
    assert generate(model, prompts, seed=4, **kw) != a
    stop = (a[1][3],)
    steps = list(generate_stream(model, prompts, seed=3, stop_tokens=stop, **kw))
    streamed = [[s[r] for s in steps if s[r] is not None] for r in range(2)]
    assert streamed == generate(model, prompts, seed=3, stop_tokens=stop, **kw)
    assert streamed[1] == a[1][:4]


# ---------------------------------------------------------------------------------------
# Sampling functions
# ---------------------------------------------------------------------------------------

def test_top_k_one_is_greedy():
    logits = jax.random.normal(jax.random.key(0), (64, 300)) * 3
    greedy = sample(logits, jax.random.key(1), SamplingConfig())
    assert (greedy == jnp.argmax(logits, -1)).all()
    for temperature in (0.5, 2.0):
        cfg = SamplingConfig(temperature=temperature, top_k=1)
        assert (sample(logits, jax.random.key(2), cfg) == greedy).all()
        # Through the filtering path as well (not only the greedy shortcut).
        drawn = jax.random.categorical(jax.random.key(3), filtered_logits(logits, cfg), axis=-1)
        assert (drawn == greedy).all()


def test_same_seed_same_samples():
    logits = jax.random.normal(jax.random.key(0), (8, 100))
    cfg = SamplingConfig(temperature=1.0, top_p=0.95)
    a = sample(logits, jax.random.key(7), cfg)
    assert (sample(logits, jax.random.key(7), cfg) == a).all()
    draws = jnp.stack([sample(logits, jax.random.key(s), cfg) for s in range(8)])
    assert len(np.unique(np.asarray(draws))) > 8


def test_top_p_keeps_smallest_set_reaching_p():
    probs = jnp.array([0.1, 0.5, 0.15, 0.25])  # sorted: 0.5, 0.25, 0.15, 0.1
    logits = jnp.log(probs)[None]
    kept = lambda p: np.isfinite(np.asarray(top_p_filter(logits, p)))[0].tolist()  # noqa: E731
    assert kept(0.3) == [False, True, False, False]
    assert kept(0.7) == [False, True, False, True]
    assert kept(0.75) == [False, True, False, True]  # 0.5 + 0.25 reaches 0.75 exactly
    assert kept(0.8) == [False, True, True, True]
    assert kept(1.0) == [True] * 4
    # Sampled frequencies are the renormalised kept mass.
    n = 20000
    cfg = SamplingConfig(temperature=1.0, top_p=0.8)
    draws = np.asarray(sample(jnp.broadcast_to(logits, (n, 4)), jax.random.key(0), cfg))
    freq = np.bincount(draws, minlength=4) / n
    np.testing.assert_allclose(freq, [0, 0.5 / 0.9, 0.15 / 0.9, 0.25 / 0.9], atol=0.02)


def test_top_k_filter_and_temperature():
    logits = jnp.log(jnp.array([[0.1, 0.5, 0.15, 0.25]]))
    assert np.isfinite(np.asarray(top_k_filter(logits, 2)))[0].tolist() == [False, True, False, True]
    n = 20000
    cfg = SamplingConfig(temperature=0.5, top_k=2)  # p^2 renormalised over {0.5, 0.25}
    draws = np.asarray(sample(jnp.broadcast_to(logits, (n, 4)), jax.random.key(1), cfg))
    freq = np.bincount(draws, minlength=4) / n
    np.testing.assert_allclose(freq, [0, 0.8, 0, 0.2], atol=0.02)
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0.0)


# ---------------------------------------------------------------------------------------
# Against transformers
# ---------------------------------------------------------------------------------------

def test_greedy_matches_transformers_generate(tmp_path):
    pytest.importorskip("torch")
    from jet_jax.convert import from_hf
    from tests.hf_fixtures import hf_greedy, tiny_qwen2

    hf = tiny_qwen2(tmp_path, seed=5)
    model = from_hf(tmp_path)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, 101, n).tolist() for n in (6, 13)]
    n_new = 16
    ours = generate(model, prompts, max_new_tokens=n_new)
    for prompt, new in zip(prompts, ours):
        assert prompt + new == hf_greedy(hf, prompt, n_new)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------

def test_generate_cli_streams_from_orbax_checkpoint(tmp_path, capsys):
    from jet_jax.checkpoint_io import save_orbax
    from jet_jax.cli import main

    model = _model("teacher")
    save_orbax(model, tmp_path / "ckpt")
    prompt = "hello"
    rc = main(["generate", "--model", str(tmp_path / "ckpt"), "--prompt", prompt,
               "--max-new-tokens", "6", "--ignore-eos"])
    assert rc == 0
    out = capsys.readouterr().out
    expected = generate(model, [list(prompt.encode())], max_new_tokens=6)[0]
    text = bytes(t for t in expected if t < 256).decode("utf-8", errors="replace")
    assert out.startswith(prompt)
    # The streamed text is the greedy continuation (byte-level tokenizer).
    assert out[len(prompt):].rstrip("\n").replace("\ufffd", "") == text.replace("\ufffd", "")


def test_dtype_auto_is_float32_on_cpu_and_as_stored_elsewhere(tmp_path):
    """`--dtype auto` loads a bf16 checkpoint as float32 on CPU (XLA:CPU converts bf16
    weights on every matmul), as stored on accelerators; an explicit dtype is kept."""
    import argparse
    from jet_jax.checkpoint_io import save_orbax
    from jet_jax.commands import dtype_choice
    from jet_jax.commands.generate import _load, register

    gd, st = nnx.split(_model("teacher"))
    save_orbax(nnx.merge(gd, jax.tree.map(lambda x: x.astype(jnp.bfloat16), st)), tmp_path / "ckpt")
    parser = argparse.ArgumentParser()
    register(parser)
    args = lambda dtype: parser.parse_args(["--model", str(tmp_path / "ckpt"), "--prompt", "x",
                                            "--dtype", dtype])
    on_cpu = jax.default_backend() == "cpu"
    assert dtype_choice.param_dtype("auto") == (jnp.float32 if on_cpu else None)
    dtypes = lambda m: {x.dtype for x in jax.tree.leaves(nnx.state(m, nnx.Param))}
    assert dtypes(_load(args("auto"))) == {jnp.dtype(jnp.float32 if on_cpu else jnp.bfloat16)}
    assert dtypes(_load(args("bfloat16"))) == {jnp.dtype(jnp.bfloat16)}


# ---------------------------------------------------------------------------------------
# Throughput harness
# ---------------------------------------------------------------------------------------

def test_bench_measure_table_and_plot(tmp_path):
    from jet_jax.commands.bench import Row, decode_step_bytes, fit_batch, fit_batch_formula, format_table, measure, plot

    model = _model("student")
    row = measure(model, "student", 16, budget_bytes=2 ** 30, max_batch=4, decode_steps=2,
                  prefill_chunk=8, cache_dtype=jnp.float32, repeats=1)
    assert row.batch == 4 and row.prefill_tok_s > 0 and row.decode_tok_s > 0
    assert row.cache_bytes_per_seq == model.cache_bytes(1, 16, 4)
    # The batch shrinks to what the budget allows (parameters + cache + logits per row).
    teacher = _model("teacher")
    from jet_jax.commands.bench import param_bytes
    per_seq = teacher.cache_bytes(1, 1024, 4) + 4 * 512
    assert fit_batch_formula(teacher, 1024, param_bytes(teacher) + 5.5 * per_seq, 4, 100) == 5
    # The planner reads the compiled step's memory: the batch it picks fits, one more does not.
    budget = decode_step_bytes(teacher, 5, 1024, jnp.float32) + 1
    b = fit_batch(teacher, 1024, budget, jnp.float32, 100)
    assert b == 5 and decode_step_bytes(teacher, 6, 1024, jnp.float32) > budget
    rows = [Row(n, c, 2, 100.0, 50.0 * (2 if n == "student" else 1), 3.0, c * 10)
            for n in ("student", "teacher") for c in (64, 128)]
    assert len(format_table(rows).splitlines()) == 6
    plot(rows, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000
