"""`jet-jax plan` (memory plan from abstract shapes) and jet_jax_train.distributed (mesh, start-up)."""

import os
from pathlib import Path
import time

import jax
import pytest

from jet_jax_configs.presets import JET_NEMOTRON_2B, QWEN2_5_1_5B, TINY_JET, TINY_QWEN2
from jet_jax.config import ModelConfig, count_params
from jet_jax_train.distributed import (initialize_distributed, mesh_from_config, parse_mesh,
                               resolve_mesh_shape)
from jet_jax_train.plan import activation_bytes, layer_activation_bytes, plan_memory


def unsharded_count(cfg: ModelConfig) -> int:
    """Parameters the fsdp axis does not split, from the config alone: the norms, the
    attention biases, and the JetBlock's per-head scalars and o_norm. Every other parameter has
    a hidden (`embed`) dim or is the conv generator's output (`conv_taps`: V * W, divisible by
    the fsdp sizes used here), which the rules split over `fsdp`."""
    d, j = cfg.hidden_size, cfg.jet
    n = d  # final norm
    for t in cfg.layer_types:
        n += 2 * d
        if t in ("attn", "swa"):
            n += (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
        else:
            n += 2 * j.num_heads + j.head_v_dim
    return n


def frozen_count(cfg: ModelConfig) -> int:
    """Embeddings, MLPs, decoder norms and the final norm (tied head)."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    return cfg.vocab_size * d + cfg.num_hidden_layers * (3 * d * f + 2 * d) + d


def test_tiny_single_device_matches_count_params():
    p = plan_memory(TINY_JET, (1, 1, 1), batch_per_device=2, seq_len=16, param_dtype="f32",
                    teacher="auto", teacher_dtype="bf16")
    total = count_params(TINY_JET)
    assert p["params_total"] == total
    assert p["bytes"]["params"] == total * 4
    assert p["bytes"]["grads"] == total * 4
    assert p["bytes"]["optimizer"] == 2 * 4 * total + 4
    teacher = TINY_JET.replace(layer_types=("attn",) * 4)
    assert p["bytes"]["teacher params"] == count_params(teacher) * 2
    assert p["bytes"]["logits"] == 2 * 4 * TINY_JET.vocab_size * 2 * 16 * 2
    assert p["replicated_params"] == []


@pytest.mark.parametrize("cfg", [TINY_JET, TINY_QWEN2], ids=["tiny-jet", "tiny-qwen2"])
def test_tiny_fsdp_sharding_against_arithmetic(cfg):
    fsdp = 8
    p = plan_memory(cfg, (1, fsdp, 1), param_dtype="bf16", teacher="none", frozen_mlp=True)
    total, rest = count_params(cfg), unsharded_count(cfg)
    assert (total - rest) % fsdp == 0
    assert p["bytes"]["params"] == ((total - rest) // fsdp + rest) * 2
    assert p["replicated_params_bytes"] <= rest * 2
    assert p["bytes"]["teacher params"] == 0
    # frozen: embeddings, MLPs, decoder norms, final norm -> no grads / moments for them
    trainable = total - frozen_count(cfg)
    assert p["params_trainable"] == trainable
    # every trainable matrix has a hidden dim except the unsharded leftovers minus the norms
    norms = cfg.hidden_size * (2 * cfg.num_hidden_layers + 1)
    t_rest = rest - norms
    assert p["bytes"]["grads"] == ((trainable - t_rest) // fsdp + t_rest) * 2
    assert p["bytes"]["optimizer"] == 2 * 4 * ((trainable - t_rest) // fsdp + t_rest) + 4


def test_tensor_axis_and_activation_formula():
    cfg = TINY_JET
    p1 = plan_memory(cfg, "1,1,1", batch_per_device=1, seq_len=64, teacher="none")
    p4 = plan_memory(cfg, "1,1,4", batch_per_device=1, seq_len=64, teacher="none")
    assert p4["bytes"]["params"] < p1["bytes"]["params"]
    assert p4["bytes"]["logits"] == p1["bytes"]["logits"] // 4  # vocab split over tensor
    # jet layers are linear in tokens, attention layers quadratic in the sequence
    jet = [layer_activation_bytes(cfg, "jet", 1, t, 2) for t in (64, 128)]
    att = [layer_activation_bytes(cfg, "attn", 1, t, 2) for t in (1024, 2048)]
    assert jet[1] == 2 * jet[0]
    assert att[1] > 3 * att[0]
    assert layer_activation_bytes(cfg, "swa", 2, 64, 2) == layer_activation_bytes(cfg, "attn", 2, 64, 2)
    # remat keeps only layer inputs + one layer
    full = activation_bytes(cfg, 2, 64, 2, 1, remat=False)
    rem = activation_bytes(cfg, 2, 64, 2, 1, remat=True)
    d = cfg.hidden_size
    assert rem["total"] == 4 * d * 2 * 128 + full["max_layer"] + 2 * d * 2 * 128
    assert full["total"] == sum(layer_activation_bytes(cfg, t, 2, 64, 2) for t in cfg.layer_types) \
        + 2 * d * 2 * 128
    # hand check of one attention layer: common + projections + scores
    b, t, hq, kv, hd, f = 2, 64, 4, 2, 16, cfg.intermediate_size
    want = (4 * d + 4 * f) * 2 * b * t + (2 * hq * hd + 3 * kv * hd + hq * hd) * 2 * b * t \
        + b * t * t * (hq * 6 + 1)
    assert layer_activation_bytes(cfg, "attn", b, t, 2) == want


def test_2b_on_256_chip_fsdp_from_abstract_shapes():
    t0 = time.perf_counter()
    p = plan_memory("jet-nemotron-2b", "1,256,1", batch_per_device=1, seq_len=4096,
                    frozen_mlp=True)
    assert time.perf_counter() - t0 < 20
    total, rest = count_params(JET_NEMOTRON_2B), unsharded_count(JET_NEMOTRON_2B)
    assert p["params_total"] == total
    assert p["bytes"]["params"] == ((total - rest) // 256 + rest) * 4
    assert p["teacher_params_total"] == count_params(QWEN2_5_1_5B)
    # Qwen2.5-1.5B: only norms and q/k/v biases are not split over fsdp
    q_rest = unsharded_count(QWEN2_5_1_5B)
    assert p["bytes"]["teacher params"] == ((count_params(QWEN2_5_1_5B) - q_rest) // 256 + q_rest) * 2
    assert p["bytes"]["total"] == sum(v for k, v in p["bytes"].items() if k != "total")


def test_cli_prints_table_and_rejects_bad_input(capsys, tmp_path):
    from jet_jax.cli import main
    assert main(["plan", "--model", "tiny-jet", "--mesh", "1,8,1", "--seq-len", "32"]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "activations" in out and "optimizer" in out
    cfg_path = tmp_path / "config.json"
    TINY_QWEN2.save_json(cfg_path)
    assert main(["plan", "--model", str(cfg_path), "--mesh", "1,2,1", "--json"]) == 0
    assert '"params_total": %d' % count_params(TINY_QWEN2) in capsys.readouterr().out
    assert main(["plan", "--model", "no-such-model", "--mesh", "1,8,1"]) == 2
    assert "neither a preset" in capsys.readouterr().err
    assert main(["plan", "--model", "tiny-jet", "--mesh", "1,x,1"]) == 2
    assert "comma-separated" in capsys.readouterr().err


def test_blocked_attention_is_linear_in_tokens_and_counts_visible_keys(capsys):
    """With a blocked attention kernel the plan's attention layer is linear in T (dense:
    quadratic) and its FLOPs count the keys a query sees (causal, or within the window)."""
    from jet_jax.cli import main
    from jet_jax_train.plan import mixer_flops_per_token

    cfg = TINY_JET
    for att in ("chunked", "cudnn", "splash"):
        a = [layer_activation_bytes(cfg, "attn", 1, t, 2, attention=att) for t in (1024, 2048)]
        assert a[1] == 2 * a[0]
    assert layer_activation_bytes(cfg, "attn", 1, 2048, 2) > 3 * layer_activation_bytes(cfg, "attn", 1, 1024, 2)
    t, w, hq, hd = 4096, 256, cfg.num_attention_heads, cfg.head_dim
    dense = mixer_flops_per_token(cfg, "attn", t)
    assert dense == 4 * t * hq * hd == mixer_flops_per_token(cfg, "swa", t)
    assert mixer_flops_per_token(cfg, "attn", t, "chunked") == pytest.approx(dense * (t + 1) / (2 * t))
    assert mixer_flops_per_token(cfg.replace(window_size=w), "swa", t, "splash") == pytest.approx(
        4 * hq * hd * (w * (w + 1) / 2 + (t - w) * w) / t)
    # only "chunked" adds its backward transient; the plan says which attention it assumed
    p = {a: plan_memory(cfg, "1,1,1", seq_len=1024, teacher="none", attention_implementation=a)
         for a in ("xla", "chunked", "cudnn")}
    assert p["chunked"]["bytes"]["attention bwd (transient)"] > 0
    assert p["cudnn"]["bytes"]["attention bwd (transient)"] == p["xla"]["bytes"]["attention bwd (transient)"] == 0
    assert p["cudnn"]["bytes"]["total"] < p["chunked"]["bytes"]["total"] < p["xla"]["bytes"]["total"]
    assert p["cudnn"]["attention"] == "cudnn"
    with pytest.raises(ValueError, match="'auto'"):
        plan_memory(cfg, "1,1,1", attention_implementation="auto")
    assert main(["plan", "--model", "tiny-jet", "--mesh", "1,1,1", "--attention-implementation",
                 "splash", "--json"]) == 0
    assert '"attention": "splash"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["plan", "--model", "tiny-jet", "--mesh", "1,1,1", "--attention-implementation", "flash"])
    assert "--attention-implementation" in capsys.readouterr().err


# ----------------------------------------------------------------------------- distributed
def test_mesh_from_config_validates_device_count():
    n = jax.device_count()
    assert n == 8  # tests/conftest.py: 8 fake CPU devices
    m = mesh_from_config((2, -1, 1))
    assert dict(m.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert mesh_from_config("1,8,1").devices.size == 8
    with pytest.raises(ValueError, match=r"needs 256 devices but 8 are available"):
        mesh_from_config((1, 256, 1))
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        resolve_mesh_shape((-1, -1, 1), 8)
    with pytest.raises(ValueError, match="not divisible"):
        resolve_mesh_shape((3, -1, 1), 8)
    with pytest.raises(ValueError, match="has 2 axes"):
        mesh_from_config((2, 4))
    assert parse_mesh("1,256,1") == (1, 256, 1)


def test_initialize_distributed_single_process_is_noop(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
                "SLURM_NPROCS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    info = initialize_distributed()
    assert info["how"] in ("single-process", "already")
    assert info["process_count"] == 1 and info["device_count"] == 8
    with pytest.raises(ValueError, match=r"process_id 5 is outside \[0, 2\)"):
        initialize_distributed("localhost:1", num_processes=2, process_id=5)


TWO_PROCESS = """
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
from jet_jax_train.distributed import initialize_distributed, mesh_from_config
info = initialize_distributed(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
mesh = mesh_from_config((1, -1, 1))
print(json.dumps({**info, "mesh": dict(mesh.shape)}))
"""


def test_two_processes_on_cpu(tmp_path):
    """Real `jax.distributed` start-up: 2 processes x 2 CPU devices -> a 4-device mesh."""
    import json
    import socket
    import subprocess
    import sys
    from pathlib import Path
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS, f"localhost:{port}", str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-2000:]
    infos = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert sorted(i["process_index"] for i in infos) == [0, 1]
    for i in infos:
        assert i["how"] == "explicit" and i["process_count"] == 2
        assert i["device_count"] == 4 and i["local_device_count"] == 2
        assert i["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}


def test_supernet_plan_flops_and_chip_time():
    from jet_jax_train.plan import CHIPS
    cfg = TINY_JET
    attn_mixer = 2 * 64 * 64 + 2 * (64 * 32) + 64 + 2 * 32  # q, o, k, v kernels + q/k/v biases
    all_attn = count_params(cfg.replace(layer_types=("attn",) * 4))
    all_jet = count_params(cfg.replace(layer_types=("jet",) * 4))
    sup = plan_memory(cfg, (1, 1, 1), supernet=True, teacher="none", seq_len=16)
    assert sup["params_total"] == all_jet + 4 * attn_mixer
    assert sup["params_trainable"] == all_jet - (all_attn - 4 * attn_mixer)  # the JetBlocks
    assert sup["activations_per_layer"]["super"] == (
        layer_activation_bytes(cfg, "attn", 1, 16, 2) + layer_activation_bytes(cfg, "jet", 1, 16, 2)
        - (4 * 64 + 4 * cfg.intermediate_size) * 2 * 16)
    # everything trainable: backward = 2 x forward; remat adds one forward; teacher forward only
    full = plan_memory(cfg, (1, 1, 1), teacher="none", seq_len=16, chip="h100")
    f = full["flops"]
    assert f["student_bwd"] == 2 * f["student_fwd"] and f["remat"] == 0 == f["teacher_fwd"]
    rem = plan_memory(cfg, (1, 1, 1), teacher="auto", seq_len=16, remat=True)["flops"]
    assert rem["remat"] == rem["student_fwd"] == f["student_fwd"] and rem["teacher_fwd"] > 0
    frozen = plan_memory(cfg, (1, 1, 1), teacher="none", seq_len=16, frozen_mlp=True)["flops"]
    assert frozen["student_fwd"] == f["student_fwd"] and frozen["student_bwd"] < f["student_bwd"]
    assert full["step_time_s"]["at_peak"] == f["total"] / CHIPS["h100"]["peak_flops"]
    assert full["fits"]


def test_gathered_weights_and_logits_chunk():
    """FSDP gathers: nothing on one device; on fsdp=4 without remat, the student's whole
    per-layer weights (count_params of the layers) + its tied head [V, D] + the teacher's head
    and largest layer, all gathered whole (tensor = 1). logits_chunk c: logits for c positions."""
    one = plan_memory(TINY_JET, (1, 1, 1), batch_per_device=2, seq_len=16, teacher=None)
    assert one["bytes"]["gathered weights (FSDP)"] == 0
    d, v = TINY_JET.hidden_size, TINY_JET.vocab_size
    p = plan_memory(TINY_JET, (1, 4, 1), batch_per_device=2, seq_len=16, param_dtype="f32",
                    teacher=None)
    layers_sharded = count_params(TINY_JET) - v * d - unsharded_count(TINY_JET)
    assert p["bytes"]["gathered weights (FSDP)"] == (v * d + layers_sharded) * 4
    r = plan_memory(TINY_JET, (1, 4, 1), batch_per_device=2, seq_len=16, param_dtype="f32",
                    teacher=None, remat=True)
    assert v * d * 4 < r["bytes"]["gathered weights (FSDP)"] < p["bytes"]["gathered weights (FSDP)"]
    c = plan_memory(TINY_JET, (1, 1, 1), batch_per_device=2, seq_len=16, teacher=None,
                    logits_chunk=4)
    assert c["bytes"]["logits"] * 4 == one["bytes"]["logits"]


def test_plan_of_a_distill_config_is_the_run_distill_builds(tmp_path, capsys):
    """`jet-jax plan --config`: the student is the one `run_distill` builds from the config's
    teacher (its real construction path is the oracle), and every other setting reaches the
    plan: the plan equals `plan_memory` called with the run's flags by hand."""
    import json

    import numpy as np

    from jet_jax.cli import main
    from jet_jax_configs import distill_tiny
    from jet_jax_train.config import apply_overrides
    from jet_jax_train.distill import load_teacher, student_layer_types
    from jet_jax_train.plan import distill_run_args
    from jet_jax_train.student import student_from_teacher

    sets = ["data.seq_len=256", "data.batch_size=8", "mesh.shape=(2, -1, 1)", "model.remat=true",
            "model.dtype=bfloat16", "model.teacher_param_dtype=bfloat16", "loss.logits_chunk=64",
            "model.attention_implementation=chunked", "optimizer.grad_accum_steps=2",
            "model.window_size=32"]
    cfg = apply_overrides(distill_tiny.get_config(), sets)
    kw = distill_run_args(cfg, chips=4)
    teacher = load_teacher(cfg.model.teacher)
    built = student_from_teacher(teacher, student_layer_types(cfg, teacher.config.num_hidden_layers),
                                 jet=cfg.model.jet, window_size=cfg.model.window_size).config
    assert kw["model"] == built and kw["teacher"] == teacher.config
    assert kw["mesh"] == (2, 2, 1) and kw["batch_per_device"] == 2 and kw["notes"] == []

    by_hand = plan_memory(built, "2,2,1", batch_per_device=2, seq_len=256, param_dtype="f32",
                          dtype="bf16", remat=True, frozen_mlp=True, teacher=teacher.config,
                          teacher_dtype="bf16", grad_accum=2, logits_chunk=64,
                          attention_implementation="chunked")
    config = str(Path(distill_tiny.__file__))
    assert main(["plan", "--config", config, "--chips", "4", "--json"]
                + [a for s in sets for a in ("--set", s)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["bytes"] == by_hand["bytes"] and got["params_trainable"] == by_hand["params_trainable"]
    # the teacher held in float32 (distill's default) doubles its row; nothing else moves
    f32 = plan_memory(built, "2,2,1", batch_per_device=2, seq_len=256, dtype="bf16", remat=True,
                      frozen_mlp=True, teacher=teacher.config, teacher_dtype="f32", grad_accum=2,
                      logits_chunk=64, attention_implementation="chunked")
    assert f32["bytes"]["teacher params"] == 2 * by_hand["bytes"]["teacher params"]
    # optimizer.unfreeze_all: every parameter trains
    free = distill_run_args(apply_overrides(cfg, ["optimizer.unfreeze_all=true"]), chips=4)
    assert free["frozen_patterns"] == ()
    np.testing.assert_equal(plan_memory(free.pop("model"), free.pop("mesh"),
                                        **{k: v for k, v in free.items() if k != "notes"}
                                        )["params_trainable"], by_hand["params_total"])

    # one line, before any work, for what cannot be planned
    for argv, needle in (
            (["--config", config], "has a -1: give --chips"),
            (["--config", config, "--chips", "3", "--set", "mesh.shape=(2, -1, 1)"],
             "3 devices are not divisible by the fixed axes' product 2"),
            (["--config", config, "--chips", "3"], "data.batch_size 8 does not split"),
            (["--config", config, "--chips", "4", "--seq-len", "512"], "--seq-len: with --config"),
            (["--config", config, "--chips", "4", "--set", "model.teacher=/nowhere"], "/nowhere"),
            (["--model", "tiny-jet", "--mesh", "1,1,1", "--set", "data.seq_len=8"], "--set needs --config"),
            ([], "give --model")):
        assert main(["plan"] + argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and needle in err, (argv, err)


def test_plan_of_a_postnas_config_is_the_super_network_the_stage_builds(tmp_path, capsys):
    """`jet-jax plan --config` on a PostNAS config plans its super-network stage: the model is
    the super-network `stage_supernet` builds from the config's teacher (its parameter count
    and trainable count are the built module's, exactly), and every setting reaches the plan
    (it equals `plan_memory(..., supernet=True)` called with the settings by hand)."""
    import json

    from jet_jax.cli import main
    from jet_jax_configs import postnas_tiny
    from jet_jax_train.config import apply_overrides
    from jet_jax_train.plan import postnas_run_args
    from jet_jax_train.postnas.stages import get_teacher, jet_config
    from flax import nnx

    from jet_jax_train.postnas.supernet import SuperNetwork
    from jet_jax_train.postnas.supernet import count_params as module_params

    sets = ["teacher=preset:tiny-qwen2", "seq_len=256", "batch_size=8", "mesh=(2, -1, 1)",
            "remat=true", "dtype=bfloat16", "teacher_param_dtype=bfloat16", "logits_chunk=64",
            "attention_implementation=chunked", "output_dir=" + str(tmp_path)]
    cfg = apply_overrides(postnas_tiny.CONFIG, sets)
    kw = postnas_run_args(cfg, chips=4)
    teacher = get_teacher(cfg, tmp_path)
    sup = SuperNetwork.from_teacher(teacher, cfg.block, seed=cfg.seed, jet=jet_config(cfg),
                                    window_size=cfg.window_size)
    assert kw["model"] == sup.config and kw["mesh"] == (2, 2, 1) and kw["batch_per_device"] == 2
    by_hand = plan_memory(sup.config, "2,2,1", supernet=True, batch_per_device=2, seq_len=256,
                          param_dtype="f32", dtype="bf16", remat=True, teacher=kw["teacher"],
                          teacher_dtype="bf16", logits_chunk=64, attention_implementation="chunked")
    assert by_hand["params_total"] == module_params(sup)
    assert by_hand["params_trainable"] == module_params(sup, nnx.All(nnx.Param,
                                                                     nnx.PathContains("linear")))
    config = str(Path(postnas_tiny.__file__))
    capsys.readouterr()  # get_teacher's log line
    assert main(["plan", "--config", config, "--chips", "4", "--json"]
                + [a for s in sets for a in ("--set", s)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["bytes"] == by_hand["bytes"] and got["supernet"] is True
    assert got["notes"] == ["the super-network stage: the later stages train sub-networks of it"]
    # the default mesh (1, 1, 1) is one device whatever --chips says, as the run takes it
    assert postnas_run_args(postnas_tiny.CONFIG, chips=8)["mesh"] == (1, 1, 1)

    for extra, needle in ((["--set", "block=gla"], "only the JetBlock super-network is planned"),
                          (["--set", "mesh=(3, 1, 1)"], "needs 3 devices but 4 are available"),
                          (["--set", "batch_size=6"], "batch_size 6 does not split over the 4"),
                          (["--set", "teacher=/nowhere"], "/nowhere"),
                          (["--set", "bugdet=2"], "bugdet")):
        assert main(["plan", "--config", config, "--chips", "4"]
                    + [a for s in sets for a in ("--set", s)] + extra) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and needle in err, (extra, err)
