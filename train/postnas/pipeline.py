"""`jet-jax demo` / `jet-jax postnas pipeline`: every stage in order, one results file.

    1 teacher -> 2 super-network -> 3 placement search -> 4 block selection ->
    5 hardware search -> 6 final distillation (searched, uniform, worst searched; several
    seeds each) -> 7 evaluation + export -> 8 report

Everything measured goes into `<output_dir>/results.json`; `report.md` and every PNG are
then generated from that file alone (`jet_jax_train.postnas.report.write_report`), so the tables and
the plots cannot disagree. A line "[stage i/N] name" opens each stage; the long stages show
a progress bar with rate and ETA.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from jet_jax_train.postnas import stages
from jet_jax_train.postnas.config import PostNASConfig
from jet_jax_train.postnas.progress import log
from jet_jax_train.postnas.report import write_report

RESULTS_FILE = "results.json"


def _device() -> str:
    d = jax.devices()[0]
    return f"{d.platform} ({d.device_kind}), {len(jax.devices())} device(s)"


def eval_rows(results: dict) -> list[dict]:
    """The final table in plain numbers: teacher, then each placement's mean over seeds
    (with `<task>_se`)."""
    T = results["teacher"]
    rows = [{"model": "teacher (all attention)", "layer_types": ",".join(T["layer_types"]),
             **T["scores"], "objective": T["objective"]}]
    k = results["budget"]
    for name, rec in results["finals"]["placements"].items():
        if "same_as" in rec:
            rows.append({"model": f"{name} (k={k}) = {rec['same_as']}",
                         "layer_types": ",".join(rec["layer_types"])})
            continue
        rows.append({"model": f"{name} (k={k})", "layer_types": ",".join(rec["layer_types"]),
                     **rec["mean"], **{f"{t}_se": v for t, v in rec["se"].items()}})
    return rows


def pipeline(cfg: PostNASConfig) -> dict:
    """Run every stage; returns the results dict (also written to results.json)."""
    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages.enable_compilation_cache(out)
    (out / "postnas_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    names = ["teacher", "super-network", "placement search",
             *(["block selection"] if cfg.run_blocks else []),
             *(["hardware search"] if cfg.run_hardware else []),
             "final distillation", "evaluation + export", "report"]
    timings: dict[str, float] = {}
    clock = {"t": time.perf_counter(), "name": None}

    def stage(name: str) -> None:
        now = time.perf_counter()
        if clock["name"]:
            timings[clock["name"]] = now - clock["t"]
        clock.update(t=now, name=name)
        if name:
            log(f"[stage {names.index(name) + 1}/{len(names)}] {name}")

    stage("teacher")
    teacher = stages.get_teacher(cfg, out)
    stage("super-network")
    sup, sup_hist = stages.stage_supernet(cfg, out, teacher)
    stage("placement search")
    res, suite = stages.stage_search(cfg, out, teacher, sup)
    search = res.to_dict()
    refs = res.references
    choice = np.array(res.best.choice, np.int32)
    block = cfg.block
    blocks_res = hw_res = None
    if cfg.run_blocks:
        stage("block selection")
        blocks_res = stages.stage_blocks(cfg, out, teacher, choice, refs, suite)
    if cfg.run_hardware:
        stage("hardware search")
        hw_res = stages.stage_hardware(cfg, out, teacher, choice, block, refs, suite)
    shape_kw = stages.hardware_shape(teacher, block, hw_res)
    stage("final distillation")
    placements = stages.final_placements(cfg, search, sup.num_layers)
    finals, models = stages.stage_finals(cfg, teacher, sup, placements, block, shape_kw,
                                         suite, refs)
    stage("evaluation + export")
    teacher_eval = stages.stage_evaluation(cfg, out, teacher, models, block, suite, refs)
    stage("report")
    log("writing results.json, then report.md and the plots from it")
    stage(None)  # the report's own few seconds are not in `timings`
    results = {
        "config": dataclasses.asdict(cfg), "device": _device(),
        "teacher": {"describe": teacher.config.describe(), **teacher_eval},
        "block": block, "budget": cfg.budget, "swa_budget": cfg.swa_budget,
        "tasks": list(res.tasks), "references": refs,
        "supernet": {"steps": cfg.supernet_steps, "history": sup_hist},
        "search": search, "blocks": blocks_res, "hardware": hw_res,
        "finals": {"steps": cfg.final_steps, "seeds": cfg.final_seeds,
                   "start": "fresh shape" if shape_kw else "super-network",
                   "placements": finals},
        "comparisons": stages.comparisons(finals, res.tasks, cfg.verdict_k),
        "layer_types": finals["searched"]["layer_types"],
        "timings": timings, "total_seconds": time.perf_counter() - t_start,
    }
    results["eval"] = eval_rows(results)
    path = out / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2, default=_json_default))
    report = write_report(path)
    log(f"results: {path}; report: {report}")
    return results


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, tuple):
        return list(v)
    return float(v)
