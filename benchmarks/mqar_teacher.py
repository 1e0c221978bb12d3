"""How fast does a tiny full-attention teacher learn MQAR? (CPU; prints a table.)

Trains the tiny Qwen2 preset from scratch with cross-entropy on the byte-level Shakespeare +
MQAR mixture (jet_jax_train.data pipeline, answer-only MQAR loss) for each setting and reports held-out
MQAR accuracy every `--every` steps. This is what sets the PostNAS demo's MQAR shape.

    python benchmarks/mqar_teacher.py                     # the default settings below
    python benchmarks/mqar_teacher.py --steps 3000 --settings 4:32:100:2 8:64:1:4
A setting is pairs:token_range_hi:mqar_weight:layers (Shakespeare weight 1).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax
from flax import nnx

DEFAULT = ("4:32:2:6", "8:64:2:6", "4:32:100:2")


def run_setting(spec: str, steps: int, every: int, lr: float, seed: int) -> list[dict]:
    from jet_jax_configs.presets import TINY_QWEN2
    from jet_jax.model import JetNemotronForCausalLM
    from jet_jax_train.data import (DataConfig, MQARConfig, SourceConfig, make_mqar_eval_batches,
                            make_train_iterator)
    from jet_jax_train.data.mqar import mqar_accuracy
    from jet_jax_train.flat_model import FlatModel
    from jet_jax_train.demo import ce_train_step

    pairs, hi, weight, layers = spec.split(":")
    pairs, hi, weight, layers = int(pairs), int(hi), float(weight), int(layers)
    mqar = MQARConfig(num_pairs=pairs, num_queries=pairs, token_range=(0, hi))
    data = DataConfig(sources=(SourceConfig(kind="shakespeare"),
                               SourceConfig(kind="mqar", mqar=mqar, weight=weight)),
                      seq_len=128, batch_size=8, shuffle_window=32, seed=seed)
    held_out = make_mqar_eval_batches(DataConfig(sources=(SourceConfig(kind="mqar", mqar=mqar),),
                                                 seq_len=128, batch_size=8, seed=seed + 1000), 8)
    cfg = TINY_QWEN2.replace(num_hidden_layers=layers, layer_types=("attn",) * layers)
    model = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(seed))
    flat = FlatModel(model)
    params = flat.params(model)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, lr, 20, steps, end_value=lr * 0.1),
        b2=0.95, weight_decay=0.01))
    opt_state = tx.init(params)

    step = ce_train_step(flat, tx)

    @jax.jit
    def logits(params, b):
        return flat.merge(params)(b["input_ids"], b["segment_ids"], b["positions"])

    it = make_train_iterator(data)
    rows, t0 = [], time.perf_counter()
    for i in range(1, steps + 1):
        params, opt_state, _ = step(params, opt_state, next(it))
        if i % every == 0 or i == steps:
            acc = float(np.mean([mqar_accuracy(np.asarray(logits(params, b)), b) for b in held_out]))
            rows.append({"setting": spec, "step": i, "mqar": acc, "chance": 2 / hi,
                         "seconds": time.perf_counter() - t0})
            print(f"  {spec} step {i}: mqar {acc:.3f}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=list(DEFAULT))
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--every", type=int, default=400)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rows = [r for s in a.settings for r in run_setting(s, a.steps, a.every, a.lr, a.seed)]
    print(f"\n{jax.devices()[0].platform}; held-out MQAR accuracy (8 batches x 8 rows), "
          "setting = pairs:token_range_hi:mqar_weight:layers\n")
    print("| setting | step | MQAR acc | chance | seconds |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['step']} | {r['mqar']:.3f} | {r['chance']:.3f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
