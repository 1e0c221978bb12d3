"""`model.scan_layers` and the `model.*_implementation` kernel choices of a distillation run:
validated before any work, passed to both the student and the teacher, and training the same
student as the defaults; a run may resume under other choices (they are not in the
checkpoint's config fingerprint)."""

import signal
from pathlib import Path

import numpy as np
import pytest

from jet_jax_configs import distill_tiny
from jet_jax_train.checkpointing import CheckpointError
from jet_jax_train.config import ConfigError, ModelSection, apply_overrides
from jet_jax_train.distill import run_distill
from jet_jax_train.metrics import read_jsonl

BASE = ["checkpoint.save_interval_steps=1", "logging.interval=1", "logging.progress=none",
        "logging.tensorboard=false", "eval.num_batches=0", "eval.mqar_batches=0", "data.seq_len=48",
        "data.batch_size=4", "mesh.shape=(1, 1, 1)", "train.export=none"]
KERNELS = ["model.attention_implementation=chunked", "model.gdr_implementation=recurrent",
           "model.conv_implementation=reference"]


def _run(tmp_path, name, steps, extra):
    out = tmp_path / name
    cfg = apply_overrides(distill_tiny.get_config(),
                          BASE + [f"train.steps={steps}", f"train.output_dir={out}"] + extra)
    summary = run_distill(cfg, print_fn=lambda *_: None)
    losses = {r["step"]: r["loss"] for r in read_jsonl(Path(out) / "metrics.jsonl", "train")}
    return summary, losses


@pytest.mark.parametrize("key, value", [("attention_implementation", "flash"),
                                        ("gdr_implementation", "triton"),
                                        ("conv_implementation", "cudnn")])
def test_unknown_implementation_is_one_line_naming_key_and_choices(key, value):
    with pytest.raises(ConfigError) as e:
        apply_overrides(distill_tiny.get_config(), [f"model.{key}={value}"])
    msg = str(e.value)
    assert "\n" not in msg and f"model.{key}" in msg and repr(value) in msg and "auto" in msg
    with pytest.raises(ConfigError, match=f"model.{key}"):
        ModelSection(**{key: value})
    with pytest.raises(ConfigError, match="'cudnn' takes no segment ids"):
        apply_overrides(distill_tiny.get_config(), ["model.attention_implementation=cudnn"])
    with pytest.raises(ConfigError, match="scan_layers"):
        apply_overrides(distill_tiny.get_config(), ["model.scan_layers=maybe"])


def test_splash_off_tpu_is_refused_before_any_work(tmp_path, capsys):
    """Splash is a TPU kernel: elsewhere `jet-jax distill` stops with one line naming the
    setting, and writes nothing."""
    from jet_jax.cli import main
    from jet_jax_train.distill import check_kernels

    cfg = apply_overrides(distill_tiny.get_config(), ["model.attention_implementation=splash"])
    check_kernels(cfg, backend="tpu")  # fine there
    with pytest.raises(ConfigError, match="'splash' runs on TPU only, this backend is gpu"):
        check_kernels(cfg, backend="gpu")
    out = tmp_path / "run"
    rc = main(["distill", "--config", str(Path(distill_tiny.__file__)), "--set",
               "model.attention_implementation=splash", "--set", f"train.output_dir={out}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "model.attention_implementation" in err and "cpu" in err
    assert not out.exists()


def test_choices_reach_student_and_teacher_and_train_the_same_student(tmp_path, kernel_calls):
    """Three steps with the defaults, with scan_layers, and with explicit non-default kernels:
    the same losses (float32; 1e-5 relative: only the order of float operations differs)."""
    seen = kernel_calls
    _, plain = _run(tmp_path, "plain", 3, [])
    # distill_tiny on CPU at 48 tokens: auto runs dense attention, chunked GDR, the reference conv
    assert set(seen["attention"]) == {"auto"} and set(seen["gdr"]) == {"auto"}
    for v in seen.values():
        v.clear()
    scan_summary, scanned = _run(tmp_path, "scan", 3, ["model.scan_layers=true"])
    assert scan_summary["flat_model"].merge(scan_summary["final_params"]).scan_layers
    _, kernels = _run(tmp_path, "kernels", 3, KERNELS)
    # the tiny teacher is 4 attention layers; the student 1 attn + 1 swa + 2 jet layers. Every
    # traced call of the kernel run (teacher and student) asked for the configured kernel.
    assert seen["attention"].count("chunked") >= 4 + 2
    assert "recurrent" in seen["gdr"] and "reference" in seen["conv"]
    assert sorted(plain) == sorted(scanned) == sorted(kernels) == [1, 2, 3]
    for step in plain:
        np.testing.assert_allclose(scanned[step], plain[step], rtol=1e-5)
        np.testing.assert_allclose(kernels[step], plain[step], rtol=1e-5)


def test_resume_under_other_kernels(tmp_path, monkeypatch):
    """A run stopped (as by SIGTERM) at step 2 with the defaults continues with scan_layers and
    other kernels in the same directory: it resumes from the saved step instead of refusing
    the config. A change of what is computed is still refused."""
    import jet_jax_train.distill as distill

    class StopAtTwo(distill.Preemption):
        def should_stop(self, step):
            if step >= 2 and self.signum is None:
                self.signum = signal.SIGTERM
            return super().should_stop(step)

    with monkeypatch.context() as m:
        m.setattr(distill, "Preemption", StopAtTwo)
        first, _ = _run(tmp_path, "run", 4, [])
    assert first["interrupted"] and first["end_step"] == 2
    resumed, losses = _run(tmp_path, "run", 4, ["model.scan_layers=true"] + KERNELS)
    assert resumed["start_step"] == 2 and resumed["end_step"] == 4
    assert sorted(losses) == [1, 2, 3, 4]
    with pytest.raises(CheckpointError, match="window_size"):
        _run(tmp_path, "run", 4, ["model.window_size=16"])


def test_teacher_param_dtype_holds_the_teacher_in_bfloat16(tmp_path, monkeypatch):
    """`model.teacher_param_dtype=bfloat16`: the teacher's parameters are bf16 (half the
    memory), the student trains with float32 compute as before, and the losses move only by the
    teacher's bf16 rounding. The setting is part of what a resume checks; at its default it is
    left out of the fingerprint, so checkpoints from before it existed still resume."""
    import jax
    import jax.numpy as jnp

    import jet_jax_train.distill as distill
    from jet_jax_train.checkpointing import CheckpointError

    loaded = []
    real = distill.load_teacher

    def spy(*a, **kw):
        model = real(*a, **kw)
        from flax import nnx
        loaded.append({x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))})
        return model

    monkeypatch.setattr(distill, "load_teacher", spy)
    _, f32 = _run(tmp_path, "f32", 2, [])
    _, bf16 = _run(tmp_path, "bf16", 2, ["model.teacher_param_dtype=bfloat16"])
    assert loaded == [{jnp.dtype(jnp.float32)}, {jnp.dtype(jnp.bfloat16)}]
    assert sorted(f32) == sorted(bf16) == [1, 2]
    # The student starts as a copy of the teacher, so the KL is small (~0.01 here); rounding
    # the teacher's weights to bf16 moves it by a few 1e-3 at most.
    assert bf16[1] != f32[1]
    np.testing.assert_allclose([bf16[s] for s in (1, 2)], [f32[s] for s in (1, 2)], atol=5e-3)
    # the same (preset) teacher held in bf16 computes float32 logits within bf16 rounding of
    # float32's
    ids = jnp.arange(48)[None] % 200
    t32, t16 = (real("preset:tiny-qwen2", param_dtype=p, seed=1) for p in (jnp.float32, jnp.bfloat16))
    l32, l16 = t32(ids), t16(ids)
    assert l16.dtype == jnp.float32
    assert 0 < float(jnp.max(jnp.abs(l16 - l32))) < 2e-2 * float(jnp.max(jnp.abs(l32)))

    default = distill_tiny.get_config()
    assert "teacher_param_dtype" not in distill.fingerprint(default)["model"]
    half = apply_overrides(default, ["model.teacher_param_dtype=bfloat16"])
    assert distill.fingerprint(half)["model"]["teacher_param_dtype"] == "bfloat16"
    with pytest.raises(CheckpointError, match="teacher_param_dtype"):
        _run(tmp_path, "bf16", 3, [])  # resuming the bf16-teacher run with a float32 teacher
    with pytest.raises(ConfigError) as e:
        apply_overrides(default, ["model.teacher_param_dtype=float16"])
    assert "\n" not in str(e.value) and "model.teacher_param_dtype" in str(e.value)
