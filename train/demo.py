"""`jet-jax demo`: the whole PostNAS pipeline on embedded data, on a CPU.

Default: `configs/postnas_tiny.py` through `jet_jax_train.postnas.cli.pipeline` (tiny teacher ->
super-network -> placement search -> block selection -> hardware search -> final distillation
of the searched and baseline placements -> evaluation vs the teacher -> HF export -> report.md)
in 10-13 minutes on 2 CPU cores. `--full` runs `configs/postnas_full.py` (longer training
at every stage); `--set key=value` overrides any PostNAS setting.

`--distill-only` runs the 2-minute distillation demo instead:

1. Train a tiny Qwen2-architecture TEACHER from scratch (cross-entropy) on byte-level
   Shakespeare + MQAR, and save it as an HF directory with `to_hf` (reused if it exists).
2. Distil a Jet-Nemotron student (jet / attn / swa / jet) from that directory through the
   same path a real Qwen2.5 checkpoint takes: `from_hf` -> `student_from_teacher` -> the
   distillation loop (train/distill.py), with checkpoints, eval and metrics.
3. Print teacher vs student held-out loss, KL to the teacher at init vs at the end, and
   MQAR accuracy. Everything lands under --output-dir (default runs/demo).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jet_jax_configs
from jet_jax_train.pretrain import ce_train_step, train_teacher  # noqa: F401  (re-exported)

DEFAULT_OUT = "runs/demo"
CONFIG_DIR = os.path.dirname(jet_jax_configs.__file__)  # configs/, wherever it is installed


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default=None,
                        help="where everything goes (default: runs/demo, or the config's output_dir "
                             "with --full)")
    parser.add_argument("--full", action="store_true",
                        help="the longer PostNAS run (configs/postnas_full.py) instead of the "
                             "12-minute default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting (repeatable): a PostNAS setting, e.g. --set "
                             "budget=2, or with --distill-only a distillation one, e.g. --set "
                             "train.steps=50")
    parser.add_argument("--distill-only", action="store_true",
                        help="only the 2-minute teacher -> student distillation demo")
    g = parser.add_argument_group("--distill-only options")
    g.add_argument("--teacher-steps", type=int, default=None, help="teacher training steps")
    g.add_argument("--steps", type=int, default=None, help="distillation steps")
    g.add_argument("--seq-len", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--retrain-teacher", action="store_true",
                   help="train the teacher again even if <output-dir>/teacher exists")
    g.add_argument("--progress", default="tqdm", choices=("tqdm", "rich", "none"))


def run(args: argparse.Namespace) -> int:
    """Validate every setting first (one-line error, nothing written), then run."""
    from jet_jax_train.config import ConfigError
    try:
        cfg = distill_demo_config(args) if args.distill_only else postnas_demo_config(args)
    except ConfigError as e:
        print(f"jet-jax demo: error: {e}", file=sys.stderr)
        return 2
    if args.distill_only:
        return run_distill_demo(args, cfg)
    from jet_jax_train.postnas.cli import pipeline, preflight
    from jet_jax_train.postnas.trainer import Interrupted
    problem = preflight(cfg, "pipeline")
    if problem:
        print(f"jet-jax demo: error: {problem}", file=sys.stderr)
        return 2
    try:
        pipeline(cfg)
    except Interrupted as e:  # SIGTERM / Ctrl-C during the super-network: its step is saved
        print(f"jet-jax demo: stopped: {e}")
    return 0


def postnas_demo_config(args: argparse.Namespace):
    """configs/postnas_tiny.py (or _full.py with --full), then --set, then --output-dir."""
    from jet_jax_train.config import apply_overrides
    from jet_jax_train.postnas.config import load_config
    name = "postnas_full.py" if args.full else "postnas_tiny.py"
    cfg = apply_overrides(load_config(os.path.join(CONFIG_DIR, name)), args.set)
    if args.output_dir or not args.full:
        cfg = cfg.replace(output_dir=args.output_dir or DEFAULT_OUT)
    return cfg


def distill_demo_config(args: argparse.Namespace):
    """configs/demo.py's distillation stage with the demo's options, then --set (TrainConfig
    keys, e.g. train.steps=50)."""
    from jet_jax_configs import demo as demo_cfg
    from jet_jax_train.config import apply_overrides
    out = os.path.abspath(args.output_dir or os.path.join(DEFAULT_OUT, "distill"))
    cfg = demo_cfg.get_config()
    data = cfg.data
    if args.seq_len is not None:
        data = dataclasses.replace(data, seq_len=args.seq_len)
    if args.batch_size is not None:
        data = dataclasses.replace(data, batch_size=args.batch_size)
    cfg = dataclasses.replace(
        cfg, data=data,
        model=dataclasses.replace(cfg.model, teacher=os.path.join(out, "teacher")),
        train=dataclasses.replace(cfg.train, output_dir=os.path.join(out, "student"),
                                  steps=args.steps if args.steps is not None else cfg.train.steps),
        logging=dataclasses.replace(cfg.logging, progress=args.progress))
    return apply_overrides(cfg, args.set)


def run_distill_demo(args: argparse.Namespace, cfg) -> int:
    from jet_jax_configs import demo as demo_cfg
    from jet_jax_train.distill import run_distill

    t0 = time.perf_counter()
    out = os.path.abspath(args.output_dir or os.path.join(DEFAULT_OUT, "distill"))
    teacher_dir = cfg.model.teacher
    t = demo_cfg.TEACHER
    teacher_steps = args.teacher_steps if args.teacher_steps is not None else t.steps
    teacher_info = None
    if args.retrain_teacher or not os.path.exists(os.path.join(teacher_dir, "config.json")):
        teacher_info = train_teacher(t.model, cfg.data, steps=teacher_steps, lr=t.lr,
                                     warmup_steps=t.warmup_steps, seed=t.seed, out_dir=teacher_dir,
                                     progress=cfg.logging.progress)
    else:
        print(f"reusing the teacher in {teacher_dir} (--retrain-teacher to train it again)")
    s = run_distill(cfg)
    student_dir = s["exported"]  # <out>/student/hf unless --set train.export=...
    init, final = s["init_eval"] or {}, s["final_eval"] or {}
    wall = time.perf_counter() - t0
    results = {
        "teacher_heldout_ce": final.get("teacher_ce"),
        "student_heldout_ce_init": init.get("ce"), "student_heldout_ce_final": final.get("ce"),
        "kl_to_teacher_init": init.get("kl"), "kl_to_teacher_final": final.get("kl"),
        "teacher_mqar_acc": final.get("teacher_mqar_acc"),
        "student_mqar_acc_init": init.get("mqar_acc"), "student_mqar_acc_final": final.get("mqar_acc"),
        "distill_steps": s["end_step"], "distill_tokens_per_s": s.get("tokens_per_s"),
        "teacher": teacher_info, "wall_s": wall, "student_hf_dir": student_dir,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print("\n=== Jet-Nemotron demo results (held-out Shakespeare, byte level; nats/token) ===")
    rows = [("teacher (Qwen2, full attention) held-out CE", results["teacher_heldout_ce"]),
            ("student held-out CE at init", results["student_heldout_ce_init"]),
            ("student held-out CE after distillation", results["student_heldout_ce_final"]),
            ("KL(teacher || student) at init", results["kl_to_teacher_init"]),
            ("KL(teacher || student) after distillation", results["kl_to_teacher_final"]),
            ("MQAR accuracy: teacher", results["teacher_mqar_acc"]),
            ("MQAR accuracy: student at init", results["student_mqar_acc_init"]),
            ("MQAR accuracy: student after distillation", results["student_mqar_acc_final"])]
    for name, v in rows:
        print(f"  {name:<45} {'n/a' if v is None else f'{v:.4f}'}")
    print(f"  distillation throughput: {results['distill_tokens_per_s'] or 0:.0f} tokens/s; "
          f"total wall time {wall:.0f} s; results in {out}/results.json")
    return 0
