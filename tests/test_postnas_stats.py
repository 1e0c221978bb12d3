"""PostNAS decisions backed by statistics, and a report generated from one results file.

- the hardware search keeps the baseline when candidates' timings (and objectives) are
  statistically indistinguishable, and picks a clearly faster candidate;
- seed comparisons give win / loss / not distinguishable from the paired SE;
- report.md and the plots are regenerated from results.json alone: change one number in the
  file and both the table and the plot change.
"""

import copy
import json

import numpy as np

from jet_jax_train.postnas import stats
from jet_jax_train.postnas.hardware_search import decide
from jet_jax_train.postnas.report import write_report


def _rows(objectives=(0.10, 0.10), se=0.05):
    return [{"shape": f"s{i}", "objective": o, "objective_se": se, "baseline": i == 0}
            for i, o in enumerate(objectives)]


def _timer(mean, sd, seed, steps=32, log=None):
    rng = np.random.default_rng(seed)

    def measure():
        if log is not None:
            log.append(1)
        return list(np.abs(rng.normal(mean, sd, steps)))
    return measure


def test_noisy_equal_timings_keep_the_baseline_after_repeating():
    calls = []
    times = stats.time_until_resolved(
        {0: _timer(1e-3, 4e-4, 0, log=calls), 1: _timer(1e-3, 4e-4, 1, log=calls)}, 0,
        thresholds=(1.0, 0.95), precision=0.01, max_rounds=4)
    assert len(calls) == 2 * 4, "unresolved timings must be repeated up to max_rounds"
    assert len(times[0]) == len(times[1]) == 4 and all(len(t) == 32 for t in times[0].values())
    rows = _rows()
    res = decide(rows, times, throughput_slack=0.05)
    assert res["best"] is rows[0] and res["decision"] == "baseline kept (tie)"
    assert rows[1]["speed"] == stats.TIE and not rows[1]["wins"]


def test_clearly_faster_candidate_is_picked_and_timing_stops_early():
    calls = []
    times = stats.time_until_resolved(
        {0: _timer(1e-3, 5e-5, 0, log=calls), 1: _timer(5e-4, 2e-5, 1, log=calls)}, 0,
        thresholds=(1.0, 0.95), precision=0.01, max_rounds=4)
    assert len(calls) == 2 * 2  # resolved after two rounds (one round gives no interval)
    rows = _rows()
    res = decide(rows, times, throughput_slack=0.05)
    assert res["best"] is rows[1] and res["decision"] == "candidate wins"
    assert rows[1]["speed"] == stats.WIN and rows[1]["speed_ratio_lo"] > 1.5


def test_objective_difference_within_noise_keeps_the_baseline():
    """The old failure: a candidate 0.0004 better on the objective (SE 0.05) won."""
    const = lambda t: {0: list(np.full(32, t)), 1: list(np.full(32, t))}  # two rounds
    same = {0: const(1e-3), 1: const(1e-3)}
    rows = _rows((0.1000, 0.1004))
    assert decide(rows, same, throughput_slack=0.05)["best"] is rows[0]
    rows = _rows((0.10, 0.40))  # 0.3 > 2 * sqrt(2) * 0.05: a real accuracy win
    assert decide(rows, same, throughput_slack=0.05)["best"] is rows[1]
    slow = {0: const(1e-3), 1: const(2e-3)}
    rows = _rows((0.10, 0.40))  # more accurate but measurably beyond the slack: not chosen
    assert decide(rows, slow, throughput_slack=0.05)["best"] is rows[0]


def test_one_slow_phase_does_not_decide():
    """The demo's failure mode: the baseline's only timing round fell in a slow phase of the
    shared machine (4.5x slower). Paired rounds: the phase hits both sides of a round."""
    rng = np.random.default_rng(0)
    load = [4.5, 1.0, 1.3, 1.0]  # machine slowdown during each round
    times = {0: {i: list(load[i] * rng.normal(1e-3, 2e-5, 32)) for i in range(4)},
             1: {i: list(load[i] * rng.normal(1e-3, 2e-5, 32)) for i in range(4)}}
    r, lo, hi = stats.speed_ratio(times[0], times[1])
    assert lo < 1 < hi and abs(r - 1) < 0.02
    rows = _rows((0.1, 0.1))
    assert decide(rows, times, throughput_slack=0.05)["best"] is rows[0]


def test_paired_verdicts():
    assert stats.paired_comparison([0.5, 0.52, 0.55], [0.40, 0.41, 0.45],
                                   higher_is_better=True)["verdict"] == stats.WIN
    assert stats.paired_comparison([0.10, 0.11, 0.12], [0.05, 0.06, 0.065],
                                   higher_is_better=False)["verdict"] == stats.LOSS
    c = stats.paired_comparison([0.5, 0.4, 0.6], [0.45, 0.5, 0.5], higher_is_better=True)
    assert c["verdict"] == stats.TIE and c["n"] == 3
    assert stats.mean_se([1.0])[1] != stats.mean_se([1.0])[1]  # NaN: no SE from one seed
    assert stats.verdict(1.0, float("nan"), higher_is_better=True) == stats.TIE


# ----------------------------------------------------------------------------- report
TASKS = ["lm_loss", "kl", "mqar"]


def _scores(lm, kl, mq):
    return {"lm_loss": lm, "kl": kl, "mqar": mq}


def _run(seed, kl, mq):
    return {"seed": seed, "scores": _scores(2.3, kl, mq), "se": _scores(0.01, 0.002, 0.02),
            "objective": mq, "objective_se": 0.05, "kl_before": 0.3,
            "history": [{"step": 5, "kl": 0.2}, {"step": 10, "kl": kl}]}


def _final(lt, kls, mqs):
    runs = [_run(i, k, m) for i, (k, m) in enumerate(zip(kls, mqs))]
    mean = {t: float(np.mean([r["scores"][t] for r in runs])) for t in TASKS}
    se = {t: stats.mean_se([r["scores"][t] for r in runs])[1] for t in TASKS}
    mean.update(objective=float(np.mean(mqs)), kl_before=0.3)
    se.update(objective=stats.mean_se(mqs)[1], kl_before=0.0)
    return {"layer_types": lt, "start": "super-network", "runs": runs, "mean": mean, "se": se,
            "decode_tokens_per_s": 1000.0, "cache_bytes": 100}


def _results():
    from jet_jax_train.postnas.config import PostNASConfig
    import dataclasses
    L = ["attn", "jet", "jet", "jet"]
    U = ["jet", "jet", "attn", "jet"]
    W = ["jet", "attn", "jet", "jet"]
    refs = {"all_linear": _scores(2.4, 0.1, 0.40), "all_attn": _scores(2.2, 0.0, 0.60)}
    cand = lambda lt, o: {"choice": [1 if t == "attn" else 0 for t in lt], "layer_types": lt,
                          "attn_layers": [lt.index("attn")], "swa_layers": [],
                          "scores": _scores(2.3, 0.05, 0.5), "normalized": {}, "objective": o}
    finals = {"searched": _final(L, [0.05, 0.052, 0.051], [0.55, 0.56, 0.57]),
              "uniform": _final(U, [0.06, 0.061, 0.062], [0.45, 0.46, 0.47]),
              "worst searched": _final(W, [0.07, 0.071, 0.072], [0.40, 0.41, 0.42])}
    from jet_jax_train.postnas.stages import comparisons
    hw_rows = [{"shape": "H2 dk16 dv32", "heads": 2, "dk": 16, "dv": 32, "baseline": True,
                **_scores(2.3, 0.05, 0.5), "objective": 0.1, "objective_se": 0.05,
                "decode_tokens_per_s": 1000.0, "speed_ratio": 1.0, "speed_ratio_lo": 1.0,
                "speed_ratio_hi": 1.0, "timed_steps": 64, "accuracy": "baseline",
                "speed": "baseline", "cache_bytes": 100, "params": 10},
               {"shape": "H4 dk16 dv16", "heads": 4, "dk": 16, "dv": 16, "baseline": False,
                **_scores(2.3, 0.05, 0.5), "objective": 0.12, "objective_se": 0.05,
                "decode_tokens_per_s": 990.0, "speed_ratio": 0.99, "speed_ratio_lo": 0.9,
                "speed_ratio_hi": 1.1, "timed_steps": 128, "accuracy": "not distinguishable",
                "speed": "not distinguishable", "cache_bytes": 100, "params": 12}]
    return {
        "config": dataclasses.asdict(PostNASConfig()), "device": "cpu (test)",
        "teacher": {"describe": "tiny", "layer_types": ["attn"] * 4,
                    "scores": _scores(2.2, 0.0, 0.6), "se": _scores(0.01, 0.0, 0.02),
                    "objective": 1.0, "decode_tokens_per_s": 900.0, "cache_bytes": 400,
                    "exported": None},
        "block": "jet", "budget": 1, "swa_budget": 0, "tasks": TASKS, "references": refs,
        "supernet": {"steps": 10, "history": [{"step": 5, "kl": 0.3}, {"step": 10, "kl": 0.2}]},
        "search": {"tasks": TASKS, "ranking": [cand(L, 0.5), cand(W, 0.1)],
                   "per_task_best": {"mqar": cand(L, 0.5)},
                   "importance_only_layer_attn": [[0.1, 0.2, 0.3, 0.4]] * 3,
                   "importance_drop_when_linear": [[0.1, None, 0.3, 0.4]] * 3},
        "blocks": {"rows": [{"block": "jet", **_scores(2.3, 0.05, 0.5), "objective": -0.2,
                             "objective_se": 0.05, "train_tokens_per_s": 5000.0,
                             "decode_tokens_per_s": 1000.0, "cache_bytes": 100, "params": 10}],
                   "best": "jet"},
        "hardware": {"rows": hw_rows, "rejected": [], "best": hw_rows[0], "baseline": hw_rows[0],
                     "decision": "baseline kept (tie)", "reason": "no candidate is better",
                     "cache_tolerance": 0.05, "throughput_slack": 0.05, "timing_rounds": 2,
                     "k": 2.0},
        "finals": {"steps": 10, "seeds": 3, "start": "super-network", "placements": finals},
        "comparisons": comparisons(finals, TASKS, 2.0),
        "layer_types": L, "timings": {"teacher": 1.0}, "total_seconds": 10.0,
    }


def test_report_tables_and_plots_read_the_one_results_file(tmp_path):
    res = _results()
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    report = write_report(path).read_text()
    png = (tmp_path / "final_scores.png").read_bytes()
    assert report.startswith("# PostNAS report") and "**Verdict.**" in report
    assert "searched placement (attn [0])" in report and "**win**" in report  # mqar vs uniform
    assert "reference: all-linear" in report and "reference: all-attention" in report
    assert "0.5600 ± 0.0058" in report  # searched MQAR mean ± SE over the 3 seeds
    for name in ("importance.png", "hardware.png", "final_kl.png", "supernet_kl.png"):
        assert (tmp_path / name).exists(), name
    # one number changed in results.json -> the table and the plot both change
    changed = copy.deepcopy(res)
    changed["finals"]["placements"]["searched"]["mean"]["mqar"] = 0.31
    path.write_text(json.dumps(changed))
    report2 = write_report(path).read_text()
    assert "0.3100 ± 0.0058" in report2 and "0.5600 ± 0.0058" not in report2
    assert (tmp_path / "final_scores.png").read_bytes() != png
