"""PostNAS on a micro teacher (random init, 4 layers): super-network == extracted sub-network,
deterministic sampling, a placement search whose scores come from the trained super-network,
block/hardware candidates with measured throughput at a fixed cache size, and the CLI."""


import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jet_jax_configs.presets import TINY_QWEN2
from jet_jax.config import JetBlockConfig
from jet_jax.evaluation import MCExample
from jet_jax.model import JetNemotronForCausalLM
from jet_jax_train.config import LossSection, OptimizerSection
from jet_jax_train.data import MQARConfig
from jet_jax_train.flat_model import FlatModel
from jet_jax_train.data.mqar import make_mqar_example
from jet_jax_train.data.packing import finalize_row, lm_example
from jet_jax_train.postnas import throughput as tp
from jet_jax_train.postnas.block_selection import ThroughputConfig, select_block
from jet_jax_train.postnas.hardware_search import HardwareSearchConfig, candidate_grid, hardware_search
from jet_jax_train.postnas.placement_search import (SearchConfig, TaskSuite, mc_task,
                                            search_placement, uniform_placement)
from jet_jax_train.postnas.sampling import ChoiceSampler, SamplingConfig
from jet_jax_train.postnas.supernet import (ATTN, LINEAR, SWA, SuperNetwork, extract_subnet,
                                    layer_types_from_choice)
from jet_jax_train.postnas.trainer import SupernetTrainConfig, train_supernet

CFG = TINY_QWEN2.replace(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         num_key_value_heads=1, window_size=6,
                         jet=JetBlockConfig(num_heads=2, head_dim=8, expand_v=2.0))
MQAR = MQARConfig(num_pairs=4, num_queries=4, token_range=(0, 64))
T, B = 24, 2


def _rows(n, seed):
    """MQAR rows in the pipeline's row format (no corpus download needed)."""
    out = []
    for i in range(n):
        ex = make_mqar_example(MQAR, seed, i, bos_id=256)
        d = lm_example(ex["input_ids"], ex["answer_mask"].astype(np.float32))
        L = len(d["inputs"])
        row = {"inputs": np.pad(d["inputs"], (0, T - L)), "targets": np.pad(d["targets"], (0, T - L)),
               "loss_mask": np.pad(d["loss_mask"], (0, T - L)),
               "inputs_segment_ids": np.pad(np.ones(L, np.int32), (0, T - L)),
               "inputs_positions": np.pad(np.arange(L, dtype=np.int32), (0, T - L))}
        out.append(finalize_row(row, pad_id=258))
    return [{k: np.stack([r[k] for r in out[j:j + B]]) for k in out[0]} for j in range(0, n, B)]


def _lm_rows(n, seed):
    """Random-text LM rows (every target counts)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, 256, (B, T + 1)).astype(np.int32)
        out.append({"input_ids": ids[:, :-1], "targets": ids[:, 1:],
                    "segment_ids": np.ones((B, T), np.int32),
                    "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
                    "loss_mask": np.ones((B, T), np.float32)})
    return out


def _data():
    batches = _rows(16, 1)
    while True:
        yield from batches


@pytest.fixture(scope="module")
def teacher():
    return JetNemotronForCausalLM(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def suite(teacher):
    return TaskSuite(teacher=teacher, lm_batches=_lm_rows(1, 5), mqar_batches=_rows(2, 9))


@pytest.fixture(scope="module")
def trained(teacher):
    """(super-network, history) of 3 steps; the reference run of the settings tests."""
    return _train_like_fixture(teacher)


def _perturb_linear(sup, seed):
    state = nnx.state(sup, nnx.All(nnx.Param, nnx.PathContains("linear")))
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(state))))
    nnx.update(sup, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), state))


def test_supernet_equals_extracted_subnet(teacher):
    sup = SuperNetwork.from_teacher(teacher, "jet", enable_swa=True, seed=3)
    _perturb_linear(sup, 0)  # so the linear paths are not at their (partly zero) init
    ids = jax.random.randint(jax.random.key(1), (B, 20), 0, 256)
    seg = jnp.array([[1] * 9 + [2] * 11, [1] * 20])
    f = jax.jit(lambda c: sup(ids, c, seg))  # one compiled forward serves every choice
    np.testing.assert_allclose(f(jnp.full(4, ATTN)), teacher(ids, seg), atol=1e-5, rtol=0)
    outs = []
    for choice in ([LINEAR, ATTN, SWA, LINEAR], [ATTN, LINEAR, LINEAR, LINEAR]):
        lt = layer_types_from_choice(choice, "jet")
        sub = extract_subnet(sup, lt)
        assert sub.config.layer_types == lt
        got = f(jnp.asarray(choice))
        np.testing.assert_allclose(got, sub(ids, seg), atol=1e-5, rtol=0)
        outs.append(got)
    assert not np.allclose(outs[0], outs[1], atol=1e-3)  # the choice vector matters
    # a bool use_attn vector is a valid choice vector
    np.testing.assert_allclose(f(jnp.array([True, False, False, False])), outs[1], atol=1e-6)


def test_sampler_deterministic_and_within_budget():
    s = ChoiceSampler(6, SamplingConfig(rule="uniform", budget=2, swa_budget=1, seed=7))
    draws = [s(i) for i in range(20)]
    assert all((d == ATTN).sum() == 2 and (d == SWA).sum() == 1 for d in draws)
    assert all(np.array_equal(d, ChoiceSampler(6, s.cfg)(i)) for i, d in enumerate(draws))
    assert len({tuple(d) for d in draws}) > 3
    b = ChoiceSampler(6, SamplingConfig(rule="bernoulli", budget=3, seed=7))
    assert np.array_equal(b(5), b(5)) and 1 < np.mean([(b(i) == ATTN).sum() for i in range(200)]) < 5
    with pytest.raises(ValueError, match="exceeds"):
        ChoiceSampler(2, SamplingConfig(budget=2, swa_budget=1))


def test_supernet_training_updates_only_linear_paths(teacher, trained):
    sup, hist = trained
    assert len(hist) == 3 and all(np.isfinite(h["kl"]) for h in hist)
    fresh = SuperNetwork.from_teacher(teacher, "jet", enable_swa=True, seed=1)
    changed = lambda a, b: not np.allclose(a, b)
    flat_new = dict(nnx.to_flat_state(nnx.state(sup, nnx.Param)))
    flat_old = dict(nnx.to_flat_state(nnx.state(fresh, nnx.Param)))
    moved = {"/".join(map(str, p)) for p in flat_new
             if changed(flat_new[p].get_value(), flat_old[p].get_value())}
    assert moved and all("/linear/" in m for m in moved), sorted(moved)[:5]


def test_placement_search_valid_deterministic_and_from_supernet(trained, suite):
    sup, _ = trained
    cfg = SearchConfig(budget=2, beam_width=1, seed=0)
    r1 = search_placement(sup, suite, cfg)
    r2 = search_placement(sup, suite, cfg)
    assert len(r1.layer_types) == 4 and r1.layer_types.count("attn") == 2
    assert set(r1.layer_types) <= {"attn", "jet"}
    assert r1.to_dict() == r2.to_dict()
    assert all(c.choice.count(ATTN) == 2 for c in r1.ranking)
    objectives = [c.objective for c in r1.ranking]
    assert len(set(np.round(objectives, 9))) > 1, "candidates must score differently"
    assert r1.importance_only.shape == (len(suite.tasks), 4)
    # scores come from the super-network's weights: change them, the scores change
    perturbed = nnx.clone(sup)  # (the fixture is shared with other tests)
    _perturb_linear(perturbed, 1)
    r3 = search_placement(perturbed, suite, cfg)
    assert r3.ranking[0].scores != r1.ranking[0].scores or r3.best.choice != r1.best.choice
    assert r3.references["all_linear"] != r1.references["all_linear"]
    assert r3.references["all_attn"] == r1.references["all_attn"]  # frozen attention paths


def test_placement_search_swa_phase_and_mc(trained, suite, teacher, tmp_path):
    sup, _ = trained
    from jet_jax_train.data import ByteTokenizer
    items = [MCExample("ab", ("c", "dd"), 0), MCExample("x y", ("z", "w", "v"), 2)]
    mc = mc_task(items, ByteTokenizer(), batch_size=4)
    s2 = TaskSuite(teacher=teacher, lm_batches=suite.lm_batches, mqar_batches=[], mc=mc)
    assert s2.tasks == ["lm_loss", "kl", "mc"]
    r = search_placement(sup, s2, SearchConfig(budget=1, swa_budget=1, beam_width=1))
    assert r.best.choice.count(ATTN) == 1 and r.best.choice.count(SWA) == 1
    assert 0.0 <= r.best.scores["mc"] <= 1.0
    path = r.save_json(tmp_path / "s.json")
    assert path.exists()
    assert uniform_placement(4, 2) == (0, 1, 0, 1) and uniform_placement(6, 2).count(ATTN) == 2


def test_mc_score_is_jet_jax_evaluation_on_the_same_model(trained, teacher, tmp_path):
    """PostNAS's mc task = `jet-jax eval`'s multiple choice: the all-attention sub-network
    scores like the teacher, a mixed one like its extracted standalone model."""
    from jet_jax.evaluation import Scorer, multiple_choice, read_mc_jsonl
    from jet_jax_train.data import ByteTokenizer
    from jet_jax_train.postnas.placement_search import SubNetwork
    sup, _ = trained
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "a tree", "blue", "seven", "x", "the sea", "on"]
    lines = [json.dumps({"context": f"q{i} is", "choices": list(rng.choice(words, 3, replace=False)),
                         "label": int(rng.integers(3))}) for i in range(12)]
    (tmp_path / "mc.jsonl").write_text("\n".join(lines) + "\n")
    examples = read_mc_jsonl(tmp_path / "mc.jsonl")
    tok = ByteTokenizer()
    task = mc_task(examples, tok, batch_size=4)
    s = TaskSuite(mc=task)
    for choice, ref in ((np.full(4, ATTN), teacher),
                        (np.array([0, 1, 0, 2]), extract_subnet(sup, layer_types_from_choice(
                            np.array([0, 1, 0, 2]), "jet")))):
        want = multiple_choice(ref, examples, tok.encode, bos_id=tok.bos_id, batch_size=4,
                               return_loglikelihoods=True)
        assert s.score(sup, choice)["mc"] == want["acc_norm"]
        got = Scorer(SubNetwork(sup, choice), batch_size=4).score(task.requests)
        lls = np.array([g.logprobs.sum() for g in got]).reshape(len(examples), 3)
        np.testing.assert_allclose(lls, np.array(want["loglikelihoods"]), rtol=1e-5, atol=1e-5)
    assert s.score(teacher)["mc"] == multiple_choice(teacher, examples, tok.encode,
                                                     bos_id=tok.bos_id)["acc_norm"]


def test_hardware_search_fixed_cache_and_timed_throughput(teacher, suite, trained, monkeypatch):
    sup, _ = trained
    refs = {"all_linear": suite.score(sup, np.full(4, LINEAR)),
            "all_attn": suite.score(sup, np.full(4, ATTN))}
    hs = HardwareSearchConfig(cache_tolerance=0.05, max_candidates=1, timing_max_rounds=1)
    kept, rejected = candidate_grid(teacher.config, "jet", hs)
    base = kept[0]["state_bytes"]
    assert all(abs(k["state_bytes"] - base) / base <= 0.05 for k in kept)
    assert any("differs" in r["reason"] for r in rejected)
    calls = []
    fake_now = iter(np.arange(0, 1e6, 0.25))  # every clock() call advances 0.25 s

    def fake_clock():
        calls.append(1)
        return float(next(fake_now))

    monkeypatch.setattr(tp, "clock", fake_clock)
    # 0 steps: the training recipe is covered by the `trained` fixture; here every compile
    # counts against the test-time budget.
    tcfg = SupernetTrainConfig(steps=0, optimizer=OptimizerSection(lr=1e-2, warmup_steps=0))
    th = ThroughputConfig(batch_size=1, context=4, steps=3)
    res = hardware_search(teacher, np.array([0, 1, 0, 0]), "jet", data=_data, suite=suite,
                          references=refs, train_cfg=tcfg, hs=hs, throughput=th)
    assert len(res["rows"]) == 2 and len(calls) == 2 * 2 * 3
    cache = {r["cache_bytes"] for r in res["rows"]}
    assert len(cache) == 1
    for r in res["rows"]:
        assert r["decode_tokens_per_s"] == pytest.approx(1 / 0.25)  # from the (fake) timer
    assert res["best"]["qualifies"]


def test_block_selection_table(teacher, suite, trained):
    sup, _ = trained
    refs = {"all_linear": suite.score(sup, np.full(4, LINEAR)),
            "all_attn": suite.score(sup, np.full(4, ATTN))}
    tcfg = SupernetTrainConfig(steps=0, optimizer=OptimizerSection(lr=1e-2, warmup_steps=0))
    res = select_block(teacher, np.array([0, 1, 0, 0]), ["gla", "nope"], data=_data, suite=suite,
                       references=refs, train_cfg=tcfg,
                       throughput=ThroughputConfig(batch_size=1, context=4, steps=2))
    assert [r["block"] for r in res["rows"]] == ["gla", "nope"]
    gla, nope = res["rows"]
    assert "error" not in gla, gla
    assert gla["decode_tokens_per_s"] > 0 and "mqar" in gla and gla["cache_bytes"] > 0
    assert "unknown linear block" in nope["error"]  # reported, not dropped
    assert res["best"] == "gla"


def test_attention_kernel_follows_the_teacher_through_supernet_and_subnets(teacher, tmp_path,
                                                                            kernel_calls):
    """`attention_implementation` (PostNAS setting): the teacher is built with it and the
    super-network and every extracted sub-network inherit it; "chunked" computes what the
    default does (1e-5); a bad name or "cudnn" is refused with one line."""
    from jet_jax_train.config import ConfigError
    from jet_jax_train.postnas.config import PostNASConfig
    from jet_jax_train.postnas.stages import get_teacher

    t = get_teacher(PostNASConfig(teacher="preset:tiny-qwen2", attention_implementation="chunked"),
                    tmp_path)
    assert {layer.self_attn.implementation for layer in t.model.layers} == {"chunked"}
    chunked_teacher = nnx.merge(*nnx.split(teacher))  # same weights as the default teacher
    for layer in chunked_teacher.model.layers:
        layer.self_attn.implementation = "chunked"
    plain = SuperNetwork.from_teacher(teacher, "jet", enable_swa=True, seed=3)
    sup = SuperNetwork.from_teacher(chunked_teacher, "jet", enable_swa=True, seed=3)
    assert plain.attention_implementation == "auto" and sup.attention_implementation == "chunked"
    ids = jax.random.randint(jax.random.key(1), (B, 20), 0, 256)
    seg = jnp.array([[1] * 9 + [2] * 11, [1] * 20])
    choice = jnp.array([ATTN, SWA, LINEAR, ATTN])
    kernel_calls["attention"].clear()
    np.testing.assert_allclose(sup(ids, choice, seg), plain(ids, choice, seg), atol=1e-5, rtol=0)
    # every layer's attention and SWA paths: chunked in `sup`, the default in `plain`
    assert kernel_calls["attention"] == ["chunked"] * 8 + ["auto"] * 8
    sub = extract_subnet(sup, layer_types_from_choice([ATTN, SWA, LINEAR, ATTN], "jet"))
    assert {sub.model.layers[i].self_attn.implementation for i in (0, 1, 3)} == {"chunked"}
    for bad in ("flash", "cudnn"):
        with pytest.raises(ConfigError, match=f"attention_implementation: '{bad}'"):
            PostNASConfig(attention_implementation=bad)
    from jet_jax_train.postnas.cli import preflight
    assert "'splash' runs on TPU only, this backend is cpu" in preflight(
        PostNASConfig(attention_implementation="splash"), "pipeline")


def _train_like_fixture(teacher, sup=None, data=None, on_log=None, **cfg):
    """The `trained` fixture's run (same super-network init, data, sampler, recipe) with the
    given SupernetTrainConfig fields changed: (trained super-network, history)."""
    sup = SuperNetwork.from_teacher(teacher, "jet", enable_swa=True, seed=1) if sup is None else sup
    tcfg = SupernetTrainConfig(steps=3, optimizer=OptimizerSection(lr=1e-2, warmup_steps=1),
                               log_every=1, **cfg)
    return train_supernet(sup, teacher, _data() if data is None else data,
                          ChoiceSampler(4, SamplingConfig(budget=1, seed=0)), tcfg, on_log=on_log)


class _ResumableData:
    """`_data()`'s stream with a position to checkpoint (as the grain iterators have)."""

    def __init__(self):
        self.batches, self.position = _rows(16, 1), 0

    def __iter__(self):
        return self

    def __next__(self):
        self.position += 1
        return self.batches[(self.position - 1) % len(self.batches)]

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def _linear_params(sup):
    return nnx.state(sup, nnx.All(nnx.Param, nnx.PathContains("linear")))


def test_teacher_param_dtype_holds_the_teacher_in_bfloat16(teacher, trained, tmp_path):
    """`teacher_param_dtype=bfloat16` (PostNAS setting): every way the pipeline gets its teacher
    (a preset, an HF directory, the one it pre-trained) holds the parameters in bf16 and
    computes in float32; the super-network copies them into float32 (the f32 teacher's arrays
    are shared, not copied); super-network training moves only by the teacher's bf16
    rounding; a resume with the other teacher dtype is refused, naming it; a bad value is
    refused in one line."""
    from jet_jax.convert.hf import to_hf
    from jet_jax_train.checkpointing import CheckpointError
    from jet_jax_train.config import ConfigError
    from jet_jax_train.postnas.config import PostNASConfig
    from jet_jax_train.postnas.stages import get_teacher

    def dtypes(model):
        return {x.dtype.name for x in jax.tree.leaves(nnx.state(model, nnx.Param))}

    half = dict(teacher_param_dtype="bfloat16")
    t32 = get_teacher(PostNASConfig(teacher="preset:tiny-qwen2"), tmp_path)
    t16 = get_teacher(PostNASConfig(teacher="preset:tiny-qwen2", **half), tmp_path)
    assert dtypes(t32) == {"float32"} and dtypes(t16) == {"bfloat16"}
    assert t16.model.embed_tokens.dtype == jnp.float32  # held in bf16, computes in float32
    emb32, emb16 = t32.model.embed_tokens.embedding[...], t16.model.embed_tokens.embedding[...]
    np.testing.assert_array_equal(emb16, emb32.astype(jnp.bfloat16))  # the same network, rounded
    to_hf(teacher, tmp_path / "teacher")  # an HF directory, and the pre-trained teacher's path
    assert dtypes(get_teacher(PostNASConfig(teacher=str(tmp_path / "teacher"), **half),
                              tmp_path)) == {"bfloat16"}
    reused = get_teacher(PostNASConfig(**half), tmp_path)
    assert dtypes(reused) == {"bfloat16"} and reused.model.embed_tokens.dtype == jnp.float32

    held = nnx.clone(teacher)  # the fixture's teacher, held in bf16 (a copy)
    nnx.update(held, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(held, nnx.Param)))
    sup16 = SuperNetwork.from_teacher(held, "jet", enable_swa=True, seed=1)
    sup32 = SuperNetwork.from_teacher(teacher, "jet", enable_swa=True, seed=1)
    assert dtypes(sup16) == {"float32"}
    w16 = sup16.model.layers[2].mlp.up_proj.kernel[...]
    np.testing.assert_array_equal(
        w16, teacher.model.layers[2].mlp.up_proj.kernel[...].astype(jnp.bfloat16).astype(jnp.float32))
    assert sup32.model.layers[2].mlp.up_proj.kernel[...] is teacher.model.layers[2].mlp.up_proj.kernel[...]

    ckpt = dict(checkpoint_dir=str(tmp_path / "bf16"), save_interval_steps=1)
    kl16 = [r["kl"] for r in _train_like_fixture(held, **ckpt)[1]]
    kl32 = [r["kl"] for r in trained[1]]
    assert kl16 != kl32
    np.testing.assert_allclose(kl16, kl32, rtol=2e-3)  # KL ~2e-3 here; rounding moved it 2e-4 (rel.)
    with pytest.raises(CheckpointError, match="teacher_param_dtype"):
        _train_like_fixture(teacher, **ckpt)  # resuming the bf16-teacher run, f32 teacher
    with pytest.raises(ConfigError) as e:
        PostNASConfig(teacher_param_dtype="float16")
    assert "\n" not in str(e.value) and "teacher_param_dtype" in str(e.value)


def test_bfloat16_compute_reaches_every_model_built_from_the_teacher(teacher, trained, tmp_path):
    """`dtype=bfloat16` (PostNAS setting): the teacher computes in bf16 with float32
    parameters, the super-network and its sub-networks inherit the compute dtype (parameters
    stay float32), logits stay float32, and super-network training follows the float32 run
    within bf16 rounding."""
    from jet_jax.convert.hf import to_hf
    from jet_jax_train.config import ConfigError
    from jet_jax_train.postnas.config import PostNASConfig
    from jet_jax_train.postnas.stages import get_teacher

    def params(model):
        return {x.dtype.name for x in jax.tree.leaves(nnx.state(model, nnx.Param))}

    to_hf(teacher, tmp_path / "teacher")
    # the fixture's teacher through the pipeline's loader, with the fixture's block and window
    t16 = get_teacher(PostNASConfig(teacher=str(tmp_path / "teacher"), dtype="bfloat16",
                                    jet_heads=2, jet_head_dim=8, window_size=6), tmp_path)
    assert t16.config == teacher.config  # the same network as the fixture's, so the same runs
    assert t16.model.embed_tokens.dtype == jnp.bfloat16 and params(t16) == {"float32"}
    sup16 = SuperNetwork.from_teacher(t16, "jet", enable_swa=True, seed=1)
    assert sup16.model.embed_tokens.dtype == jnp.bfloat16 and params(sup16) == {"float32"}
    types = ("attn", "jet", "jet", "swa")
    sub = extract_subnet(sup16, types)
    assert sub.model.embed_tokens.dtype == jnp.bfloat16 and params(sub) == {"float32"}
    ids = jnp.arange(2 * T).reshape(2, T) % 256
    l16 = sub(ids)
    l32 = extract_subnet(SuperNetwork.from_teacher(teacher, "jet", enable_swa=True, seed=1), types)(ids)
    assert l16.dtype == jnp.float32
    rel = float(jnp.linalg.norm(l16 - l32) / jnp.linalg.norm(l32))
    assert 0 < rel < 0.03, rel  # bf16 rounding through 4 layers (0.56% seen)

    loss16 = [h["loss"] for h in _train_like_fixture(t16)[1]]
    loss32 = [h["loss"] for h in trained[1]]
    assert np.isfinite(loss16).all() and loss16 != loss32
    np.testing.assert_allclose(loss16, loss32, rtol=0.02)  # 2.7e-3 seen
    with pytest.raises(ConfigError, match="dtype must be 'float32' or 'bfloat16'"):
        PostNASConfig(dtype="float16")


def test_supernet_training_on_a_mesh_equals_one_device(teacher, trained, monkeypatch, tmp_path):
    """`mesh` (PostNAS setting, here (2, 1, 4) over the 8 test devices): super-network training
    shards its step over the mesh and computes what one device computes (losses 1e-5, trained
    weights 1e-4: only the order of the sharded sums differs); the trained super-network stays
    on the mesh and scores there as on one device; (1, 1, 1) is one device though the host has
    8; a mesh the devices or the batch do not divide is refused in one line before anything
    runs, and so is any stage but `supernet` (or a missing teacher or mesh) on several
    processes."""
    from jet_jax_train.config import ConfigError
    from jet_jax_train.postnas import trainer
    from jet_jax_train.postnas.cli import preflight
    from jet_jax_train.postnas.config import PostNASConfig

    meshes = []
    real_init = trainer.SupernetDistillStep.__post_init__

    def spy(self):
        meshes.append(dict(self.mesh.shape))
        real_init(self)
    monkeypatch.setattr(trainer.SupernetDistillStep, "__post_init__", spy)
    one, hist1 = trained
    many, hist8 = _train_like_fixture(teacher, mesh_shape=(2, 1, 4))
    assert meshes == [{"data": 2, "fsdp": 1, "tensor": 4}]
    assert trainer.train_mesh((1, 1, 1)).devices.size == 1 and jax.device_count() == 8
    for key in ("loss", "kl"):
        np.testing.assert_allclose([h[key] for h in hist8], [h[key] for h in hist1], rtol=1e-5, atol=1e-7)
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                         _linear_params(one), _linear_params(
                             SuperNetwork.from_teacher(teacher, "jet", enable_swa=True, seed=1)))
    assert max(jax.tree.leaves(moved)) > 1e-2  # the steps trained (lr 1e-2)
    # Adam divides by the gradient's RMS, so a rounding-sized gradient difference can move a
    # weight by up to ~1e-4 (2e-5 seen) against the ~1e-2 the steps moved it
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=0),
                 _linear_params(many), _linear_params(one))
    # the trained weights stay on the mesh, so scoring runs there too
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(nnx.state(many, nnx.Param))} == {8}
    suite = TaskSuite(teacher=teacher, lm_batches=_lm_rows(1, 5))
    layer_types = layer_types_from_choice(np.array([ATTN, LINEAR, LINEAR, LINEAR]), "jet")
    np.testing.assert_allclose(suite.score(extract_subnet(many, layer_types))["kl"],
                               suite.score(extract_subnet(one, layer_types))["kl"], rtol=1e-4)
    # decode timings move a mesh-trained model to one device, as the teacher is timed
    timed = tp.measure_decode_throughput(extract_subnet(many, layer_types), context=4, steps=2)
    assert timed["decode_tokens_per_s"] > 0

    # every training stage gets the settings: the super-network's, and the candidates' and
    # finals' (`train_cfg`)
    from jet_jax_train.postnas import stages
    seen = []
    built = []
    monkeypatch.setattr(stages, "train_supernet",
                        lambda sup, t, data, sampler, tcfg, **kw: (
                            seen.append((tcfg.mesh_shape, tcfg.remat, tcfg.loss.logits_chunk)),
                            built.extend([t, sup]), (sup, []))[2])
    on_mesh = PostNASConfig(teacher="preset:tiny-qwen2", mesh=(2, 2, 2), batch_size=8,
                            supernet_steps=1, remat=True, logits_chunk=16)
    stages.stage_supernet(on_mesh, tmp_path, stages.get_teacher(on_mesh, tmp_path))
    assert seen == [((2, 2, 2), True, 16)]
    # the teacher and the super-network are built sharded over the mesh (no device holds
    # either whole), laid out as the train step lays them out
    mesh = trainer.train_mesh((2, 2, 2))
    for model in built:
        want = FlatModel(model).shardings(mesh)
        for k, x in FlatModel(model).params(model).items():
            assert x.sharding == want[k], k
    tc = stages.train_cfg(on_mesh, 1, 1e-3, False)
    assert (tc.mesh_shape, tc.remat, tc.loss.logits_chunk) == ((2, 2, 2), True, 16)
    assert preflight(on_mesh, "pipeline") is None
    assert "needs 3 devices but 8 are available" in preflight(
        PostNASConfig(teacher="preset:tiny-qwen2", mesh=(3, 1, 1)), "pipeline")
    assert preflight(PostNASConfig(teacher="preset:tiny-qwen2", mesh=(4, -1, 1), batch_size=6),
                     "pipeline") == ("batch_size 6 is not divisible by the mesh's data x fsdp = 8 "
                                     "(mesh (4, -1, 1))")
    with pytest.raises(ConfigError, match=r"mesh must be 3 positive sizes"):
        PostNASConfig(mesh=(0, 1, 1))

    # several processes (tests/test_multiprocess.py runs 2): only the super-network stage, with
    # a given teacher and a mesh whose batch axes split over the processes
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert preflight(on_mesh, "supernet") is None
    assert preflight(on_mesh, "search").startswith("`postnas search` runs in one process (2 here)")
    assert preflight(on_mesh, "pipeline").startswith("`postnas pipeline` runs in one process")
    assert "several processes need a given teacher" in preflight(
        on_mesh.replace(teacher=None), "supernet")
    assert "several processes need a mesh over all 8 devices" in preflight(
        on_mesh.replace(mesh=(1, 1, 1)), "supernet")
    assert preflight(on_mesh.replace(mesh=(1, 1, -1)), "supernet") == (
        "the mesh's data x fsdp = 1 is not a multiple of the 2 processes (each process feeds "
        "its own rows of the batch)")


def test_sigterm_saves_the_supernet_step_and_a_rerun_resumes_to_the_same_weights(
        teacher, trained, tmp_path, monkeypatch, capsys):
    """SIGTERM during super-network training with checkpoints (the pipeline's supernet_ckpt/):
    the loop stops at the next step boundary, that step is saved and `Interrupted` names it;
    the same run started again resumes there and ends with the uninterrupted run's KL and
    weights, bitwise. `jet-jax postnas` and `jet-jax demo` exit 0 on it."""
    import os
    import signal

    from jet_jax_train.postnas.trainer import Interrupted
    ckpt = dict(checkpoint_dir=str(tmp_path / "ckpt"), save_interval_steps=100)

    def preempt(rec):
        if rec["step"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(Interrupted) as e:
        _train_like_fixture(teacher, data=_ResumableData(), on_log=preempt, **ckpt)
    assert (e.value.step, e.value.signum) == (1, signal.SIGTERM)
    assert "saved step 1" in str(e.value) and "again to resume" in str(e.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    resumed, hist = _train_like_fixture(teacher, data=_ResumableData(), **ckpt)
    assert [r["step"] for r in hist] == [2, 3]
    assert [r["kl"] for r in hist] == [r["kl"] for r in trained[1][1:]]
    for a, b in zip(jax.tree.leaves(_linear_params(resumed)), jax.tree.leaves(_linear_params(trained[0]))):
        np.testing.assert_array_equal(a, b)

    from jet_jax.cli import main
    from jet_jax_train.postnas import cli

    def stopped(*_args, **_kw):
        raise Interrupted(2, signal.SIGTERM, "supernet_ckpt")
    monkeypatch.setattr(cli, "get_teacher", lambda cfg, out: None)
    monkeypatch.setattr(cli, "stage_supernet", stopped)
    monkeypatch.setattr(cli, "pipeline", stopped)
    sets = ["--set", "teacher=preset:tiny-qwen2", "--output-dir", str(tmp_path / "out")]
    capsys.readouterr()
    assert main(["postnas", "supernet", *sets]) == 0
    assert "stopped: signal 15: saved step 2 to supernet_ckpt" in capsys.readouterr().out
    assert main(["demo", *sets]) == 0
    assert "jet-jax demo: stopped: signal 15: saved step 2" in capsys.readouterr().out


def test_supernet_remat_and_logits_chunk_train_the_same(teacher, trained, monkeypatch):
    """`remat` and `logits_chunk` (PostNAS settings, for memory): the super-network's layers
    are rematerialised and the KL is computed 8 positions at a time, and the losses (1e-5) and
    trained weights (1e-4, see the mesh test) are those of the plain step; the caller's module
    is left as it was. (That every stage gets them: the mesh test.)"""
    from jet_jax_train.postnas import trainer

    chunks, remats = [], []
    real_init, real_remat = trainer.SupernetDistillStep.__post_init__, nnx.remat

    def spy_init(self):
        real_init(self)
        chunks.append(self.logits_chunk)

    def spy_remat(fn, *a, **kw):
        remats.append(fn.__name__)
        return real_remat(fn, *a, **kw)
    monkeypatch.setattr(trainer.SupernetDistillStep, "__post_init__", spy_init)
    monkeypatch.setattr(nnx, "remat", spy_remat)
    sup = SuperNetwork.from_teacher(teacher, "jet", enable_swa=True, seed=1)
    lean, hist_lean = _train_like_fixture(teacher, sup, remat=True, loss=LossSection(logits_chunk=8))
    assert chunks == [8] and remats and set(remats) == {"run_layer"}
    assert lean.remat and not sup.remat
    plain, hist = trained
    for key in ("loss", "kl"):
        np.testing.assert_allclose([h[key] for h in hist_lean], [h[key] for h in hist], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=0),
                 nnx.state(lean, nnx.Param), nnx.state(plain, nnx.Param))


def test_cli_parses_and_overrides():
    import argparse
    from jet_jax_train.postnas import cli
    p = argparse.ArgumentParser()
    cli.register(p)
    args = p.parse_args(["search", "--config", "configs/postnas_tiny.py", "--set", "budget=2",
                         "--set", "blocks=['jet','gla']", "--output-dir", "/tmp/x"])
    cfg = cli._config(args)
    assert cfg.budget == 2 and cfg.blocks == ("jet", "gla") and cfg.output_dir == "/tmp/x"
    with pytest.raises(ValueError, match="unknown PostNAS setting"):
        cli._config(p.parse_args(["search", "--set", "nope=1"]))


def test_pipeline_end_to_end_reduced(tmp_path):
    """`jet-jax demo` (the PostNAS pipeline) on a reduced budget: every stage runs, the final
    table has the teacher, the searched and both baseline placements, and the exported HF
    directory loads back into the searched student's logits."""
    import json

    import jax.numpy as jnp

    from jet_jax.cli import main
    from jet_jax.convert.hf import from_hf
    out = tmp_path / "demo"
    sets = ["teacher_layers=3", "teacher_steps=4", "seq_len=48", "batch_size=4",
            "supernet_steps=4", "blocks=('jet','gla')", "block_steps=2", "hardware_steps=2",
            "hardware_max_candidates=2", "final_steps=3", "final_seeds=2", "eval_lm_batches=1",
            "eval_mqar_batches=1", "decode_context=8", "decode_steps=2"]
    assert main(["demo", "--output-dir", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    summary = json.loads((out / "results.json").read_text())  # the one results file
    models = [r["model"] for r in summary["eval"]]
    assert models[0].startswith("teacher") and models[1].startswith("searched")
    assert any(m.startswith("uniform") for m in models) and any(m.startswith("worst") for m in models)
    search = json.loads((out / "search.json").read_text())
    assert summary["layer_types"] == search["best"]["layer_types"]
    assert summary["layer_types"].count("attn") == 1
    for name in ("report.md", "importance.png", "hardware.png", "final_kl.png", "blocks.json",
                 "final_scores.png"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    assert "Final distillation" in report and "Hardware-aware search" in report
    exported = from_hf(out / "final" / "searched")
    assert list(exported.config.layer_types) == summary["layer_types"]
    ids = jnp.arange(20)[None] % 200
    searched_row = summary["eval"][1]
    assert np.isfinite(searched_row["mqar"]) and np.isfinite(exported(ids)).all()
