"""`jet-jax postnas`: PostNAS search of where to keep attention and which linear block to use.

    jet-jax postnas {supernet,search,blocks,hardware,pipeline} [--config FILE] [--set KEY=VALUE]

Every stage reads the same settings (`--config FILE` defining `CONFIG = PostNASConfig(...)`,
then `--set key=value` overrides) and works in `output_dir`:

    teacher/          HF directory of the teacher (pre-trained here unless `teacher` is set)
    supernet/         super-network weights (Orbax) + supernet.json (block, shapes)
    search.json       placement-search record; importance.png heatmap
    blocks.json       block-selection table;  hardware.json + hardware.png
    final/<name>/     HF export of the final student (JetBlock placements)
    report.md         tables + PNGs (pipeline)

`pipeline` runs: teacher -> super-network -> placement search -> block selection ->
hardware search -> final distillation of the chosen architecture and of the uniform
placement with the same budget -> evaluation vs the teacher -> HF export -> report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from train.config import ConfigError, apply_overrides
from train.postnas.config import PostNASConfig, load_config

STAGES = ("supernet", "search", "blocks", "hardware", "pipeline")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    helps = {
        "supernet": "train the super-network by distillation (pre-trains a tiny teacher if needed)",
        "search": "beam-search the full-attention placement on the trained super-network",
        "blocks": "train every linear block in the chosen placement; accuracy + throughput table",
        "hardware": "grid over (heads, dk, dv) at fixed cache size; pick by accuracy and speed",
        "pipeline": "everything end to end, then final distillation, export and report.md",
    }
    for name in STAGES:
        p = sub.add_parser(name, help=helps[name], description=helps[name])
        p.add_argument("--config", help="Python file defining CONFIG = PostNASConfig(...)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting (repeatable), e.g. --set budget=2")
        p.add_argument("--output-dir", help="override output_dir")
        if name in ("blocks", "hardware"):
            p.add_argument("--layer-types", help="comma-separated placement (default: search.json)")
        if name == "hardware":
            p.add_argument("--block", help="block to shape (default: blocks.json winner, else config)")


def _config(args) -> PostNASConfig:
    """The settings of this run: config file, then --set, then --output-dir (ConfigError if any
    is invalid; nothing has been written yet)."""
    cfg = apply_overrides(load_config(args.config), args.set)
    if args.output_dir:
        cfg = cfg.replace(output_dir=args.output_dir)
    return cfg


def preflight(cfg: PostNASConfig, stage: str) -> str | None:
    """What would make `stage` fail on these settings before it trains anything (a missing
    teacher, an unknown preset, a missing earlier stage), or None. Checked before the output
    directory is created."""
    from jet_jax.presets import PRESETS
    if cfg.teacher and not cfg.teacher.startswith("preset:") and not Path(cfg.teacher).is_dir():
        return f"teacher {cfg.teacher!r} is neither 'preset:<name>' nor a directory"
    preset = cfg.teacher.split(":", 1)[1] if cfg.teacher and cfg.teacher.startswith("preset:") \
        else None if cfg.teacher else cfg.teacher_preset
    if preset is not None and preset not in PRESETS:
        return f"unknown preset {preset!r}; available: {sorted(PRESETS)}"
    out = Path(cfg.output_dir)
    if stage == "search" and not (out / "supernet" / "supernet.json").exists():
        return f"no super-network in {out / 'supernet'}; run `jet-jax postnas supernet` first"
    return None


def _log(msg: str) -> None:
    print(f"[postnas {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- building blocks
def data_config(cfg: PostNASConfig, seed_offset: int = 0):
    from train.data import DataConfig, SourceConfig
    copy = ((SourceConfig(kind="copy", weight=cfg.copy_weight, copy=cfg.copy),) if cfg.copy else ())
    return DataConfig(
        sources=(SourceConfig(kind="shakespeare", weight=cfg.shakespeare_weight),
                 SourceConfig(kind="mqar", mqar=cfg.mqar, weight=cfg.mqar_weight), *copy),
        seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed + seed_offset)


def train_data(cfg: PostNASConfig, seed_offset: int = 0):
    """A fresh training iterator (identical stream for every candidate with the same offset)."""
    from train.data import make_train_iterator
    return make_train_iterator(data_config(cfg, seed_offset))


def task_suite(cfg: PostNASConfig, teacher):
    from train.data import (ByteTokenizer, make_eval_batches, make_mqar_eval_batches,
                            make_task_eval_batches)
    from train.postnas.placement_search import TaskSuite, load_mc_jsonl, mc_batches
    dc = data_config(cfg)
    mc = None
    if cfg.mc_path:
        items = load_mc_jsonl(cfg.mc_path)
        mc = (*mc_batches(items, ByteTokenizer(), batch_size=cfg.batch_size), items)
    copy = [s.copy for s in dc.sources if s.kind == "copy"]
    return TaskSuite(teacher=teacher, lm_batches=make_eval_batches(dc, cfg.eval_lm_batches),
                     mqar_batches=make_mqar_eval_batches(dc, cfg.eval_mqar_batches),
                     copy_batches=(make_task_eval_batches(dc, cfg.eval_copy_batches, copy[0])
                                   if copy else ()), mc=mc)


def jet_config(cfg: PostNASConfig):
    from jet_jax.config import JetBlockConfig
    return JetBlockConfig(num_heads=cfg.jet_heads, head_dim=cfg.jet_head_dim,
                          expand_v=cfg.jet_expand_v, conv_size=4, dconv_generator_reduction=8)


def get_teacher(cfg: PostNASConfig, out: Path):
    from jet_jax.convert.hf import from_hf
    from train.postnas.teacher import load_teacher, pretrain_teacher
    if cfg.teacher:
        _log(f"teacher: {cfg.teacher}")
        t = load_teacher(cfg.teacher, seed=cfg.seed)
    elif (out / "teacher" / "config.json").exists():
        _log(f"teacher: reusing {out / 'teacher'}")
        t = from_hf(out / "teacher")
    else:
        from configs.presets import get_preset
        tcfg = get_preset(cfg.teacher_preset)
        if cfg.teacher_layers:
            tcfg = tcfg.replace(num_hidden_layers=cfg.teacher_layers,
                                layer_types=("attn",) * cfg.teacher_layers)
        _log(f"teacher: pre-training {tcfg.describe()} for {cfg.teacher_steps} steps")
        t = pretrain_teacher(tcfg, data_config(cfg, seed_offset=100), steps=cfg.teacher_steps,
                             lr=cfg.teacher_lr, seed=cfg.seed, out_dir=out / "teacher", log=_log)
    # The linear-block shape and SWA window every stage builds from (a qwen2 config carries
    # them without using them).
    t.config = t.config.replace(jet=jet_config(cfg), window_size=cfg.window_size)
    return t


def save_supernet(sup, path: Path) -> None:
    """supernet.json (block, shapes) + params/, staged and atomic (`checkpoint_io.save_params`)."""
    from jet_jax.checkpoint_io import save_params
    save_params(sup, path, overwrite=True, files={"supernet.json": json.dumps({
        "block": sup.block, "enable_swa": sup.enable_swa,
        "jet": dataclasses.asdict(sup.config.jet), "window_size": sup.config.window_size,
        "zoo": {k: dict(v) for k, v in sup.config.zoo}}, indent=2)})


def load_supernet(path: Path, teacher):
    from jet_jax.checkpoint_io import load_params
    from jet_jax.config import JetBlockConfig
    from train.postnas.supernet import SuperNetwork
    path = path.absolute()
    if not (path / "supernet.json").exists():
        raise FileNotFoundError(f"no super-network at {path}; run `jet-jax postnas supernet` first")
    meta = json.loads((path / "supernet.json").read_text())
    sup = SuperNetwork.from_teacher(teacher, meta["block"], enable_swa=meta["enable_swa"],
                                    jet=JetBlockConfig(**meta["jet"]), zoo=meta["zoo"] or None,
                                    window_size=meta["window_size"])
    load_params(sup, path)
    return sup


# ----------------------------------------------------------------------------- stages
def stage_supernet(cfg: PostNASConfig, out: Path, teacher):
    from train.config import LossSection, OptimizerSection
    from train.postnas.sampling import ChoiceSampler, SamplingConfig
    from train.postnas.supernet import SuperNetwork
    from train.postnas.trainer import SupernetTrainConfig, train_supernet
    sup = SuperNetwork.from_teacher(teacher, cfg.block, enable_swa=cfg.enable_swa or cfg.swa_budget > 0,
                                    seed=cfg.seed, jet=jet_config(cfg), window_size=cfg.window_size)
    sampler = ChoiceSampler(sup.num_layers, SamplingConfig(
        rule=cfg.sampling_rule, budget=cfg.budget, swa_budget=cfg.swa_budget, seed=cfg.seed))
    tcfg = SupernetTrainConfig(
        steps=cfg.supernet_steps, optimizer=OptimizerSection(lr=cfg.supernet_lr, warmup_steps=10),
        loss=LossSection(), train_attention=cfg.train_attention,
        log_every=max(1, cfg.supernet_steps // 10),
        checkpoint_dir=str((out / "supernet_ckpt").absolute()),
        save_interval_steps=max(1, cfg.supernet_steps // 4))
    _log(f"super-network: {sup.num_layers} layers x (attention + {cfg.block}), "
         f"{cfg.supernet_steps} steps, sampling {cfg.sampling_rule} k={cfg.budget}")
    sup, hist = train_supernet(sup, teacher, train_data(cfg), sampler, tcfg,
                               on_log=lambda r: _log(f"  step {r['step']}: kl {r['kl']:.4f} "
                                                     f"choice {r['choice']}"))
    save_supernet(sup, out / "supernet")
    (out / "supernet_history.json").write_text(json.dumps(hist, indent=2))
    return sup, hist


def stage_search(cfg: PostNASConfig, out: Path, teacher, sup, suite=None):
    from train.postnas.placement_search import SearchConfig, search_placement
    from train.postnas.report import plot_importance
    suite = suite or task_suite(cfg, teacher)
    scfg = SearchConfig(budget=cfg.budget, swa_budget=cfg.swa_budget, beam_width=cfg.beam_width,
                        seed=cfg.seed)
    _log(f"placement search: tasks {suite.tasks}")
    res = search_placement(sup, suite, scfg, log=_log)
    res.save_json(out / "search.json")
    plot_importance(res.importance_only, res.importance_drop, res.tasks, out / "importance.png",
                    title=f"PostNAS layer importance ({res.block})")
    _log(f"best placement {res.layer_types} objective {res.best.objective:.4f} "
         f"({res.num_evaluations} evaluations)")
    return res, suite


def _placement_from(args, out: Path, block: str):
    from train.postnas.supernet import choice_from_layer_types
    if getattr(args, "layer_types", None):
        lt = tuple(t.strip() for t in args.layer_types.split(","))
        lt = tuple(block if t not in ("attn", "swa") else t for t in lt)
        return choice_from_layer_types(lt, block)
    rec = out / "search.json"
    if not rec.exists():
        raise FileNotFoundError(f"{rec} not found: run `postnas search` or pass --layer-types")
    return np.array(json.loads(rec.read_text())["best"]["choice"], np.int32)


def _references(out: Path, sup=None, suite=None):
    rec = out / "search.json"
    if rec.exists():
        return json.loads(rec.read_text())["references"]
    from train.postnas.supernet import ATTN, LINEAR
    L = sup.num_layers
    return {"all_linear": suite.score(sup, np.full(L, LINEAR)),
            "all_attn": suite.score(sup, np.full(L, ATTN))}


def _train_cfg(cfg: PostNASConfig, steps: int, lr: float, train_attention: bool):
    from train.config import LossSection, OptimizerSection
    from train.postnas.trainer import SupernetTrainConfig
    return SupernetTrainConfig(steps=steps, optimizer=OptimizerSection(lr=lr, warmup_steps=min(10, steps // 4)),
                               loss=LossSection(), train_attention=train_attention,
                               log_every=max(1, steps // 5))


def _throughput(cfg: PostNASConfig):
    from train.postnas.block_selection import ThroughputConfig
    return ThroughputConfig(batch_size=cfg.decode_batch, context=cfg.decode_context,
                            steps=cfg.decode_steps)


def stage_blocks(cfg, out, teacher, choice, references, suite):
    from train.postnas.block_selection import select_block
    from train.postnas.report import markdown_table
    _log(f"block selection: {list(cfg.blocks)} in placement {choice.tolist()}, "
         f"{cfg.block_steps} steps each")
    res = select_block(teacher, choice, cfg.blocks, data=lambda: train_data(cfg), suite=suite,
                       references=references,
                       train_cfg=_train_cfg(cfg, cfg.block_steps, cfg.supernet_lr, False),
                       throughput=_throughput(cfg), seed=cfg.seed, log=_log)
    (out / "blocks.json").write_text(json.dumps(res, indent=2, default=float))
    print(markdown_table(res["rows"], _BLOCK_COLUMNS(res["rows"])))
    return res


def _BLOCK_COLUMNS(rows):
    cols = ["block"] + [k for k in ("lm_loss", "kl", "mqar", "copy", "mc") if any(k in r for r in rows)]
    return cols + ["objective", "train_tokens_per_s", "decode_tokens_per_s", "cache_bytes",
                   "params"] + (["error"] if any("error" in r for r in rows) else [])


def stage_hardware(cfg, out, teacher, choice, block, references, suite):
    from train.postnas.hardware_search import HardwareSearchConfig, hardware_search
    from train.postnas.report import markdown_table, plot_tradeoff
    hs = HardwareSearchConfig(cache_tolerance=cfg.cache_tolerance,
                              throughput_slack=cfg.throughput_slack,
                              max_candidates=cfg.hardware_max_candidates)
    res = hardware_search(teacher, choice, block, data=lambda: train_data(cfg), suite=suite,
                          references=references,
                          train_cfg=_train_cfg(cfg, cfg.hardware_steps, cfg.supernet_lr, False),
                          hs=hs, throughput=_throughput(cfg), seed=cfg.seed, log=_log)
    for r in res["rows"]:
        r["shape"] = f"H{r['heads']} dk{r['dk']} dv{r['dv']}"
    (out / "hardware.json").write_text(json.dumps(res, indent=2, default=float))
    plot_tradeoff(res["rows"], "decode_tokens_per_s", "objective", "shape", out / "hardware.png",
                  title=f"{block}: fixed cache ({res['baseline']['cache_bytes']} B)",
                  highlight=res["best"]["shape"])
    print(markdown_table(res["rows"], _HW_COLUMNS))
    return res


_HW_COLUMNS = ["shape", "objective", "decode_tokens_per_s", "train_tokens_per_s", "cache_bytes",
               "cache_rel_diff", "params", "qualifies"]


# ----------------------------------------------------------------------------- pipeline
def pipeline(cfg: PostNASConfig) -> dict:
    from jet_jax.convert.hf import to_hf
    from train.postnas.block_selection import build_student, objective
    from train.postnas.report import Report, markdown_table, plot_curves
    from train.postnas.supernet import extract_subnet, layer_types_from_choice
    from train.postnas.throughput import cache_bytes, measure_decode_throughput
    from train.postnas.trainer import train_supernet

    t_start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "postnas_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    timings = {}

    def mark(name, t0):
        timings[name] = time.perf_counter() - t0
        return time.perf_counter()

    t0 = time.perf_counter()
    teacher = get_teacher(cfg, out)
    t0 = mark("teacher", t0)
    sup, sup_hist = stage_supernet(cfg, out, teacher)
    t0 = mark("supernet", t0)
    res, suite = stage_search(cfg, out, teacher, sup)
    choice = np.array(res.best.choice, np.int32)
    t0 = mark("search", t0)
    block, shape_kw, blocks_res, hw_res = cfg.block, {}, None, None
    if cfg.run_blocks:
        blocks_res = stage_blocks(cfg, out, teacher, choice, res.references, suite)
        t0 = mark("blocks", t0)
    if cfg.run_hardware:
        hw_res = stage_hardware(cfg, out, teacher, choice, block, res.references, suite)
        from train.postnas.hardware_search import shape_overrides
        b = hw_res["best"]
        if not b["baseline"]:
            shape_kw = shape_overrides(teacher.config, block, (b["heads"], b["dk"], b["dv"]))
        t0 = mark("hardware", t0)

    # Final distillation of the searched placement and of the baselines with the same budget:
    # the uniform (evenly spaced) placement and the search's lowest-ranked one. Each distinct
    # placement is trained once with the identical recipe and data. They start from the trained
    # super-network's paths, or - if the hardware search changed the block shape - fresh with
    # that shape; then the mixers (and attention, if final_train_attention) train.
    final_cfg = _train_cfg(cfg, cfg.final_steps, cfg.final_lr, cfg.final_train_attention)
    placements = {"searched": choice, "uniform": _uniform_like(cfg, choice, sup.num_layers),
                  "worst searched": np.array(res.ranking[-1].choice, np.int32)}
    finals, curves, trained = {}, {}, {}
    for name, ch in placements.items():
        lt = layer_types_from_choice(ch, block)
        if lt in trained:  # same placement as an earlier row: same model, same numbers
            finals[name] = {**finals[trained[lt]], "same_as": trained[lt]}
            _log(f"final distillation [{name}] = [{trained[lt]}] {lt}")
            continue
        trained[lt] = name
        if shape_kw:
            student = build_student(teacher, ch, block, seed=cfg.seed, **shape_kw)
        else:
            student = extract_subnet(sup, lt)
        before = suite.score(student)
        _log(f"final distillation [{name}] {lt}: {cfg.final_steps} steps")
        student, hist = train_supernet(student, teacher, train_data(cfg, seed_offset=1), None,
                                       final_cfg)
        after = suite.score(student)
        dec = measure_decode_throughput(student, batch_size=cfg.decode_batch,
                                        context=cfg.decode_context, steps=cfg.decode_steps)
        finals[name] = {"model": student, "layer_types": lt, "before": before, "after": after,
                        "decode_tokens_per_s": dec["decode_tokens_per_s"],
                        "cache_bytes": cache_bytes(student, cfg.decode_batch, cfg.decode_context)}
        curves[name] = hist
    t0 = mark("final_distillation", t0)
    t_scores = suite.score(teacher)
    t_dec = measure_decode_throughput(teacher, batch_size=cfg.decode_batch,
                                      context=cfg.decode_context, steps=cfg.decode_steps)
    eval_rows = [{"model": "teacher (all attention)", "layer_types": ",".join(teacher.config.layer_types),
                  **t_scores, "objective": objective(t_scores, res.references),
                  "decode_tokens_per_s": t_dec["decode_tokens_per_s"],
                  "cache_bytes": cache_bytes(teacher, cfg.decode_batch, cfg.decode_context)}]
    for name, f in finals.items():
        eval_rows.append({"model": f"{name} (k={cfg.budget})" + (f" = {f['same_as']}" if "same_as" in f else ""), "layer_types": ",".join(f["layer_types"]),
                          **f["after"], "kl_before_final": f["before"].get("kl", float("nan")),
                          "objective": objective(f["after"], res.references),
                          "decode_tokens_per_s": f["decode_tokens_per_s"],
                          "cache_bytes": f["cache_bytes"]})
    exported = None
    searched = finals["searched"]["model"]
    if block == "jet":
        exported = to_hf(searched, out / "final" / "searched", dtype=np.float32, overwrite=True)
        _log(f"exported the searched student to {exported}")
    t0 = mark("evaluation_export", t0)
    plot_curves(curves, "kl", out / "final_kl.png", title="final distillation: KL to teacher")
    plot_curves({"super-network": sup_hist}, "kl", out / "supernet_kl.png",
                title="super-network training: KL of the sampled sub-network")

    # ---- report
    rep = Report("PostNAS report")
    rep.text(f"Teacher: {teacher.config.describe()}. Linear block: `{block}`. Budget: k={cfg.budget} "
             f"full-attention layers (+{cfg.swa_budget} SWA). Device: {_device()}. Total "
             f"{time.perf_counter() - t_start:.0f} s.\n\nAll scores are measured on held-out "
             "data (Shakespeare plays not trained on; MQAR with a disjoint seed). `objective` = "
             "mean normalized score (all-linear super-network = 0, all-attention = 1) over the "
             "tasks the two references separate. Throughputs are wall-clock measurements on "
             "this device; on a shared CPU they are noisy.")
    rep.section("1. Placement search (on the trained super-network)",
                "Scores of each candidate sub-network of the trained super-network, per task "
                "(normalized: all-linear = 0, all-attention = 1). Best first.")
    rows = []
    for c in res.ranking[:10]:
        d = c.to_dict(res.block)
        rows.append({"attn layers": d["attn_layers"], "swa layers": d["swa_layers"],
                     **{t: c.scores[t] for t in res.tasks}, "objective": c.objective})
    rep.table(rows)
    rep.text("\nPer-task best placement: " + "; ".join(
        f"{t}: attn {[i for i, x in enumerate(c.choice) if x == 1]}"
        for t, c in res.per_task_best.items()))
    rep.image(out / "importance.png", "layer importance", out)
    if blocks_res:
        rep.section("2. Linear-block selection", f"Same placement, same recipe "
                    f"({cfg.block_steps} steps). Throughput measured on this device.")
        rep.table(blocks_res["rows"], _BLOCK_COLUMNS(blocks_res["rows"]))
        rep.text(f"\nBest by objective: **{blocks_res['best']}** (the pipeline keeps `{block}` "
                 "for export: zoo blocks have no official checkpoint format).")
    if hw_res:
        rep.section("3. Hardware-aware search", f"Cache held fixed (tolerance "
                    f"{hw_res['cache_tolerance']:.0%}); chosen = most accurate with decode "
                    f"throughput >= baseline x (1 - {hw_res['throughput_slack']:.0%}).")
        rep.table(hw_res["rows"], _HW_COLUMNS)
        rep.text(f"\nChosen: **{hw_res['best']['shape']}** (baseline "
                 f"{hw_res['baseline']['shape']}); {len(hw_res['rejected'])} grid points "
                 "rejected for cache size.")
        rep.image(out / "hardware.png", "hardware search", out)
    rep.section("4. Final distillation: searched vs baseline placements vs teacher",
                f"{cfg.final_steps} steps each, identical recipe and data. Baselines with the "
                "same budget: `uniform` (evenly spaced, the paper's baseline) and `worst "
                "searched` (the search's lowest-ranked placement). A row marked `= name` is "
                "the same placement as that row (trained once). `kl_before_final` is the "
                "student's KL before this stage: "
                + ("freshly initialised with the hardware search's shape." if shape_kw else
                   "the sub-network straight out of the super-network."))
    rep.table(eval_rows, ["model", "layer_types", *res.tasks, "kl_before_final", "objective",
                          "decode_tokens_per_s", "cache_bytes"])
    rep.image(out / "final_kl.png", "final KL curves", out)
    rep.image(out / "supernet_kl.png", "super-network training", out)
    if exported:
        rep.text(f"\nExported HF directory: `{exported}`")
    rep.section("Timings (s)")
    rep.table([{k: round(v, 1) for k, v in timings.items()}])
    path = rep.write(out / "report.md")
    summary = {"report": str(path), "layer_types": list(finals["searched"]["layer_types"]),
               "eval": eval_rows, "timings": timings}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    _log(f"report: {path}")
    print(markdown_table(eval_rows))
    return summary


def _uniform_like(cfg: PostNASConfig, choice: np.ndarray, num_layers: int) -> np.ndarray:
    """The uniform placement with the same budget (keeping `choice`'s SWA layers, if any)."""
    from train.postnas.placement_search import uniform_placement
    if not cfg.swa_budget:
        return np.array(uniform_placement(num_layers, cfg.budget), np.int32)
    uniform = choice.copy()
    uniform[uniform == 1] = 0
    free = np.flatnonzero(uniform == 0)
    for i in np.flatnonzero(np.array(uniform_placement(len(free), cfg.budget)) == 1):
        uniform[free[i]] = 1
    return uniform


def _device() -> str:
    import jax
    d = jax.devices()[0]
    return f"{d.platform} ({d.device_kind}), {len(jax.devices())} device(s)"


def run(args) -> int:
    try:
        cfg = _config(args)
    except ConfigError as e:
        print(f"jet-jax postnas: error: {e}", file=sys.stderr)
        return 2
    problem = preflight(cfg, args.stage)
    if problem:
        print(f"jet-jax postnas: error: {problem}", file=sys.stderr)
        return 2
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage == "pipeline":
        pipeline(cfg)
        return 0
    teacher = get_teacher(cfg, out)
    if args.stage == "supernet":
        stage_supernet(cfg, out, teacher)
        return 0
    if args.stage == "search":
        sup = load_supernet(out / "supernet", teacher)
        stage_search(cfg, out, teacher, sup)
        return 0
    suite = task_suite(cfg, teacher)
    sup = None
    if not (out / "search.json").exists():
        sup = load_supernet(out / "supernet", teacher)
    refs = _references(out, sup, suite)
    if args.stage == "blocks":
        block = cfg.block
        stage_blocks(cfg, out, teacher, _placement_from(args, out, block), refs, suite)
        return 0
    block = args.block or (json.loads((out / "blocks.json").read_text())["best"]
                           if (out / "blocks.json").exists() else cfg.block)
    stage_hardware(cfg, out, teacher, _placement_from(args, out, block),
                   block, refs, suite)
    return 0
