"""Hardware-aware search of the linear block's shape (Jet-Nemotron paper, section 3.4).

Parameter count is a poor proxy for generation speed; the decode cache (KV of attention
layers + recurrent state of linear layers) dominates. So the search holds the cache size
fixed and grids over (heads H, key dim dk, value dim dv) of the chosen block:

1. grid: explicit `heads x key_dims x value_dims`, or by default, for each H in
   {H0/2, H0, 2 H0, 4 H0} and dk in {dk0/2, dk0, 2 dk0}, the dv that keeps the recurrent state
   H*dk*dv equal to the baseline's (when it is a whole number);
2. filter: keep candidates whose per-layer linear state bytes (recurrent + conv state, from
   the real cache arrays) are within `cache_tolerance` (relative) of the baseline's; after
   building each kept candidate the whole-model cache bytes at `context` are ASSERTED to be
   within the same tolerance of the baseline's;
3. each candidate is distilled with the identical short recipe and scored
   (`block_selection.evaluate_architecture`: task scores with their eval-set standard
   errors, objective +- SE), and its decode step time is measured on the current device
   (`throughput.measure_decode_throughput`, per-step times);
4. timings are repeated in rounds, each timing the baseline and then every unresolved
   candidate, until each candidate's speed ratio to the baseline (per round: median
   baseline step time / median candidate step time, so a slow phase of a shared machine
   hits both; 95% t interval across rounds) is resolved against the thresholds 1 and
   1 - slack, or its CI is narrower than `timing_precision`, or `timing_max_rounds` is
   reached (`stats.time_until_resolved`). One round gives no interval: the per-step times
   of one round are not independent (they share the machine's load at that moment);
5. decide (`decide`): a candidate replaces the baseline only if it is measurably better on
   one axis and not measurably worse on the other - objective higher by more than
   `k` SE of the difference with a speed ratio whose CI lies above 1 - slack, or speed ratio
   CI entirely above 1 with an objective not lower by more than k SE. Among such winners the
   highest objective is chosen; if there is none the search reports a tie and keeps the
   baseline (the decision and its reason are in the result).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np
from flax import nnx

from jet_jax_train.postnas import stats
from jet_jax_train.postnas import throughput as tp
from jet_jax_train.postnas.block_selection import ThroughputConfig, evaluate_architecture
from jet_jax_train.postnas.placement_search import TaskSuite
from jet_jax_train.progress import progress_bar
from jet_jax_train.postnas.supernet import build_linear_mixer
from jet_jax_train.postnas.trainer import SupernetTrainConfig


@dataclasses.dataclass(frozen=True)
class HardwareSearchConfig:
    heads: tuple[int, ...] | None = None       # None: derived grid (module doc)
    key_dims: tuple[int, ...] | None = None
    value_dims: tuple[int, ...] | None = None
    cache_tolerance: float = 0.05               # relative
    throughput_slack: float = 0.05              # relative
    max_candidates: int | None = None           # keep the first N after filtering (+ baseline)
    timing_precision: float = 0.05              # stop timing when the speed-ratio CI half-width is below this
    timing_max_rounds: int = 4
    k: float = 2.0                              # a difference counts beyond k standard errors


def block_shape(cfg, block: str) -> tuple[int, int, int]:
    """(H, dk, dv) of `block` under model config `cfg`."""
    if block == "jet":
        return cfg.jet.num_heads, cfg.jet.head_dim, cfg.jet.head_v_dim
    kw = dict(num_heads=cfg.jet.num_heads, head_dim=cfg.jet.head_dim, expand_v=1.0)
    kw.update(cfg.zoo_kwargs(block))
    return int(kw["num_heads"]), int(kw["head_dim"]), int(round(kw["head_dim"] * kw["expand_v"]))


def shape_overrides(cfg, block: str, shape: tuple[int, int, int]) -> dict:
    """kwargs for `SuperNetwork.from_teacher` (jet= or zoo=) giving `block` this shape."""
    h, dk, dv = shape
    if block == "jet":
        jet = dataclasses.replace(cfg.jet, num_heads=h, head_dim=dk, expand_v=dv / dk)
        jet.validate()
        jet.head_v_dim  # noqa: B018 - raises on a non-integral dv
        return {"jet": jet}
    zoo = {k: dict(v) for k, v in cfg.zoo}
    zoo[block] = {**zoo.get(block, {}), "num_heads": h, "head_dim": dk, "expand_v": dv / dk}
    return {"zoo": zoo}


def state_bytes(cfg, block: str, shape) -> int:
    """Per-layer linear state bytes (batch 1) of `block` with `shape`, from its cache arrays."""
    ov = shape_overrides(cfg, block, shape)
    c = cfg
    if "jet" in ov:
        c = c.replace(jet=ov["jet"])
    else:
        c = c.replace(zoo=tuple((k, tuple(sorted(v.items()))) for k, v in sorted(ov["zoo"].items())))
    mixer = nnx.eval_shape(lambda: build_linear_mixer(c, block, rngs=nnx.Rngs(0)))
    return tp.linear_state_bytes(mixer, 1)


def candidate_grid(cfg, block: str, hs: HardwareSearchConfig) -> tuple[list[dict], list[dict]]:
    """(kept candidates, rejected with reason); each {"shape": (H, dk, dv), "state_bytes"}."""
    h0, dk0, dv0 = block_shape(cfg, block)
    if hs.heads or hs.key_dims or hs.value_dims:
        shapes = [(h, dk, dv) for h in (hs.heads or (h0,)) for dk in (hs.key_dims or (dk0,))
                  for dv in (hs.value_dims or (dv0,))]
    else:
        total = h0 * dk0 * dv0
        shapes = []
        for h in sorted({max(1, h0 // 2), h0, 2 * h0, 4 * h0}):
            for dk in sorted({max(2, dk0 // 2), dk0, 2 * dk0}):
                if total % (h * dk) == 0:
                    shapes.append((h, dk, total // (h * dk)))
    base = state_bytes(cfg, block, (h0, dk0, dv0))
    kept, rejected = [{"shape": (h0, dk0, dv0), "state_bytes": base, "baseline": True}], []
    for shape in dict.fromkeys(shapes):
        if shape == (h0, dk0, dv0):
            continue
        try:
            b = state_bytes(cfg, block, shape)
        except (ValueError, TypeError) as e:
            rejected.append({"shape": shape, "reason": f"invalid: {e}"[:200]})
            continue
        rel = abs(b - base) / base
        if rel > hs.cache_tolerance:
            rejected.append({"shape": shape, "state_bytes": b,
                             "reason": f"state {b} B differs from baseline {base} B by {rel:.1%}"})
        else:
            kept.append({"shape": shape, "state_bytes": b, "baseline": False})
    if hs.max_candidates is not None:
        kept = kept[:1 + hs.max_candidates]
    return kept, rejected


def decide(rows: list[dict], times: dict[int, dict[int, list[float]]] | None = None, *,
           throughput_slack: float, k: float = 2.0) -> dict:
    """Annotate `rows` (rows[0] = baseline; each with objective, objective_se) with the
    comparison to the baseline and choose one (module doc, step 5).

    times: {row index: {round: per-step decode times}} (`stats.time_until_resolved`);
    defaults to each row's "step_seconds" as a single round.
    Returns {"best": chosen row, "decision": "baseline kept (tie)" | "candidate wins",
    "reason": one sentence}.
    """
    if times is None:
        times = {i: {0: r["step_seconds"]} for i, r in enumerate(rows)}
    base = rows[0]
    floor = 1 - throughput_slack
    base_t = times[0]
    for i, r in enumerate(rows):
        all_t = [t for rnd in times[i].values() for t in rnd]
        mean_t = float(np.mean(all_t))
        r["decode_tokens_per_s"] = r.get("batch_size", 1) / mean_t if mean_t > 0 else float("nan")
        r["timed_steps"], r["timing_rounds"] = len(all_t), len(times[i])
        if i == 0:
            r.update(speed_ratio=1.0, speed_ratio_lo=1.0, speed_ratio_hi=1.0, objective_diff=0.0,
                     objective_diff_se=0.0, accuracy="baseline", speed="baseline",
                     qualifies=True, wins=False)
            continue
        ratio, lo, hi = stats.speed_ratio(base_t, times[i])
        d = r["objective"] - base["objective"]
        se = math.sqrt(r.get("objective_se", float("nan")) ** 2
                       + base.get("objective_se", float("nan")) ** 2)
        acc = stats.verdict(d, se, higher_is_better=True, k=k)
        speed = stats.WIN if lo > 1 else stats.LOSS if hi < 1 else stats.TIE
        within_slack = lo >= floor
        r.update(speed_ratio=ratio, speed_ratio_lo=lo, speed_ratio_hi=hi, objective_diff=d,
                 objective_diff_se=se, accuracy=acc, speed=speed, qualifies=bool(within_slack),
                 wins=bool((acc == stats.WIN and within_slack)
                           or (speed == stats.WIN and acc != stats.LOSS)))
    winners = [r for r in rows[1:] if r["wins"]]
    if not winners:
        return {"best": base, "decision": "baseline kept (tie)",
                "reason": (f"no candidate is measurably better than the baseline: objective "
                           f"higher by more than {k:g} SE with decode speed >= {floor:.2f} x "
                           f"baseline (95% CI), or decode speed CI above 1 x baseline without a "
                           f"measurably lower objective")}
    best = max(winners, key=lambda r: (r["objective"], r["speed_ratio"]))
    why = ("objective higher by more than {k:g} SE" if best["accuracy"] == stats.WIN
           else "decode measurably faster (95% CI above 1x), objective not measurably lower")
    return {"best": best, "decision": "candidate wins", "reason": why.format(k=k)}


def hardware_search(teacher, choice, block: str, *, data: Callable[[], Iterator],
                    suite: TaskSuite, references, train_cfg: SupernetTrainConfig,
                    hs: HardwareSearchConfig = HardwareSearchConfig(),
                    throughput: ThroughputConfig = ThroughputConfig(), seed: int = 0,
                    log=None) -> dict:
    """Returns {"rows", "rejected", "best", "baseline", "decision", "reason",
    "cache_tolerance", "throughput_slack", "timing_rounds"}.

    Each row: shape (H, dk, dv), task scores (+ "se"), objective +- objective_se, decode
    tokens/s (batch / mean step time over every timed step), its speed ratio to the baseline
    with CI, the accuracy/speed verdicts against the baseline, cache bytes, params,
    qualifies (speed CI above 1 - slack), wins. `best` is the chosen row (module doc).
    """
    log = log or (lambda msg: None)
    cfg = teacher.config
    kept, rejected = candidate_grid(cfg, block, hs)
    log(f"hardware search over {len(kept)} candidates of {block} "
        f"(rejected {len(rejected)} for cache size / validity)")
    rows, students, base_cache = [], [], None
    for cand in progress_bar(kept, desc="hardware search: train + score", unit="shape"):
        h, dk, dv = cand["shape"]
        row, student, _ = evaluate_architecture(
            teacher, choice, block, data=data, suite=suite, references=references,
            train_cfg=train_cfg, throughput=throughput, seed=seed, measure_decode=False,
            **shape_overrides(cfg, block, cand["shape"]))
        if base_cache is None:
            base_cache = row["cache_bytes"]
        rel = abs(row["cache_bytes"] - base_cache) / base_cache
        assert rel <= hs.cache_tolerance, (
            f"candidate {cand['shape']} cache {row['cache_bytes']} B differs from the baseline "
            f"{base_cache} B by {rel:.2%} > tolerance {hs.cache_tolerance:.2%}")
        row = {"heads": h, "dk": dk, "dv": dv, "shape": f"H{h} dk{dk} dv{dv}", **row,
               "baseline": cand["baseline"], "cache_rel_diff": rel,
               "batch_size": throughput.batch_size}
        rows.append(row)
        students.append(student)
        log(f"  H={h} dk={dk} dv={dv}: objective {row['objective']:.4f} +- "
            f"{row['objective_se']:.4f}, cache {row['cache_bytes']} B")

    def measure(i):
        return lambda: tp.measure_decode_throughput(
            students[i], batch_size=throughput.batch_size, context=throughput.context,
            steps=throughput.steps)["step_seconds"]

    rounds = progress_bar(desc="hardware search: timing rounds", total=hs.timing_max_rounds,
                          unit="round")
    for r in rows:
        r.pop("step_seconds")
    times = stats.time_until_resolved(
        {i: measure(i) for i in range(len(rows))}, 0,
        thresholds=(1.0, 1.0 - hs.throughput_slack), precision=hs.timing_precision,
        max_rounds=hs.timing_max_rounds, on_round=lambda n, pending: rounds.update(1))
    rounds.close()
    n_rounds = len(times[0])
    result = decide(rows, times, throughput_slack=hs.throughput_slack, k=hs.k)
    for r in rows:
        log(f"  {r['shape']}: decode {r['decode_tokens_per_s']:.1f} tok/s, speed x "
            f"{r['speed_ratio']:.3f} [{r['speed_ratio_lo']:.3f}, {r['speed_ratio_hi']:.3f}], "
            f"objective {r['objective']:+.4f} +- {r['objective_se']:.4f} "
            f"(accuracy: {r['accuracy']}, speed: {r['speed']})")
    log(f"  decision: {result['decision']} -> {result['best']['shape']} ({result['reason']})")
    return {"rows": rows, "rejected": rejected, "best": result["best"], "baseline": rows[0],
            "decision": result["decision"], "reason": result["reason"],
            "cache_tolerance": hs.cache_tolerance, "throughput_slack": hs.throughput_slack,
            "timing_rounds": n_rounds, "k": hs.k}
