"""Linear-attention block selection (Jet-Nemotron paper, section 3.2): train each candidate block in the
same placement with the same (short) recipe and compare accuracy and measured throughput.

For every block (JetBlock + the zoo: gdn, deltanet, gla, mamba2, retnet) the student is
built the same way - the teacher's embeddings/MLPs/norms/attention layers, a fresh linear
block at the linear layers (`SuperNetwork.from_teacher(...)` then `extract_subnet`) - and
distilled from the teacher on the identical data stream (same seed) for the same steps with
the same optimizer/loss (`trainer.train_supernet` on the plain student). Then:

  * task scores: `TaskSuite.score` (lm_loss, kl, mqar, mc) and the normalized objective
    against fixed references (the placement search's all-linear / all-attention scores);
  * training throughput: tokens/s of the distillation steps (compile step excluded);
  * decoding throughput: `throughput.measure_decode_throughput` (jitted single-token steps
    after a prefill, timed);
  * cache bytes at the stated context.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence


from jet_jax_train.postnas import throughput as tp
from jet_jax_train.postnas.placement_search import TaskSuite, normalize, objective_of, objective_se
from jet_jax_train.progress import progress_bar
from jet_jax_train.postnas.supernet import (SuperNetwork, count_params, extract_subnet,
                                    layer_types_from_choice)
from jet_jax_train.postnas.trainer import SupernetTrainConfig, build_mesh, train_supernet


@dataclasses.dataclass(frozen=True)
class ThroughputConfig:
    batch_size: int = 1
    context: int = 256
    steps: int = 32


def build_student(teacher, choice, block: str, *, jet=None, zoo=None, seed: int = 0, mesh=None):
    """A fresh student for placement `choice` with linear block `block` (see module doc);
    built sharded over `mesh` if given."""
    sup = SuperNetwork.from_teacher(teacher, block, enable_swa=2 in tuple(int(c) for c in choice),
                                    seed=seed, jet=jet, zoo=zoo, mesh=mesh)
    return extract_subnet(sup, layer_types_from_choice(choice, block))


def objective(scores: Mapping[str, float], references: Mapping[str, Mapping[str, float]],
              tasks: Sequence[str] | None = None) -> float:
    """Mean normalized score over the informative tasks (placement_search.objective_of)."""
    lin, att = references["all_linear"], references["all_attn"]
    return objective_of(normalize(scores, lin, att), lin, att, tasks)


def objective_error(se: Mapping[str, float], references: Mapping[str, Mapping[str, float]],
                    tasks: Sequence[str] | None = None) -> float:
    """Eval-set standard error of `objective` (placement_search.objective_se)."""
    return objective_se(se, references["all_linear"], references["all_attn"], tasks)


def evaluate_architecture(teacher, choice, block: str, *, data: Callable[[], Iterator],
                          suite: TaskSuite, references, train_cfg: SupernetTrainConfig,
                          throughput: ThroughputConfig, jet=None, zoo=None, seed: int = 0,
                          log=None, measure_decode: bool = True) -> tuple[dict, object, list[dict]]:
    """Train one architecture with the shared recipe and measure it (decode speed: one
    timing round, unless `measure_decode` is False - the caller times it).

    Returns (row, trained student, training history); row has block, per-task scores,
    objective, train/decode tokens/s, cache bytes, parameter count.
    """
    log = log or (lambda msg: None)
    student = build_student(teacher, choice, block, jet=jet, zoo=zoo, seed=seed,
                            mesh=build_mesh(train_cfg.mesh_shape))
    t0 = time.perf_counter()
    student, hist = train_supernet(student, teacher, data(), None, train_cfg)
    train_s = time.perf_counter() - t0
    scores, se = suite.score_with_se(student)
    dec = (tp.measure_decode_throughput(student, batch_size=throughput.batch_size,
                                        context=throughput.context, steps=throughput.steps)
           if measure_decode else {"decode_tokens_per_s": float("nan"), "step_seconds": []})
    row = {"block": block, **scores, "objective": objective(scores, references),
           "objective_se": objective_error(se, references), "se": se,
           "step_seconds": list(dec.get("step_seconds", ())),
           "train_tokens_per_s": hist[-1]["tokens_per_s"] if hist else float("nan"),
           "decode_tokens_per_s": dec["decode_tokens_per_s"],
           "cache_bytes": tp.cache_bytes(student, throughput.batch_size, throughput.context),
           "params": count_params(student), "train_seconds": train_s,
           "final_train_kl": hist[-1].get("kl", float("nan")) if hist else float("nan")}
    log(f"  {block}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                    if isinstance(v, float) and k != "objective_se"))
    return row, student, hist


def select_block(teacher, choice, blocks: Sequence[str], *, data: Callable[[], Iterator],
                 suite: TaskSuite, references, train_cfg: SupernetTrainConfig,
                 throughput: ThroughputConfig = ThroughputConfig(), seed: int = 0,
                 log=None) -> dict:
    """Run `evaluate_architecture` for every block; returns {"rows", "best", "histories"}.

    best = highest objective (ties: higher decode throughput). A block that fails to build or
    train is reported in its row's "error" and skipped, never silently dropped.
    """
    rows, hists = [], {}
    for block in progress_bar(blocks, desc="block selection", unit="block"):
        try:
            row, _, hist = evaluate_architecture(
                teacher, choice, block, data=data, suite=suite, references=references,
                train_cfg=train_cfg, throughput=throughput, seed=seed, log=log)
            hists[block] = hist
        except Exception as e:  # noqa: BLE001 - reported in the table
            row = {"block": block, "error": f"{type(e).__name__}: {e}"[:300]}
            if log:
                log(f"  {block}: FAILED {row['error']}")
        rows.append(row)
    ok = [r for r in rows if "error" not in r]
    if not ok:
        raise RuntimeError(f"every block failed: {[r['error'] for r in rows]}")
    best = max(ok, key=lambda r: (r["objective"], r["decode_tokens_per_s"]))
    return {"rows": rows, "best": best["block"], "histories": hists}
