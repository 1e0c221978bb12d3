"""`jet-jax postnas`: PostNAS search of where to keep attention and which linear block to use.

    jet-jax postnas {supernet,search,blocks,hardware,pipeline} [--config FILE] [--set KEY=VALUE]

Every stage reads the same settings (`--config FILE` defining `CONFIG = PostNASConfig(...)`,
then `--set key=value` overrides) and works in `output_dir`:

    teacher/          HF directory of the teacher (pre-trained here unless `teacher` is set)
    supernet/         super-network weights (Orbax) + supernet.json (block, shapes)
    search.json       placement-search record; importance.png heatmap
    blocks.json       block-selection table;  hardware.json + hardware.png
    final/<name>/     HF export of the final student (JetBlock placements)
    results.json      every measurement of `pipeline`; report.md + PNGs are generated from it

The stages live in `jet_jax_train.postnas.stages`, the end-to-end run in `jet_jax_train.postnas.pipeline`,
the report in `jet_jax_train.postnas.report`; this module only parses arguments and dispatches.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jet_jax_train.config import ConfigError, apply_overrides
from jet_jax_train.postnas.config import PostNASConfig, load_config
from jet_jax_train.postnas.pipeline import pipeline  # noqa: F401 - `jet-jax demo` runs it from here
from jet_jax_train.postnas.progress import log
from jet_jax_train.postnas.trainer import Interrupted
from jet_jax_train.postnas.stages import (get_teacher, load_supernet, placement_from,
                                  references as _references, stage_blocks, stage_hardware,
                                  stage_search, stage_supernet, task_suite)

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
    """What would make `stage` fail on these settings before it trains anything (a kernel this
    backend lacks, a missing teacher, an unknown preset, a mesh the devices or the batch do
    not divide, a missing earlier stage, a stage or setting that several processes cannot
    run), or None. Checked before the output
    directory is created."""
    from jet_jax.ops.attention import backend_problem
    from jet_jax.presets import PRESETS
    problem = backend_problem(cfg.attention_implementation)
    if problem:
        return f"attention_implementation: {problem}; use 'chunked'"
    if cfg.teacher and not cfg.teacher.startswith("preset:") and not Path(cfg.teacher).is_dir():
        return f"teacher {cfg.teacher!r} is neither 'preset:<name>' nor a directory"
    preset = cfg.teacher.split(":", 1)[1] if cfg.teacher and cfg.teacher.startswith("preset:") \
        else None if cfg.teacher else cfg.teacher_preset
    if preset is not None and preset not in PRESETS:
        return f"unknown preset {preset!r}; available: {sorted(PRESETS)}"
    import jax
    processes = jax.process_count()
    if processes > 1:
        if stage != "supernet":
            return (f"`postnas {stage}` runs in one process ({processes} here); only `postnas "
                    "supernet` runs on several: run the later stages in one process on its "
                    "output_dir")
        if not cfg.teacher:
            return ("several processes need a given teacher (teacher: an HF directory or "
                    "'preset:<name>'; a one-process `postnas supernet` pre-trains one into "
                    "<output_dir>/teacher)")
        if tuple(cfg.mesh) == (1, 1, 1):
            return (f"several processes need a mesh over all {jax.device_count()} devices, "
                    "e.g. mesh=(-1, 1, 1)")
    if tuple(cfg.mesh) != (1, 1, 1):
        from jet_jax_train.distributed import resolve_mesh_shape
        try:
            data, fsdp, _ = resolve_mesh_shape(cfg.mesh, jax.device_count())
        except ValueError as e:
            return f"mesh: {e}"
        if cfg.batch_size % (data * fsdp):
            return (f"batch_size {cfg.batch_size} is not divisible by the mesh's data x fsdp = "
                    f"{data * fsdp} (mesh {tuple(cfg.mesh)})")
        if (data * fsdp) % processes:
            return (f"the mesh's data x fsdp = {data * fsdp} is not a multiple of the "
                    f"{processes} processes (each process feeds its own rows of the batch)")
    out = Path(cfg.output_dir)
    if stage == "search" and not (out / "supernet" / "supernet.json").exists():
        return f"no super-network in {out / 'supernet'}; run `jet-jax postnas supernet` first"
    return None


def _log(msg: str) -> None:
    log(msg)


def _placement_from(args, out: Path, block: str):
    return placement_from(getattr(args, "layer_types", None), out, block)


def run(args) -> int:
    try:
        cfg = _config(args)
    except ConfigError as e:
        print(f"jet-jax postnas: error: {e}", file=sys.stderr)
        return 2
    # before anything touches the devices: several processes (a pod, `jet_jax_train.launch`)
    # run `postnas supernet` as one job; a single process is unaffected
    from jet_jax_train.distributed import initialize_distributed
    initialize_distributed()
    problem = preflight(cfg, args.stage)
    if problem:
        print(f"jet-jax postnas: error: {problem}", file=sys.stderr)
        return 2
    try:
        return _run_stage(args, cfg)
    except Interrupted as e:  # preempted: the super-network's step is saved, exit cleanly
        log(f"stopped: {e}")
        return 0


def _run_stage(args, cfg: PostNASConfig) -> int:
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
