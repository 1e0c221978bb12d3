"""The statistics PostNAS decisions rest on: means with standard errors, paired comparisons
across seeds, and decode timings repeated until their confidence interval is small relative
to the difference being decided.

A comparison's verdict is "win" / "loss" when the difference is more than `k` (default 2)
standard errors of the difference away from 0 in the better / worse direction, else
"not distinguishable".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

WIN, LOSS, TIE = "win", "loss", "not distinguishable"


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean = sample std / sqrt(n)); SE is NaN for n < 2."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if len(x) == 0:
        return float("nan"), float("nan")
    if len(x) < 2:
        return float(x.mean()), float("nan")
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


def verdict(diff: float, se: float, *, higher_is_better: bool, k: float = 2.0) -> str:
    """Verdict of a difference (a - b) with standard error `se` for `a` against `b`."""
    if math.isnan(diff) or math.isnan(se) or abs(diff) <= k * se:
        return TIE
    better = diff > 0 if higher_is_better else diff < 0
    return WIN if better else LOSS


def paired_comparison(a: Sequence[float], b: Sequence[float], *, higher_is_better: bool,
                      k: float = 2.0) -> dict:
    """a[i] and b[i] measured with the same seed i (same data order): the mean of the
    per-seed differences, its SE, and the verdict for `a`."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs as many values on each side ({len(a)} vs {len(b)})")
    diff, se = mean_se([x - y for x, y in zip(a, b)])
    return {"diff": diff, "se": se, "n": len(a), "k": k,
            "verdict": verdict(diff, se, higher_is_better=higher_is_better, k=k)}


def ratio_ci(num: Sequence[float], den: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """mean(num) / mean(den) with a normal-approximation CI (delta method on two independent
    means): (ratio, low, high)."""
    mn, sn = mean_se(num)
    md, sd = mean_se(den)
    r = mn / md
    rel = math.sqrt((sn / mn) ** 2 + (sd / md) ** 2) if not (math.isnan(sn) or math.isnan(sd)) \
        else float("inf")
    return r, r * (1 - z * rel), r * (1 + z * rel)


def speed_ratio(base_times: Sequence[float], cand_times: Sequence[float], z: float = 1.96):
    """Candidate speed relative to the baseline (> 1: faster) from per-step times:
    mean(base) / mean(cand), with its CI."""
    return ratio_ci(base_times, cand_times, z)


def timing_resolved(base_times, cand_times, thresholds: Sequence[float], precision: float,
                    z: float = 1.96) -> bool:
    """True when more timing cannot change the decision: the speed ratio's CI lies on one
    side of every threshold, or its half-width is below `precision` (relative)."""
    r, lo, hi = speed_ratio(base_times, cand_times, z)
    if (hi - lo) / 2 <= precision * r:
        return True
    return all(lo > t or hi < t for t in thresholds)


def time_until_resolved(measure: Mapping[str, Callable[[], Sequence[float]]], baseline: str, *,
                        thresholds: Sequence[float], precision: float, max_rounds: int,
                        z: float = 1.96, initial: Mapping[str, Sequence[float]] | None = None,
                        on_round: Callable[[int, list[str]], None] | None = None
                        ) -> dict[str, list[float]]:
    """Per-step decode times of every candidate, measured in rounds.

    measure: {name: callable returning one round's per-step times (s)}; `baseline` is one of
    the names. Round 1 times everyone; each further round times the baseline and every
    candidate not yet `timing_resolved` against it (interleaved, so slow phases of a shared
    machine hit both sides), until all are resolved or `max_rounds` is reached.
    `initial` ({name: per-step times}) counts as round 1 for the names it has.
    Returns {name: every per-step time measured}.
    """
    times: dict[str, list[float]] = {name: list((initial or {}).get(name, ())) for name in measure}
    pending = [n for n in measure if not times[n]]
    for rnd in range(max(1, max_rounds)):
        if on_round is not None and pending:
            on_round(rnd + 1, pending)
        for name in pending:
            times[name].extend(float(t) for t in measure[name]())
        pending = [n for n in measure if n != baseline and not timing_resolved(
            times[baseline], times[n], thresholds, precision, z)]
        if not pending:
            break
        pending = [baseline, *pending]
    return times
