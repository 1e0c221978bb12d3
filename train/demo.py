"""`jet-jax demo`: the whole PostNAS pipeline on embedded data, on a CPU.

Default: `configs/postnas_tiny.py` through `train.postnas.cli.pipeline` (tiny teacher ->
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
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

DEFAULT_OUT = "runs/demo"
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default=None,
                        help="where everything goes (default: runs/demo, or the config's output_dir "
                             "with --full)")
    parser.add_argument("--full", action="store_true",
                        help="the longer PostNAS run (configs/postnas_full.py) instead of the "
                             "12-minute default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a PostNAS setting (repeatable), e.g. --set budget=2")
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


def ce_train_step(flat, tx):
    """Jitted (params, opt_state, batch) -> (params, opt_state, loss): one cross-entropy step
    of `flat` (a train.flat_model.FlatModel) with the optax transform `tx`."""
    from train.losses import cross_entropy

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            logits = flat.merge(p)(batch["input_ids"], batch["segment_ids"], batch["positions"])
            return cross_entropy(logits, batch["targets"], batch["loss_mask"])
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


def train_teacher(model_cfg, data_cfg, *, steps: int, lr: float, warmup_steps: int, seed: int,
                  out_dir: str, progress: str = "tqdm", print_fn=print) -> dict:
    """Cross-entropy pre-training of a Qwen2-architecture model; saved with `to_hf`."""
    from jet_jax.convert.hf import to_hf
    from jet_jax.model import JetNemotronForCausalLM
    from train.data.pipeline import make_train_iterator
    from train.flat_model import FlatModel

    if not model_cfg.is_qwen2:
        raise ValueError("the demo teacher must be a Qwen2 (all-attn) config")
    model = JetNemotronForCausalLM(model_cfg, rngs=nnx.Rngs(seed))
    flat = FlatModel(model)
    params = flat.params(model)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup_steps, steps - 1), steps,
                                                  end_value=lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, b2=0.95, weight_decay=0.01,
                                 mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
    opt_state = tx.init(params)

    step = ce_train_step(flat, tx)
    it = make_train_iterator(data_cfg)
    from tqdm import tqdm
    bar = tqdm(range(steps), desc="teacher", disable=progress == "none", dynamic_ncols=True)
    t0 = time.perf_counter()
    loss = None
    for i in bar:
        params, opt_state, loss = step(params, opt_state, next(it))
        if (i + 1) % 10 == 0:
            bar.set_postfix_str(f"ce {float(loss):.3f}")
    wall = time.perf_counter() - t0
    to_hf(flat.merge(params), out_dir, dtype=jnp.float32, overwrite=True)
    tokens = steps * data_cfg.batch_size * data_cfg.seq_len
    print_fn(f"teacher: {steps} steps, final train CE {float(loss):.3f}, {tokens / wall:.0f} tokens/s, "
             f"saved to {out_dir}")
    return {"steps": steps, "final_ce": float(loss), "tokens_per_s": tokens / wall, "wall_s": wall}


def run(args: argparse.Namespace) -> int:
    if args.distill_only:
        return run_distill_demo(args)
    from train.postnas.cli import pipeline
    from train.postnas.config import apply_overrides, load_config
    name = "postnas_full.py" if args.full else "postnas_tiny.py"
    cfg = apply_overrides(load_config(os.path.join(CONFIG_DIR, name)), args.set)
    if args.output_dir or not args.full:
        cfg = cfg.replace(output_dir=args.output_dir or DEFAULT_OUT)
    pipeline(cfg)
    return 0


def run_distill_demo(args: argparse.Namespace) -> int:
    from configs import demo as demo_cfg
    from train.distill import run_distill

    t0 = time.perf_counter()
    out = os.path.abspath(args.output_dir or os.path.join(DEFAULT_OUT, "distill"))
    teacher_dir = os.path.join(out, "teacher")
    cfg = demo_cfg.get_config()
    data = cfg.data
    if args.seq_len is not None:
        data = dataclasses.replace(data, seq_len=args.seq_len)
    if args.batch_size is not None:
        data = dataclasses.replace(data, batch_size=args.batch_size)
    t = demo_cfg.TEACHER
    teacher_steps = args.teacher_steps if args.teacher_steps is not None else t.steps
    teacher_info = None
    if args.retrain_teacher or not os.path.exists(os.path.join(teacher_dir, "config.json")):
        teacher_info = train_teacher(t.model, data, steps=teacher_steps, lr=t.lr,
                                     warmup_steps=t.warmup_steps, seed=t.seed, out_dir=teacher_dir,
                                     progress=args.progress)
    else:
        print(f"reusing the teacher in {teacher_dir} (--retrain-teacher to train it again)")
    cfg = dataclasses.replace(
        cfg, data=data,
        model=dataclasses.replace(cfg.model, teacher=teacher_dir),
        train=dataclasses.replace(cfg.train, output_dir=os.path.join(out, "student"),
                                  steps=args.steps if args.steps is not None else cfg.train.steps),
        logging=dataclasses.replace(cfg.logging, progress=args.progress))
    s = run_distill(cfg)
    from jet_jax.convert.hf import to_hf
    student_dir = os.path.join(out, "student", "hf")
    to_hf(s["flat_model"].merge(jax.device_get(s["final_params"])), student_dir,
          dtype=jnp.float32, overwrite=True)
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
