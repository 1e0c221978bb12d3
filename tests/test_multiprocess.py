"""Pod code paths on one machine: 2 JAX processes x 4 CPU devices (`jax.distributed` over
127.0.0.1, gloo collectives) against 1 process x 8 CPU devices, on a (data, fsdp, tensor) =
(2, 2, 2) mesh.

* the 2-process distillation run's losses equal the 1-process run's, step by step;
* SIGTERM to one process -> every process saves the same step and exits 0 -> a relaunch
  resumes and reproduces the uninterrupted 2-process run bitwise;
* SIGKILL of one process -> the other exits non-zero within the heartbeat timeout;
* Orbax checkpoints written by 2 processes restore in 1 process on other meshes, and back,
  with equal arrays and the merged per-process data state;
* `postnas supernet` on 2 processes x 2 devices equals 1 process x 4 devices (KL history,
  written super-network), written once by process 0.

Every subprocess is bounded by a timeout. The distillation runs cost minutes on 2 shared
cores, so those tests are marked slow (run them with `python -m pytest -m slow
tests/test_multiprocess.py`); the checkpoint round trip runs by default.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jet_jax_train.launch import spawn
from jet_jax_train.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]
# Steps are fast (~0.3 s each here) and the host runs a few steps ahead of the metrics the test
# polls, so SIGTERM sent after step 2's loss lands at step ~4 and the processes agree to stop one
# step later; with 6 steps a loaded CI machine once put that step at the last one (nothing left
# to interrupt). 12 steps leave room.
STEPS = 12
RUN_TIMEOUT_S = 900  # one distillation run (compile + 12 steps) on 2 shared cores: ~1-2 min
HEARTBEAT_S = 20  # JET_JAX_HEARTBEAT_TIMEOUT_S for the failure test
OVERRIDES = [f"train.steps={STEPS}", "checkpoint.save_interval_steps=2", "checkpoint.max_to_keep=5",
             "logging.interval=1", "logging.progress=none", "logging.tensorboard=false",
             "eval.num_batches=0", "eval.mqar_batches=0", "data.seq_len=48", "data.batch_size=8",
             "data.num_shards=2", "mesh.shape=(2, 2, 2)"]


def _args(out_dir):
    args = ["distill", "--config", str(REPO / "configs/distill_tiny.py")]
    for o in OVERRIDES + [f"train.output_dir={out_dir}"]:
        args += ["--set", o]
    return args


def _losses(out_dir):
    """{step: loss}, the LAST record of each step (a resumed run rewrites steps)."""
    p = Path(out_dir) / "metrics.jsonl"
    return {r["step"]: r["loss"] for r in read_jsonl(p, "train")} if p.exists() else {}


def _wait(procs, timeout):
    outs = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            outs.append(p.communicate(timeout=max(1, deadline - time.monotonic()))[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"multi-process run did not finish in {timeout} s")
    return outs


def _two_processes(out_dir, extra_env=None):
    env = dict(os.environ, **(extra_env or {}))
    return spawn(_args(out_dir), 2, cpu_devices_per_process=4, env=env, cwd=REPO,
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_two(out_dir):
    procs = _two_processes(out_dir)
    outs = _wait(procs, RUN_TIMEOUT_S)
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
    return outs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("two")
    _run_two(out)
    return out


@pytest.mark.slow
def test_two_processes_equal_one_process_step_by_step(tmp_path, two_process_run):
    one = tmp_path / "one"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    subprocess.run([sys.executable, "-m", "jet_jax.cli", *_args(one)], env=env, cwd=REPO,
                   check=True, capture_output=True, timeout=RUN_TIMEOUT_S)
    ref, got = _losses(one), _losses(two_process_run)
    assert sorted(ref) == sorted(got) == list(range(1, STEPS + 1))
    # Same global batches and parameters; only the order of the cross-process reductions
    # differs (measured: <= 2e-6 relative).
    np.testing.assert_allclose([got[s] for s in sorted(got)], [ref[s] for s in sorted(ref)],
                               rtol=1e-5, atol=0)
    # The exported student: gathered from both processes, written once, the 1-process one's
    # up to the same reduction order.
    from safetensors.numpy import load_file
    want, have = (load_file(d / "hf" / "model.safetensors") for d in (one, two_process_run))
    assert sorted(want) == sorted(have)
    for k in want:
        np.testing.assert_allclose(have[k], want[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_sigterm_to_one_process_saves_exits_zero_and_resume_is_bitwise(tmp_path, two_process_run):
    run = tmp_path / "run"
    procs = _two_processes(run)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while max(_losses(run), default=0) < 2 and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a process ended before step 2"
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # one host is preempted, not all
    outs = _wait(procs, RUN_TIMEOUT_S)
    assert [p.returncode for p in procs] == [0, 0], outs[1][-3000:]
    assert all('"interrupted": true' in o for o in outs), outs[0][-3000:]
    from jet_jax_train.checkpointing import TrainCheckpointer
    stopped = TrainCheckpointer(run / "checkpoints", save_interval_steps=1).latest_step()
    # both processes stopped after the same step, and that step was saved
    assert all(f"saving step {stopped} and stopping" in o for o in outs), outs[0][-3000:]
    assert 2 <= stopped < STEPS and max(_losses(run)) == stopped

    _run_two(run)  # the relaunch resumes from `stopped`
    ref, got = _losses(two_process_run), _losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert [got[s] for s in range(1, STEPS + 1)] == [ref[s] for s in range(1, STEPS + 1)]


@pytest.mark.slow
def test_sigkill_of_one_process_fails_the_other_within_the_heartbeat_timeout(tmp_path):
    run = tmp_path / "run"
    procs = _two_processes(run, {"JET_JAX_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_S)})
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while max(_losses(run), default=0) < 1 and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a process ended before step 1"
        time.sleep(0.1)
    procs[1].kill()
    t0 = time.monotonic()
    try:
        out = procs[0].communicate(timeout=HEARTBEAT_S + 60)[0]
    except subprocess.TimeoutExpired:
        procs[0].kill()
        raise AssertionError(f"process 0 still running {HEARTBEAT_S + 60} s after its peer died")
    waited = time.monotonic() - t0
    procs[1].communicate()
    assert procs[0].returncode != 0
    assert waited < HEARTBEAT_S + 60
    assert "another task died" in out or "distributed service detected fatal errors" in out, \
        out[-3000:]


def test_checkpoints_restore_across_process_counts_and_meshes(tmp_path):
    import jax

    from tests import multiprocess_checkpoint_worker as worker
    from jet_jax_train.distributed import mesh_from_config

    def two(mode, directory, mesh, seed):
        procs = spawn([mode, str(directory), mesh, str(seed)], 2, cpu_devices_per_process=4,
                      module="tests.multiprocess_checkpoint_worker", cwd=REPO,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        outs = _wait(procs, 300)
        for p, o in zip(procs, outs):
            assert p.returncode == 0, o[-3000:]
        return [json.loads(o[o.rindex("RESULT ") + 7:].splitlines()[0]) for o in outs]

    assert jax.device_count() == 8 and jax.process_count() == 1
    # 2 processes x (2,2,2) -> 1 process on (1,8,1) and (8,1,1)
    two("save", tmp_path / "a", "2,2,2", 3)
    for shape in ("1,8,1", "8,1,1"):
        data = worker.restore(str(tmp_path / "a"), mesh_from_config(shape), 3)
        # each process's data state (its input shard) is in the checkpoint
        assert data["iterator"] == {"num_shards": 2, "shards": {"0": {"position": 3},
                                                                  "1": {"position": 13}}}
    # 1 process (1,8,1) -> 2 processes on (2,2,2) and (1,4,2)
    worker.save(str(tmp_path / "b"), mesh_from_config("1,8,1"), 5)
    for shape in ("2,2,2", "1,4,2"):
        res = two("restore", tmp_path / "b", shape, 5)
        assert sorted(r["process"] for r in res) == [0, 1]
        assert all(r["data"]["iterator"]["shards"] == {"0": {"position": 5}} for r in res)


@pytest.mark.slow
def test_postnas_supernet_on_two_processes_equals_one_process(tmp_path):
    """The super-network stage as one job of 2 processes x 2 devices, (data, fsdp, tensor) =
    (4, 1, 1), against 1 process x 4 devices on the same mesh shape."""
    def args(out):
        return ["postnas", "supernet", "--config", str(REPO / "configs/postnas_tiny.py"),
                "--set", "teacher=preset:tiny-qwen2", "--set", "mesh=(-1, 1, 1)",
                "--set", "supernet_steps=3", "--set", "seq_len=64", "--output-dir", str(out)]

    procs = spawn(args(tmp_path / "two"), 2, cpu_devices_per_process=2, cwd=REPO,
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outs = _wait(procs, RUN_TIMEOUT_S)
    for p, o in zip(procs, outs):
        assert p.returncode == 0, o[-3000:]
    # process 0 speaks and writes; process 1 only trains
    assert "[postnas" in outs[0] and "[postnas" not in outs[1], outs[1][-2000:]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    subprocess.run([sys.executable, "-m", "jet_jax.cli", *args(tmp_path / "one")], env=env,
                   cwd=REPO, check=True, capture_output=True, timeout=RUN_TIMEOUT_S)

    hist = {n: json.loads((tmp_path / n / "supernet_history.json").read_text())
            for n in ("one", "two")}
    assert [r["choice"] for r in hist["two"]] == [r["choice"] for r in hist["one"]]
    assert len(hist["two"]) == 3
    # same global batches (each process reads its half of every batch) and parameters; only
    # the order of the cross-process reductions differs
    np.testing.assert_allclose([r["kl"] for r in hist["two"]], [r["kl"] for r in hist["one"]],
                               rtol=1e-5, atol=0)
    # the written super-networks load as the later (one-process) stages load them; in 3
    # steps every trained weight moved by >= 1.6e-3, and the two runs differ by <= 5.3e-8
    import jax
    from flax import nnx

    from jet_jax_train.config import apply_overrides
    from jet_jax_train.postnas import stages
    from jet_jax_train.postnas.config import load_config
    cfg = apply_overrides(load_config(str(REPO / "configs/postnas_tiny.py")),
                          ["teacher=preset:tiny-qwen2"])
    teacher = stages.get_teacher(cfg, tmp_path)
    want, have = (jax.tree.leaves(nnx.state(stages.load_supernet(tmp_path / n / "supernet",
                                                                  teacher), nnx.Param))
                  for n in ("one", "two"))
    assert len(want) == len(have) > 0
    for a, b in zip(have, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_preemption_flag_in_one_process():
    from jet_jax_train.preemption import Preemption
    stop = Preemption()
    with stop.installed():
        assert not stop.should_stop(0)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.should_stop(1) and stop.signum == signal.SIGTERM and stop.stopped_at == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_launcher_supervision_kills_survivors_after_the_grace_period():
    from jet_jax_train.launch import supervise
    fail = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    hang = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    said = []
    t0 = time.monotonic()
    assert supervise([fail, hang], grace_s=1.0, print_fn=said.append) == 3
    assert time.monotonic() - t0 < 30
    assert hang.returncode == -signal.SIGKILL
    assert any("process 0 exited with status 3" in s for s in said)
    assert any("killing it" in s for s in said)
    ok = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    assert supervise(ok, grace_s=1.0, print_fn=said.append) == 0
