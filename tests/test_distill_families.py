"""A Jet-Nemotron student distilled from a tiny Llama and a tiny Qwen3 teacher (HF directories
saved with save_pretrained) through `jet-jax distill`: KL to the teacher decreases, and a run
resumed from a mid-run checkpoint reproduces the uninterrupted run's losses."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jet_jax.cli import main
from tests.hf_fixtures import tiny_llama, tiny_qwen3
from jet_jax_train.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]
STEPS = 12


def _distill(teacher_dir, out_dir, capsys):
    sets = [f"model.teacher={teacher_dir}", f"train.steps={STEPS}", f"train.output_dir={out_dir}",
            "checkpoint.save_interval_steps=6", "checkpoint.max_to_keep=5", "logging.interval=1",
            "logging.progress=none", "logging.tensorboard=false", "eval.interval=1000",
            "eval.num_batches=2", "eval.mqar_batches=0", "data.seq_len=48", "data.batch_size=4",
            "mesh.shape=(1, 1, 1)"]
    argv = ["distill", "--config", str(REPO / "configs/distill_tiny.py")]
    for s in sets:
        argv += ["--set", s]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    return out, json.loads(out[out.index("{\n"):])


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen3], ids=["llama", "qwen3"])
def test_distill_from_hf_teacher_lowers_kl_and_resumes(tmp_path, capsys, make):
    # vocab 512 holds the byte tokenizer's ids; head_dim 16 = the config's JetBlock dk; a
    # wide init gives the random teacher peaked predictions (a KL worth reducing).
    make(tmp_path / "teacher", vocab=512, hidden=64, inter=96, layers=4, heads=4, kv=2, head_dim=16,
         init_std=0.15)
    _, summary = _distill(tmp_path / "teacher", tmp_path / "run", capsys)
    init, final = summary["init_eval"], summary["final_eval"]
    assert final["kl"] < 0.9 * init["kl"], (init["kl"], final["kl"])
    losses = {r["step"]: r["loss"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl", "train")}
    assert sorted(losses) == list(range(1, STEPS + 1))

    # Drop the final checkpoint: the rerun resumes at step 6 and recomputes 7..12 identically.
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "6").is_dir() and (ckpts / str(STEPS)).is_dir()
    shutil.rmtree(ckpts / str(STEPS))
    out, resumed = _distill(tmp_path / "teacher", tmp_path / "run", capsys)
    assert "resumed from" in out and resumed["start_step"] == 6
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl", "train")
    again = {r["step"]: r["loss"] for r in records[STEPS:]}
    assert sorted(again) == list(range(7, STEPS + 1))
    for step, loss in again.items():
        np.testing.assert_allclose(loss, losses[step], rtol=1e-6, err_msg=str(step))
