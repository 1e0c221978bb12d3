"""The distillation loop end to end: kill -9 / resume reproducibility, and a demo-like run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jet_jax_train.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
OVERRIDES = [f"train.steps={STEPS}", "checkpoint.save_interval_steps=2", "checkpoint.max_to_keep=3",
             "logging.interval=1", "logging.progress=none", "logging.tensorboard=false",
             "eval.num_batches=0", "eval.mqar_batches=0", "data.seq_len=48", "data.batch_size=4",
             "mesh.shape=(1, 1, 1)"]


def _cmd(out_dir):
    cmd = [sys.executable, "-m", "jet_jax.cli", "distill", "--config", str(REPO / "configs/distill_tiny.py")]
    for o in OVERRIDES + [f"train.output_dir={out_dir}"]:
        cmd += ["--set", o]
    return cmd


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = ""  # one CPU device in the subprocess
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _losses(out_dir):
    """{step: loss} keeping the LAST record of each step (a resumed run rewrites steps)."""
    return {r["step"]: r["loss"] for r in read_jsonl(Path(out_dir) / "metrics.jsonl", "train")}


def _train_steps(out_dir):
    p = Path(out_dir) / "metrics.jsonl"
    return [r["step"] for r in read_jsonl(p, "train")] if p.exists() else []


def test_sigkill_and_resume_reproduces_uninterrupted_run(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    subprocess.run(_cmd(ref_dir), env=_env(), check=True, cwd=REPO, timeout=600,
                   capture_output=True)
    ref = _losses(ref_dir)
    assert sorted(ref) == list(range(1, STEPS + 1))

    # Kill -9 while a save is in flight (an Orbax tmp dir exists) if we catch one, else as
    # soon as step 5 is logged (checkpoints 2 and 4 complete, 6 not yet written).
    proc = subprocess.Popen(_cmd(run_dir), env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    ckpt_dir = run_dir / "checkpoints"
    killed_during_save = False
    deadline = time.time() + 600
    def complete_steps():
        return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) \
            if ckpt_dir.exists() else []

    while proc.poll() is None and time.time() < deadline:
        if complete_steps() and any("tmp" in p.name for p in ckpt_dir.iterdir()):
            killed_during_save = True
            break
        if max(_train_steps(run_dir), default=0) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "hf").exists()  # only a finished run writes the student
    logged_before_kill = max(_train_steps(run_dir))
    assert logged_before_kill < STEPS
    last_complete = complete_steps()[-1]

    out = subprocess.run(_cmd(run_dir), env=_env(), cwd=REPO, timeout=600, capture_output=True,
                         text=True, check=True)
    assert "resumed from" in out.stdout, out.stdout[-2000:]
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert summary["start_step"] == last_complete >= 2, (summary, killed_during_save)
    got = _losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    # Bitwise: same batches, same params, same optimizer state after the restore.
    for step in range(1, STEPS + 1):
        assert got[step] == ref[step], (step, got[step], ref[step], killed_during_save)
    # Steps after the restore point were recomputed and logged twice, identically.
    records = read_jsonl(run_dir / "metrics.jsonl", "train")
    resumed = [r for r in records if r["step"] == summary["start_step"] + 1]
    assert len(resumed) == 2 and resumed[0]["loss"] == resumed[1]["loss"]
    # The exported student of the resumed run is the uninterrupted run's, byte for byte.
    assert summary["exported"] == str(run_dir / "hf")
    from safetensors.numpy import load_file
    got_t, ref_t = load_file(run_dir / "hf" / "model.safetensors"), load_file(ref_dir / "hf" / "model.safetensors")
    assert sorted(got_t) == sorted(ref_t)
    for k in ref_t:
        np.testing.assert_array_equal(got_t[k], ref_t[k], err_msg=k)


def test_demo_like_run_reduces_kl_to_teacher(tmp_path):
    """Teacher trained from scratch with CE, saved with to_hf, student from `from_hf`;
    distillation lowers KL(teacher || student) below its value at init."""
    import dataclasses

    from jet_jax_configs import demo
    from jet_jax_train.demo import train_teacher
    from jet_jax_train.distill import run_distill

    data = dataclasses.replace(demo.DATA, seq_len=64, batch_size=8)
    teacher_dir = tmp_path / "teacher"
    train_teacher(demo.TEACHER.model, data, steps=40, lr=3e-3, warmup_steps=5, seed=0,
                  out_dir=str(teacher_dir), progress="none", print_fn=lambda *_: None)
    assert (teacher_dir / "config.json").exists()
    cfg = demo.get_config()
    cfg = dataclasses.replace(
        cfg, data=data, model=dataclasses.replace(cfg.model, teacher=str(teacher_dir)),
        mesh=dataclasses.replace(cfg.mesh, shape=(1, 1, 1)),  # see test_train_step: 8-device CPU deadlock
        train=dataclasses.replace(cfg.train, steps=30, output_dir=str(tmp_path / "student")),
        eval=dataclasses.replace(cfg.eval, interval=1000, num_batches=2, mqar_batches=1),
        logging=dataclasses.replace(cfg.logging, progress="none", tensorboard=False))
    s = run_distill(cfg, print_fn=lambda *_: None)
    init, final = s["init_eval"], s["final_eval"]
    assert np.isfinite(final["kl"]) and init["kl"] > 0
    assert final["kl"] < 0.8 * init["kl"], (init["kl"], final["kl"])
    assert 0.0 <= final["mqar_acc"] <= 1.0
    # The finished run wrote the student where `jet-jax generate` / `eval` load it from; it
    # is the trained student exactly (f32 throughout).
    from jet_jax.checkpoint_io import load_model
    assert s["exported"] == str(tmp_path / "student" / "hf")
    ids = np.arange(40, dtype=np.int32).reshape(2, 20) % 200
    want = s["flat_model"].merge(jax.device_get(s["final_params"]))(ids)
    np.testing.assert_array_equal(load_model(s["exported"])(ids), want)


@pytest.mark.parametrize("fmt, sub", [("orbax", "model"), ("none", None)])
def test_finished_distill_exports_the_student_as_configured(tmp_path, fmt, sub):
    """`train.export=orbax` writes `<output_dir>/model` (the same logits as the trained
    student); `none` writes no model folder."""
    from jet_jax_configs import distill_tiny
    from jet_jax.checkpoint_io import load_model
    from jet_jax_train.config import apply_overrides
    from jet_jax_train.distill import run_distill

    cfg = apply_overrides(distill_tiny.get_config(),
                          OVERRIDES[1:] + ["train.steps=2", f"train.export={fmt}",
                                           f"train.output_dir={tmp_path}"])
    s = run_distill(cfg, print_fn=lambda *_: None)
    assert not (tmp_path / "hf").exists()
    if sub is None:
        assert s["exported"] is None and not (tmp_path / "model").exists()
        return
    assert s["exported"] == str(tmp_path / sub)
    ids = np.arange(32, dtype=np.int32).reshape(2, 16)
    want = s["flat_model"].merge(jax.device_get(s["final_params"]))(ids)
    np.testing.assert_array_equal(load_model(s["exported"])(ids), want)
