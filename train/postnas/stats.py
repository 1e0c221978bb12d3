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


# Two-sided 95% Student-t critical values by degrees of freedom (few rounds, few seeds).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    """Two-sided 95% t critical value (the table's next smaller df; 1.96 beyond 30)."""
    if df < 1:
        return float("inf")
    if df > 30:
        return 1.96
    return _T95[max(k for k in _T95 if k <= df)]


def speed_ratio(base_rounds: Mapping[int, Sequence[float]],
                cand_rounds: Mapping[int, Sequence[float]]) -> tuple[float, float, float]:
    """Candidate decode speed relative to the baseline (> 1: faster), paired by round.

    Each round times the baseline and the candidate back to back, so a slow phase of a
    shared machine hits both; per round, r = median(base step times) / median(candidate
    step times). Returns (geometric mean of r, 95% CI low, high) from the t interval of
    log r across rounds; with one round the CI is (0, inf): one round decides nothing.
    """
    rounds = sorted(set(base_rounds) & set(cand_rounds))
    logs = [math.log(float(np.median(base_rounds[i])) / float(np.median(cand_rounds[i])))
            for i in rounds]
    if not logs:
        return float("nan"), 0.0, float("inf")
    m, se = mean_se(logs)
    if len(logs) < 2:
        return math.exp(m), 0.0, float("inf")
    h = t95(len(logs) - 1) * se
    return math.exp(m), math.exp(m - h), math.exp(m + h)


def timing_resolved(base_rounds, cand_rounds, thresholds: Sequence[float],
                    precision: float) -> bool:
    """True when more timing cannot change the decision: the speed ratio's CI lies on one
    side of every threshold, or its half-width is below `precision` (relative)."""
    r, lo, hi = speed_ratio(base_rounds, cand_rounds)
    if math.isinf(hi):
        return False
    if (hi - lo) / 2 <= precision * r:
        return True
    return all(lo > t or hi < t for t in thresholds)


def time_until_resolved(measure: Mapping[str, Callable[[], Sequence[float]]], baseline: str, *,
                        thresholds: Sequence[float], precision: float, max_rounds: int,
                        on_round: Callable[[int, list[str]], None] | None = None
                        ) -> dict[str, dict[int, list[float]]]:
    """Per-step decode times of every candidate, measured in rounds.

    measure: {name: callable returning one round's per-step times (s)}; `baseline` is one of
    the names. Every round times the baseline and then every candidate not yet
    `timing_resolved` against it, until all are resolved or `max_rounds` rounds are done.
    Returns {name: {round: per-step times}}.
    """
    times: dict[str, dict[int, list[float]]] = {name: {} for name in measure}
    pending = list(measure)
    for rnd in range(max(1, max_rounds)):
        if on_round is not None:
            on_round(rnd + 1, pending)
        for name in pending:
            times[name][rnd] = [float(t) for t in measure[name]()]
        pending = [n for n in measure if n != baseline and not timing_resolved(
            times[baseline], times[n], thresholds, precision)]
        if not pending:
            break
        pending = [baseline, *pending]
    return times
