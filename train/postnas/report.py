"""PostNAS report: `write_report(results.json)` writes report.md and every PNG from the
pipeline's one results file (nothing else is read, so a table and a plot of the same quantity
show the same numbers). Also the building blocks: markdown tables and matplotlib plots
(importance heatmaps, hardware scatter, final scores with error bars, training curves), with
the non-interactive Agg backend (headless machines).

`python -m jet_jax_train.postnas.report RUN_DIR/results.json` regenerates the report.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jet_jax_train.postnas.placement_search import (LOWER_IS_BETTER, MIN_ACCURACY_SPAN, NORMALIZED_RANGE,
                                            informative_tasks)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: str | os.PathLike) -> Path:
    """Lay out, write the PNG (creating its folder) and free the figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return str(v)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """rows of dicts -> a GitHub markdown table (columns default: keys of the first row)."""
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out) + "\n"


def plot_importance(only: np.ndarray, drop: np.ndarray, tasks: Sequence[str],
                    path: str | os.PathLike, title: str = "",
                    cbar_labels: Sequence[str] = ("normalized score\n(0 all-linear, 1 all-attn)",
                                                  "1 - normalized score")) -> Path:
    """Two task x layer heatmaps: normalized score with only layer i on attention, and the
    drop from all-attention when layer i alone is linear (both in all-linear=0/all-attn=1 units)."""
    plt = _plt()
    only, drop = np.asarray(only), np.asarray(drop)
    L = only.shape[1]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 + 0.6 * L) * 2, 0.9 + 0.55 * len(tasks)))
    for ax, data, name, clabel in ((axes[0], only, "score with only layer i = attention", cbar_labels[0]),
                                   (axes[1], drop, "drop when only layer i = linear", cbar_labels[1])):
        im = ax.imshow(data, cmap="viridis", aspect="auto")
        ax.set_xticks(range(L))
        ax.set_xlabel("layer")
        ax.set_yticks(range(len(tasks)))
        ax.set_yticklabels(tasks)
        ax.set_title(name, fontsize=9)
        for (t, i), v in np.ndenumerate(data):
            ax.text(i, t, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    fontsize=7, color="w" if not np.isnan(v) else "k")
        cb = fig.colorbar(im, ax=ax, fraction=0.04)
        cb.set_label(clabel, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def plot_tradeoff(rows: Sequence[Mapping], x: str, y: str, label: str, path: str | os.PathLike,
                  title: str = "", highlight: str | None = None, xerr: str | None = None,
                  yerr: str | None = None, xlabel: str | None = None,
                  ylabel: str | None = None) -> Path:
    """Scatter of rows[x] vs rows[y] (error bars rows[xerr] / rows[yerr]), each point
    labelled rows[label]; `highlight` marks one."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        hl = highlight is not None and str(r[label]) == highlight
        ax.errorbar(r[x], r[y], xerr=r.get(xerr) if xerr else None,
                    yerr=r.get(yerr) if yerr else None, fmt="o", ms=8 if hl else 5,
                    color="tab:red" if hl else "tab:blue", capsize=3)
        ax.annotate(str(r[label]), (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


def plot_bars(groups: Mapping[str, Mapping[str, tuple[float, float]]], tasks: Sequence[str],
              path: str | os.PathLike, title: str = "",
              reference: Mapping[str, float] | None = None) -> Path:
    """One panel per task: a bar per group (mean) with +-1 SE error bars; `reference`
    values (e.g. the teacher) as a dashed line."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.4), squeeze=False)
    names = list(groups)
    for ax, task in zip(axes[0], tasks):
        means = [groups[n][task][0] for n in names]
        ses = [0.0 if math.isnan(groups[n][task][1]) else groups[n][task][1] for n in names]
        ax.bar(range(len(names)), means, yerr=ses, capsize=4,
               color=["tab:red", "tab:blue", "tab:gray", "tab:green"][:len(names)])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=7, rotation=15)
        if reference and task in reference:
            ax.axhline(reference[task], ls="--", c="k", lw=1, label="teacher")
            ax.legend(fontsize=7)
        arrow = "lower is better" if LOWER_IS_BETTER.get(task, True) else "higher is better"
        ax.set_title(f"{task} ({arrow})", fontsize=9)
        lo = min(m - e for m, e in zip(means, ses))
        hi = max(m + e for m, e in zip(means, ses))
        if reference and task in reference:
            lo, hi = min(lo, reference[task]), max(hi, reference[task])
        pad = 0.15 * (hi - lo or abs(hi) or 1.0)
        ax.set_ylim(lo - pad if task != "mqar" or lo - pad > 0 else 0, hi + pad)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def plot_curves(curves: Mapping[str, Sequence[Mapping]], key: str, path: str | os.PathLike,
                title: str = "", ylabel: str | None = None) -> Path:
    """Training curves: {name: history [{"step", key}]} on one axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, hist in curves.items():
        pts = [(h["step"], h[key]) for h in hist if key in h]
        if pts:
            ax.plot(*zip(*pts), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or key)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


class Report:
    """Accumulates markdown sections; `write(path)` saves report.md (PNGs are saved by the plots)."""

    def __init__(self, title: str):
        self.parts = [f"# {title}\n"]

    def section(self, title: str, text: str = "") -> "Report":
        self.parts.append(f"\n## {title}\n\n{text}".rstrip() + "\n")
        return self

    def text(self, text: str) -> "Report":
        self.parts.append(text.rstrip() + "\n")
        return self

    def table(self, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> "Report":
        self.parts.append("\n" + markdown_table(rows, columns))
        return self

    def image(self, path: str | os.PathLike, alt: str, relative_to: str | os.PathLike) -> "Report":
        rel = os.path.relpath(path, relative_to)
        self.parts.append(f"\n![{alt}]({rel})\n")
        return self

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.parts))
        return path


# ----------------------------------------------------------------------------- the report
def pm(mean: float, se: float, digits: int = 4) -> str:
    """'mean ± se' ('mean' alone when the SE is unknown)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if se is None or math.isnan(se):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def _attn_layers(layer_types) -> str:
    idx = [i for i, t in enumerate(layer_types) if t == "attn"]
    swa = [i for i, t in enumerate(layer_types) if t == "swa"]
    return (f"attn {idx}" if idx else "no attn") + (f", swa {swa}" if swa else "")


def _verdict_sentence(comps: Sequence[Mapping], b: str, tasks: Sequence[str], k: float) -> str:
    rows = [c for c in comps if c["b"] == b]
    if not rows:
        return ""
    if rows[0]["task"] == "all":
        return f"against `{b}`: {rows[0]['verdict']} (no comparison)."
    parts = []
    for c in rows:
        if c["task"] in (*tasks, "objective"):
            parts.append(f"{c['task']} {c['mean_a']:.4f} vs {c['mean_b']:.4f}: **{c['verdict']}** "
                         f"(difference {c['diff']:+.4f} ± {c['se']:.4f})")
    return f"against `{b}`: " + "; ".join(parts) + "."


def verdict_paragraph(R: Mapping) -> str:
    """The report's opening paragraph, from the results alone."""
    F = R["finals"]
    P = F["placements"]
    k = R["config"]["verdict_k"]
    tasks = [t for t in R["tasks"] if t != "lm_loss"]  # lm_loss: in the table
    s = (f"**Verdict.** Final distillation, {F['seeds']} seed(s) per placement, {F['steps']} steps "
         f"each, paired by seed (mean of the per-seed differences ± its standard error; a "
         f"difference beyond {k:g} SE is a win or a loss, otherwise not distinguishable). "
         f"The searched placement ({_attn_layers(P['searched']['layer_types'])}) ")
    s += " ".join(x for x in (_verdict_sentence(R["comparisons"], b, tasks, k)
                              for b in ("uniform", "worst searched")) if x)
    if F["seeds"] < 2:
        s += " With one seed there is no standard error: every comparison is not distinguishable."
    hw = R.get("hardware")
    if hw:
        s += (f" Hardware search: {hw['decision']}, shape **{hw['best']['shape']}** "
              f"({hw['reason']}).")
    bl = R.get("blocks")
    if bl:
        ok = [r for r in bl["rows"] if "error" not in r]
        best = max(ok, key=lambda r: r["objective"])
        jet = next((r for r in ok if r["block"] == "jet"), None)
        s += (f" Block selection (one seed, {R['config']['block_steps']} steps): highest objective "
              f"`{best['block']}` {pm(best['objective'], best.get('objective_se'), 3)}"
              + (f", JetBlock {pm(jet['objective'], jet.get('objective_se'), 3)}" if jet else "")
              + " (± is the eval-set SE only; training-seed noise is not included).")
    return s


def _definitions(R: Mapping) -> str:
    refs = R["references"]
    lin, att = refs["all_linear"], refs["all_attn"]
    candidates = [t for t in R["tasks"] if not (t == "lm_loss" and "kl" in R["tasks"])]
    used = informative_tasks(lin, att, candidates)
    dropped = [t for t in candidates if t not in used]
    lo, hi = NORMALIZED_RANGE
    return (
        "Tasks, all on held-out data (Shakespeare plays not trained on; MQAR / copy from a "
        "disjoint seed): `lm_loss` = next-token cross-entropy (nats/token, lower is better); "
        "`kl` = KL(teacher ‖ model) per token (lower is better); `mqar` / `copy` = fraction of "
        "answer tokens predicted right (argmax; higher is better); `mc` = multiple-choice "
        "accuracy.\n\n"
        "**Objective** (the one number every search ranks by): each task score is normalized "
        "against the two reference sub-networks of the trained super-network, "
        "`(score - all_linear) / (all_attention - all_linear)`, so 0 = the all-linear "
        f"super-network and 1 = the all-attention one in either direction, clipped to "
        f"[{lo:g}, {hi:g}]; the objective is the mean of the normalized scores over "
        f"{', '.join(f'`{t}`' for t in used) or 'no task'}"
        + (" (`lm_loss` is left out whenever `kl` is measured: KL to the teacher is the "
           "distillation target" if "kl" in R["tasks"] else "")
        + (")" if "kl" in R["tasks"] else "")
        + (f"; {', '.join(f'`{t}`' for t in dropped)} left out because the two references differ by "
           f"less than {MIN_ACCURACY_SPAN} there" if dropped else "")
        + ". **A negative objective** means worse than the all-linear super-network on those "
        "tasks. Block-selection and hardware-search students are trained only "
        f"{R['config']['block_steps']} / {R['config']['hardware_steps']} steps from a fresh "
        "linear block, against references from a super-network trained "
        f"{R['config']['supernet_steps']} steps, so their objectives are typically negative: "
        "compare them with each other, not with 0.\n\n"
        "**±** is one standard error: across seeds for the final distillation (paired by "
        "seed for differences); for single-seed rows, the eval-set sampling error "
        "(eval rows as independent units). Decode throughput is batch / mean step time "
        "on this device; the hardware search repeats timings (its section says how).")


def write_report(results_path: str | os.PathLike) -> Path:
    """report.md + PNGs next to `results_path`, from that file only."""
    results_path = Path(results_path)
    R = json.loads(results_path.read_text())
    out = results_path.parent
    refs = R["references"]
    tasks = list(R["tasks"])
    F = R["finals"]
    P = F["placements"]
    rep = Report("PostNAS report")
    rep.text(verdict_paragraph(R))
    cfg = R["config"]
    rep.text(f"\nTeacher: {R['teacher']['describe']}. Linear block: `{R['block']}`. Budget: "
             f"k={R['budget']} full-attention layers (+{R['swa_budget']} SWA). Device: "
             f"{R['device']}. Total {R['total_seconds']:.0f} s. Everything below is generated "
             f"from `{results_path.name}`.")
    rep.section("Definitions", _definitions(R))

    # 1. placement search
    S = R["search"]
    rows = [{"placement": "reference: all-linear", **refs["all_linear"], "objective": 0.0},
            {"placement": "reference: all-attention", **refs["all_attn"], "objective": 1.0}]
    uniform_lt = P["uniform"]["layer_types"]
    for c in S["ranking"][:10]:
        tag = " (uniform)" if c["layer_types"] == uniform_lt else ""
        rows.append({"placement": _attn_layers(c["layer_types"]) + tag, **c["scores"],
                     "objective": c["objective"]})
    rep.section("1. Placement search (sub-networks of the trained super-network, no retraining)",
                f"Raw held-out scores of every final-size candidate the beam search evaluated "
                f"(best first, at most 10) and of the two references that define the "
                f"normalization; `objective` as defined above (references: 0 and 1 by "
                f"definition). Super-network trained {R['supernet']['steps']} steps.")
    rep.table(rows, ["placement", *tasks, "objective"])
    rep.text("\nPer-task best placement: " + "; ".join(
        f"{t}: {_attn_layers(c['layer_types'])}" for t, c in S["per_task_best"].items()))
    only = np.array([[np.nan if v is None else v for v in row] for row in S["importance_only_layer_attn"]])
    drop = np.array([[np.nan if v is None else v for v in row] for row in S["importance_drop_when_linear"]])
    plot_importance(only, drop, S["tasks"], out / "importance.png",
                    title=f"layer importance on the trained super-network ({R['block']})")
    rep.image(out / "importance.png", "layer importance", out)
    rep.text("\n*Layer importance.* Left: normalized score of the sub-network with only layer i "
             "on attention (all others linear). Right: 1 - normalized score of the sub-network "
             "with every layer on attention except layer i (how much is lost when layer i alone "
             "is linear). Blank (n/a): a task the two references do not separate.")

    # 2. block selection
    B = R.get("blocks")
    if B:
        brows = []
        for r in B["rows"]:
            if "error" in r:
                brows.append({"block": r["block"], "error": r["error"]})
                continue
            brows.append({"block": r["block"], **{t: r[t] for t in tasks if t in r},
                          "objective ± SE": pm(r["objective"], r.get("objective_se"), 3),
                          "train tok/s": r["train_tokens_per_s"],
                          "decode tok/s": r["decode_tokens_per_s"],
                          "cache bytes": r["cache_bytes"], "params": r["params"]})
        cols = ["block", *tasks, "objective ± SE", "train tok/s", "decode tok/s", "cache bytes",
                "params"] + (["error"] if any("error" in r for r in brows) else [])
        rep.section("2. Linear-block selection",
                    f"Each block distilled in the searched placement for {cfg['block_steps']} "
                    f"steps (one seed, identical data and recipe), then scored on the held-out "
                    f"tasks. ± is the eval-set SE of the objective. Throughputs measured once on "
                    f"this device (one timing round: indicative only). The pipeline keeps "
                    f"`{R['block']}` for the rest (zoo blocks have no official checkpoint "
                    f"format).")
        rep.table(brows, cols)

    # 3. hardware search
    H = R.get("hardware")
    if H:
        hrows = [{"shape": r["shape"] + (" (baseline)" if r["baseline"] else ""),
                  **{t: r[t] for t in tasks if t in r},
                  "objective ± SE": pm(r["objective"], r["objective_se"], 3),
                  "decode tok/s": r["decode_tokens_per_s"],
                  "speed vs baseline [95% CI]": f"{r['speed_ratio']:.3f} [{r['speed_ratio_lo']:.3f}, "
                                                f"{r['speed_ratio_hi']:.3f}]",
                  "timed steps": r["timed_steps"], "accuracy": r["accuracy"], "speed": r["speed"],
                  "cache bytes": r["cache_bytes"], "params": r["params"]}
                 for r in H["rows"]]
        rep.section("3. Hardware-aware search (decode cache held fixed)",
                    f"Grid over (heads, dk, dv) of `{R['block']}` whose per-layer state stays "
                    f"within {H['cache_tolerance']:.0%} of the baseline's; each distilled "
                    f"{cfg['hardware_steps']} steps (one seed) and scored. Decode step times "
                    f"were measured in up to {cfg['timing_max_rounds']} interleaved rounds of "
                    f"{cfg['decode_steps']} steps ({H['timing_rounds']} used), until each speed "
                    f"ratio's 95% CI was narrower than ±{cfg['timing_precision']:.0%} or on one "
                    f"side of 1 and of {1 - H['throughput_slack']:.2f}. `accuracy` / `speed` are "
                    f"each candidate's verdict against the baseline (objective difference "
                    f"beyond {H['k']:g} SE; speed CI above / below 1). A candidate replaces the "
                    f"baseline only if it is measurably better on one and not measurably worse "
                    f"on the other. The objective's SE is the eval-set sampling error of one "
                    f"training run: run-to-run (seed) variation is not in it.")
        rep.table(hrows)
        rep.text(f"\n**Decision: {H['decision']} -> {H['best']['shape']}** ({H['reason']}). "
                 f"{len(H['rejected'])} grid points rejected for cache size.")
        plot_tradeoff(H["rows"], "speed_ratio", "objective", "shape", out / "hardware.png",
                      title=f"hardware search: {R['block']} at a fixed cache "
                            f"({H['baseline']['cache_bytes']} B)",
                      highlight=H["best"]["shape"], yerr="objective_se",
                      xlabel="decode speed relative to the baseline shape (mean step time ratio)",
                      ylabel="objective (± eval-set SE)")
        rep.image(out / "hardware.png", "hardware search", out)
        rep.text("\n*Hardware search.* Each point is one shape: x = decode speed relative to the "
                 "baseline (1 = baseline), y = objective with its eval-set SE; red = chosen.")

    # 4. finals
    frows = [{"model": "teacher (all attention)", "layer_types": _attn_layers(R["teacher"]["layer_types"]),
              **{t: pm(R["teacher"]["scores"][t], float("nan")) for t in tasks},
              "objective": pm(R["teacher"]["objective"], float("nan"), 3),
              "decode tok/s": R["teacher"]["decode_tokens_per_s"],
              "cache bytes": R["teacher"]["cache_bytes"]}]
    groups = {}
    for name, rec in P.items():
        if "same_as" in rec:
            frows.append({"model": f"{name} = {rec['same_as']}",
                          "layer_types": _attn_layers(rec["layer_types"])})
            continue
        groups[name] = {t: (rec["mean"][t], rec["se"][t]) for t in [*tasks, "objective"]}
        frows.append({"model": name, "layer_types": _attn_layers(rec["layer_types"]),
                      **{t: pm(rec["mean"][t], rec["se"][t]) for t in tasks},
                      "objective": pm(rec["mean"]["objective"], rec["se"]["objective"], 3),
                      "kl before": pm(rec["mean"]["kl_before"], rec["se"]["kl_before"]),
                      "decode tok/s": rec["decode_tokens_per_s"],
                      "cache bytes": rec["cache_bytes"]})
    rep.section("4. Final distillation: searched vs baseline placements vs teacher",
                f"Each distinct placement distilled {F['steps']} steps with {F['seeds']} seed(s) "
                f"(seed i: data order i, and init seed i for a fresh student), identical recipe. "
                f"Start: {'the sub-network taken from the trained super-network' if F['start'] == 'super-network' else 'a fresh student with the hardware search shape'}. "
                f"Held-out scores, mean ± SE over seeds; `kl before` = KL before this stage. "
                f"Baselines with the same budget: `uniform` (evenly spaced, the paper's baseline) "
                f"and `worst searched` (the search's lowest-ranked placement). A row `a = b` is "
                f"the same placement as b (trained once).")
    rep.table(frows, ["model", "layer_types", *tasks, "objective", "kl before", "decode tok/s",
                      "cache bytes"])
    crow = [{"searched vs": c["b"], "task": c["task"],
             **({"searched": c["mean_a"], "baseline": c["mean_b"],
                 "difference ± SE": pm(c["diff"], c["se"]), "n seeds": c["n"]} if "diff" in c else {}),
             "verdict": c["verdict"]} for c in R["comparisons"]]
    rep.text(f"\nPaired comparisons (difference = searched - baseline, per seed; verdict for "
             f"`searched`, beyond {cfg['verdict_k']:g} SE):")
    rep.table(crow, ["searched vs", "task", "searched", "baseline", "difference ± SE",
                     "n seeds", "verdict"])
    plot_tasks = [t for t in ("kl", "mqar", "copy", "mc", "lm_loss") if t in tasks]
    plot_bars(groups, plot_tasks, out / "final_scores.png",
              title=f"final distillation: held-out scores, mean ± 1 SE over {F['seeds']} seed(s)",
              reference={t: R["teacher"]["scores"][t] for t in plot_tasks if t != "kl"})
    rep.image(out / "final_scores.png", "final held-out scores", out)
    rep.text("\n*Final scores.* The same numbers as the table: held-out score per placement, "
             "bar = mean over seeds, whisker = ±1 SE; dashed line = the teacher.")
    curves = {}
    for name, rec in P.items():
        if "runs" in rec:
            steps = [h["step"] for h in rec["runs"][0]["history"]]
            curves[name] = [{"step": st, "kl": float(np.mean([r["history"][i]["kl"]
                                                             for r in rec["runs"]]))}
                            for i, st in enumerate(steps)]
    plot_curves(curves, "kl", out / "final_kl.png",
                title="final distillation: training-batch KL (mean over seeds)",
                ylabel="KL on the training batch")
    rep.image(out / "final_kl.png", "final training curves", out)
    rep.text("\n*Training curves.* KL to the teacher on each step's *training* batch (one "
             "batch, so noisy; mean over seeds), not the held-out KL of the table: the two "
             "need not agree in order.")
    plot_curves({"super-network": R["supernet"]["history"]}, "kl", out / "supernet_kl.png",
                title="super-network training: KL of the sampled sub-network",
                ylabel="KL on the training batch")
    rep.image(out / "supernet_kl.png", "super-network training", out)
    rep.text("\n*Super-network training.* Training-batch KL of the sub-network sampled at "
             "each logged step (a different placement every step).")
    if R["teacher"].get("exported"):
        rep.text(f"\nExported HF directory of the searched student (seed 0): "
                 f"`{R['teacher']['exported']}`")
    rep.section("Timings (s)")
    rep.table([{k: round(v, 1) for k, v in R["timings"].items()}])
    return rep.write(out / "report.md")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m jet_jax_train.postnas.report RUN_DIR/results.json")
    print(write_report(sys.argv[1]))
