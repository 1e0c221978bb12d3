"""The PostNAS stages, each a function of (settings, output dir, inputs) -> its record:

    get_teacher -> stage_supernet -> stage_search -> stage_blocks -> stage_hardware
    -> stage_finals (several seeds per placement) -> stage_evaluation (teacher + export)

`jet_jax_train.postnas.pipeline` runs them in order and writes one results file; `jet_jax_train.postnas.cli`
runs them one at a time. Files each stage writes under `output_dir`: teacher/ (HF directory),
supernet/ (Orbax + supernet.json), search.json, blocks.json, hardware.json, final/<name>/.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from jet_jax.checkpoint_io import load_params, save_params
from jet_jax.config import JetBlockConfig, ModelConfig
from jet_jax.convert.hf import from_hf, to_hf
from jet_jax.evaluation import read_mc_jsonl
from jet_jax.presets import get_preset
from jet_jax_train.config import LossSection, OptimizerSection
from jet_jax_train.data import (ByteTokenizer, DataConfig, SourceConfig,
                        make_eval_batches, make_mqar_eval_batches, make_task_eval_batches,
                        make_train_iterator)
from jet_jax_train.distributed import write_from_process_zero
from jet_jax_train.postnas import stats
from jet_jax_train.postnas.block_selection import (ThroughputConfig, build_student, objective,
                                           objective_error, select_block)
from jet_jax_train.postnas.config import PostNASConfig
from jet_jax_train.postnas.hardware_search import (HardwareSearchConfig, hardware_search,
                                           shape_overrides)
from jet_jax_train.postnas.placement_search import (LOWER_IS_BETTER, SearchConfig, TaskSuite,
                                            mc_task, search_placement,
                                            uniform_placement)
from jet_jax_train.postnas.progress import log
from jet_jax_train.progress import progress_bar
from jet_jax_train.postnas.sampling import ChoiceSampler, SamplingConfig
from jet_jax_train.postnas.supernet import (ATTN, LINEAR, SuperNetwork, choice_from_layer_types,
                                    extract_subnet, layer_types_from_choice)
from jet_jax_train.postnas.throughput import cache_bytes, measure_decode_throughput
from jet_jax_train.postnas.trainer import SupernetTrainConfig, build_mesh, train_supernet


# ----------------------------------------------------------------------------- building blocks
def enable_compilation_cache(out: Path) -> None:
    """Final seeds and timing rounds rebuild the same jitted programs (a new train step per
    run, a new decode step per timing round); XLA's persistent cache (in
    <output_dir>/xla_cache unless one is already set) compiles each program once."""
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str((Path(out) / "xla_cache").absolute()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    compilation_cache.reset_cache()  # re-read the settings at the next compilation


def data_config(cfg: PostNASConfig, seed_offset: int = 0) -> DataConfig:
    copy = ((SourceConfig(kind="copy", weight=cfg.copy_weight, copy=cfg.copy),) if cfg.copy else ())
    return DataConfig(
        sources=(SourceConfig(kind="shakespeare", weight=cfg.shakespeare_weight),
                 SourceConfig(kind="mqar", mqar=cfg.mqar, weight=cfg.mqar_weight), *copy),
        seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed + seed_offset)


def train_data(cfg: PostNASConfig, seed_offset: int = 0):
    """A fresh training iterator (identical stream for every candidate with the same offset)."""
    return make_train_iterator(data_config(cfg, seed_offset))


def task_suite(cfg: PostNASConfig, teacher) -> TaskSuite:
    dc = data_config(cfg)
    mc = None
    if cfg.mc_path:
        mc = mc_task(read_mc_jsonl(cfg.mc_path), ByteTokenizer(), batch_size=cfg.batch_size)
    copy = [s.copy for s in dc.sources if s.kind == "copy"]
    return TaskSuite(teacher=teacher, lm_batches=make_eval_batches(dc, cfg.eval_lm_batches),
                     mqar_batches=make_mqar_eval_batches(dc, cfg.eval_mqar_batches),
                     copy_batches=(make_task_eval_batches(dc, cfg.eval_copy_batches, copy[0])
                                   if copy else ()), mc=mc)


def jet_config(cfg: PostNASConfig) -> JetBlockConfig:
    return JetBlockConfig(num_heads=cfg.jet_heads, head_dim=cfg.jet_head_dim,
                          expand_v=cfg.jet_expand_v, conv_size=4, dconv_generator_reduction=8)


def train_cfg(cfg: PostNASConfig, steps: int, lr: float, train_attention: bool) -> SupernetTrainConfig:
    return SupernetTrainConfig(steps=steps, optimizer=OptimizerSection(lr=lr, warmup_steps=min(10, steps // 4)),
                               loss=LossSection(logits_chunk=cfg.logits_chunk),
                               train_attention=train_attention, log_every=max(1, steps // 5),
                               mesh_shape=tuple(cfg.mesh), remat=cfg.remat)


def throughput_config(cfg: PostNASConfig) -> ThroughputConfig:
    return ThroughputConfig(batch_size=cfg.decode_batch, context=cfg.decode_context,
                            steps=cfg.decode_steps)


def pretrained_teacher_config(cfg: PostNASConfig) -> ModelConfig:
    """The all-attention config the pipeline pre-trains when `teacher` is not set."""
    tcfg = get_preset(cfg.teacher_preset)
    if cfg.teacher_layers:
        tcfg = tcfg.replace(num_hidden_layers=cfg.teacher_layers,
                            layer_types=("attn",) * cfg.teacher_layers)
    return tcfg


def with_linear_block(cfg: PostNASConfig, teacher_config: ModelConfig) -> ModelConfig:
    """The teacher's config carrying the linear-block shape and SWA window every stage builds
    from (a qwen2 config carries them without using them)."""
    return teacher_config.replace(jet=jet_config(cfg), window_size=cfg.window_size)


def get_teacher(cfg: PostNASConfig, out: Path):
    from jet_jax_train.postnas.teacher import load_teacher, pretrain_teacher
    # Every model built from the teacher (super-network, sub-networks, students) runs its
    # attention kernel and computes in its dtype (SuperNetwork.from_teacher, extract_subnet).
    # On a mesh of several devices it is built sharded as training lays it out.
    options = dict(attention_implementation=cfg.attention_implementation,
                   mesh=build_mesh(tuple(cfg.mesh)))
    # Held in `teacher_param_dtype`; a teacher pre-trained here trains in float32 and is
    # rounded when loaded back.
    held = dict(param_dtype=jnp.dtype(cfg.teacher_param_dtype), dtype=jnp.dtype(cfg.dtype))
    if cfg.teacher:
        log(f"teacher: {cfg.teacher}")
        t = load_teacher(cfg.teacher, seed=cfg.seed, **held, **options)
    elif (out / "teacher" / "config.json").exists():
        log(f"teacher: reusing {out / 'teacher'}")
        t = from_hf(out / "teacher", **held, **options)
    else:
        tcfg = pretrained_teacher_config(cfg)
        log(f"teacher: pre-training {tcfg.describe()} for {cfg.teacher_steps} steps")
        t = pretrain_teacher(tcfg, data_config(cfg, seed_offset=100), steps=cfg.teacher_steps,
                             lr=cfg.teacher_lr, seed=cfg.seed, out_dir=out / "teacher", log=log,
                             **held, **options)
    t.config = with_linear_block(cfg, t.config)
    return t


def save_supernet(sup, path: Path) -> None:
    """supernet.json (block, shapes) + params/, staged and atomic (`checkpoint_io.save_params`);
    with several processes, gathered and written by process 0."""
    files = {"supernet.json": json.dumps({
        "block": sup.block, "enable_swa": sup.enable_swa,
        "jet": dataclasses.asdict(sup.config.jet), "window_size": sup.config.window_size,
        "zoo": {k: dict(v) for k, v in sup.config.zoo}}, indent=2)}
    graphdef, state = nnx.split(sup)
    write_from_process_zero(
        state, lambda host: save_params(nnx.merge(graphdef, host), path, overwrite=True, files=files),
        barrier="postnas supernet")


def load_supernet(path: Path, teacher):
    path = path.absolute()
    if not (path / "supernet.json").exists():
        raise FileNotFoundError(f"no super-network at {path}; run `jet-jax postnas supernet` first")
    meta = json.loads((path / "supernet.json").read_text())
    sup = SuperNetwork.from_teacher(teacher, meta["block"], enable_swa=meta["enable_swa"],
                                    jet=JetBlockConfig(**meta["jet"]), zoo=meta["zoo"] or None,
                                    window_size=meta["window_size"])
    load_params(sup, path)
    return sup


def placement_from(layer_types: str | None, out: Path, block: str) -> np.ndarray:
    """Choice vector from a comma-separated placement, else from search.json's best."""
    if layer_types:
        lt = tuple(t.strip() for t in layer_types.split(","))
        lt = tuple(block if t not in ("attn", "swa") else t for t in lt)
        return choice_from_layer_types(lt, block)
    rec = out / "search.json"
    if not rec.exists():
        raise FileNotFoundError(f"{rec} not found: run `postnas search` or pass --layer-types")
    return np.array(json.loads(rec.read_text())["best"]["choice"], np.int32)


def references(out: Path, sup=None, suite=None) -> dict:
    """The all-linear / all-attention reference scores (from search.json, else measured)."""
    rec = out / "search.json"
    if rec.exists():
        return json.loads(rec.read_text())["references"]
    L = sup.num_layers
    return {"all_linear": suite.score(sup, np.full(L, LINEAR)),
            "all_attn": suite.score(sup, np.full(L, ATTN))}


def uniform_like(cfg: PostNASConfig, choice: np.ndarray, num_layers: int) -> np.ndarray:
    """The uniform placement with the same budget (keeping `choice`'s SWA layers, if any)."""
    if not cfg.swa_budget:
        return np.array(uniform_placement(num_layers, cfg.budget), np.int32)
    uniform = choice.copy()
    uniform[uniform == 1] = 0
    free = np.flatnonzero(uniform == 0)
    for i in np.flatnonzero(np.array(uniform_placement(len(free), cfg.budget)) == 1):
        uniform[free[i]] = 1
    return uniform


# ----------------------------------------------------------------------------- stages
def stage_supernet(cfg: PostNASConfig, out: Path, teacher):
    sup = SuperNetwork.from_teacher(teacher, cfg.block, enable_swa=cfg.enable_swa or cfg.swa_budget > 0,
                                    seed=cfg.seed, jet=jet_config(cfg), window_size=cfg.window_size,
                                    mesh=build_mesh(tuple(cfg.mesh)))
    sampler = ChoiceSampler(sup.num_layers, SamplingConfig(
        rule=cfg.sampling_rule, budget=cfg.budget, swa_budget=cfg.swa_budget, seed=cfg.seed))
    # the shared recipe (mesh, remat, loss), with the super-network's own warmup, logging and
    # checkpoints
    tcfg = dataclasses.replace(
        train_cfg(cfg, cfg.supernet_steps, cfg.supernet_lr, cfg.train_attention),
        optimizer=OptimizerSection(lr=cfg.supernet_lr, warmup_steps=10),
        log_every=max(1, cfg.supernet_steps // 10),
        checkpoint_dir=str((out / "supernet_ckpt").absolute()),
        save_interval_steps=max(1, cfg.supernet_steps // 4))
    log(f"super-network: {sup.num_layers} layers x (attention + {cfg.block}), "
        f"{cfg.supernet_steps} steps, sampling {cfg.sampling_rule} k={cfg.budget}")
    sup, hist = train_supernet(sup, teacher, train_data(cfg), sampler, tcfg,
                               on_log=lambda r: log(f"  step {r['step']}: kl {r['kl']:.4f} "
                                                    f"choice {r['choice']}"))
    save_supernet(sup, out / "supernet")
    if jax.process_index() == 0:
        (out / "supernet_history.json").write_text(json.dumps(hist, indent=2))
    return sup, hist


def stage_search(cfg: PostNASConfig, out: Path, teacher, sup, suite=None):
    suite = suite or task_suite(cfg, teacher)
    scfg = SearchConfig(budget=cfg.budget, swa_budget=cfg.swa_budget, beam_width=cfg.beam_width,
                        seed=cfg.seed)
    log(f"placement search: tasks {suite.tasks}")
    res = search_placement(sup, suite, scfg, log=log)
    res.save_json(out / "search.json")
    log(f"best placement {res.layer_types} objective {res.best.objective:.4f} "
        f"({res.num_evaluations} evaluations)")
    return res, suite


def stage_blocks(cfg, out, teacher, choice, refs, suite) -> dict:
    enable_compilation_cache(out)
    log(f"block selection: {list(cfg.blocks)} in placement {choice.tolist()}, "
        f"{cfg.block_steps} steps each")
    res = select_block(teacher, choice, cfg.blocks, data=lambda: train_data(cfg), suite=suite,
                       references=refs,
                       train_cfg=train_cfg(cfg, cfg.block_steps, cfg.supernet_lr, False),
                       throughput=throughput_config(cfg), seed=cfg.seed, log=log)
    for r in res["rows"]:
        if "step_seconds" in r:  # one round of timings: summarised, not kept
            t = r.pop("step_seconds")
            r["decode_ms_per_step_mean"], r["decode_ms_per_step_se"] = (
                1e3 * v for v in stats.mean_se(t))
    res = {k: v for k, v in res.items() if k != "histories"}
    (out / "blocks.json").write_text(json.dumps(res, indent=2, default=float))
    return res


def stage_hardware(cfg, out, teacher, choice, block, refs, suite) -> dict:
    enable_compilation_cache(out)
    hs = HardwareSearchConfig(cache_tolerance=cfg.cache_tolerance,
                              throughput_slack=cfg.throughput_slack,
                              max_candidates=cfg.hardware_max_candidates,
                              timing_precision=cfg.timing_precision,
                              timing_max_rounds=cfg.timing_max_rounds, k=cfg.verdict_k)
    res = hardware_search(teacher, choice, block, data=lambda: train_data(cfg), suite=suite,
                          references=refs,
                          train_cfg=train_cfg(cfg, cfg.hardware_steps, cfg.supernet_lr, False),
                          hs=hs, throughput=throughput_config(cfg), seed=cfg.seed, log=log)
    (out / "hardware.json").write_text(json.dumps(res, indent=2, default=float))
    return res


def final_placements(cfg: PostNASConfig, search: dict, num_layers: int) -> dict[str, np.ndarray]:
    """searched (the search's best), uniform (evenly spaced, the paper's baseline) and worst
    searched (the search's lowest-ranked placement), all with the same budget."""
    choice = np.array(search["best"]["choice"], np.int32)
    return {"searched": choice, "uniform": uniform_like(cfg, choice, num_layers),
            "worst searched": np.array(search["ranking"][-1]["choice"], np.int32)}


def stage_finals(cfg: PostNASConfig, teacher, sup, placements: dict, block: str, shape_kw: dict,
                 suite: TaskSuite, refs: dict) -> tuple[dict, dict]:
    """Distil every distinct placement with `cfg.final_seeds` seeds (seed i: data order
    offset 1 + i and, for a fresh student, init seed cfg.seed + i; the same seeds for every
    placement, so differences are paired by seed).

    Returns ({name: record}, {name: a trained model (seed 0)}). A record has layer_types,
    start ("super-network" | "fresh shape"), runs [{seed, scores, se, objective, kl_before,
    history}], mean/se per task and for the objective, decode tokens/s, cache bytes; or
    same_as (a placement equal to an earlier one).
    """
    final_cfg = train_cfg(cfg, cfg.final_steps, cfg.final_lr, cfg.final_train_attention)
    distinct = {}
    for name, ch in placements.items():
        distinct.setdefault(layer_types_from_choice(ch, block), name)
    records, models = {}, {}
    runs = progress_bar(desc="final distillation", total=len(distinct) * cfg.final_seeds,
                        unit="run")
    for name, ch in placements.items():
        lt = layer_types_from_choice(ch, block)
        if distinct[lt] != name:
            records[name] = {"same_as": distinct[lt], "layer_types": list(lt)}
            continue
        rec = {"layer_types": list(lt), "start": "fresh shape" if shape_kw else "super-network",
               "runs": []}
        for s in range(cfg.final_seeds):
            runs.set_postfix_str(f"{name} seed {s}")
            if shape_kw:
                student = build_student(teacher, ch, block, seed=cfg.seed + s,
                                        mesh=build_mesh(tuple(cfg.mesh)), **shape_kw)
            else:
                student = extract_subnet(sup, lt)
            if s == 0 or shape_kw:  # from the super-network every seed starts identical
                before = suite.score(student)
            student, hist = train_supernet(student, teacher, train_data(cfg, seed_offset=1 + s),
                                           None, final_cfg)
            scores, se = suite.score_with_se(student)
            rec["runs"].append({"seed": s, "scores": scores, "se": se,
                                "objective": objective(scores, refs),
                                "objective_se": objective_error(se, refs),
                                "kl_before": before.get("kl", float("nan")), "history": hist})
            if s == 0:
                models[name] = student
            log(f"final [{name}] seed {s}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            runs.update(1)
        dec = measure_decode_throughput(models[name], batch_size=cfg.decode_batch,
                                        context=cfg.decode_context, steps=cfg.decode_steps)
        rec["decode_tokens_per_s"] = cfg.decode_batch / float(np.mean(dec["step_seconds"]))
        rec["cache_bytes"] = cache_bytes(models[name], cfg.decode_batch, cfg.decode_context)
        rec["mean"], rec["se"] = {}, {}
        for key in [*rec["runs"][0]["scores"], "objective", "kl_before"]:
            vals = [r[key] if key in ("objective", "kl_before") else r["scores"][key]
                    for r in rec["runs"]]
            rec["mean"][key], rec["se"][key] = stats.mean_se(vals)
        records[name] = rec
    runs.close()
    return records, models


def comparisons(finals: dict, tasks, k: float, a: str = "searched",
                against=("uniform", "worst searched")) -> list[dict]:
    """Paired-by-seed comparisons of placement `a` against each of `against`, per task and
    for the objective: {a, b, task, mean_a, mean_b, diff, se, n, verdict (for a)}."""
    out = []
    rec_a = finals[a]
    for b in against:
        rec_b = finals[b]
        if "same_as" in rec_b:
            out.append({"a": a, "b": b, "task": "all", "verdict": f"same placement as {rec_b['same_as']}"})
            continue
        for task in [*tasks, "objective"]:
            va = [r["objective"] if task == "objective" else r["scores"][task] for r in rec_a["runs"]]
            vb = [r["objective"] if task == "objective" else r["scores"][task] for r in rec_b["runs"]]
            c = stats.paired_comparison(va, vb, higher_is_better=not LOWER_IS_BETTER.get(task, True)
                                        if task != "objective" else True, k=k)
            out.append({"a": a, "b": b, "task": task, "mean_a": float(np.mean(va)),
                        "mean_b": float(np.mean(vb)), **c})
    return out


def stage_evaluation(cfg: PostNASConfig, out: Path, teacher, models: dict, block: str,
                     suite: TaskSuite, refs: dict) -> dict:
    """Teacher scores and decode speed (the reference row) and the HF export of the searched
    student (JetBlock only: zoo blocks have no official checkpoint format)."""
    scores, se = suite.score_with_se(teacher)
    # Timed with float32 parameters, as the students are: a teacher held in bf16 would
    # otherwise be timed with a different dtype (on CPU, with a bf16->f32 convert per weight).
    timed = teacher
    if cfg.teacher_param_dtype != "float32":
        graphdef, params = nnx.split(teacher)
        timed = nnx.merge(graphdef, jax.tree.map(lambda x: x.astype(jnp.float32), params))
    dec = measure_decode_throughput(timed, batch_size=cfg.decode_batch,
                                    context=cfg.decode_context, steps=cfg.decode_steps)
    exported = None
    if block == "jet":
        exported = str(to_hf(models["searched"], out / "final" / "searched", dtype=np.float32,
                             overwrite=True))
        log(f"exported the searched student to {exported}")
    return {"layer_types": list(teacher.config.layer_types), "scores": scores, "se": se,
            "objective": objective(scores, refs),
            "decode_tokens_per_s": cfg.decode_batch / float(np.mean(dec["step_seconds"])),
            "cache_bytes": cache_bytes(teacher, cfg.decode_batch, cfg.decode_context),
            "exported": exported}


def hardware_shape(teacher, block: str, hw: dict | None) -> dict:
    """Block-shape overrides from the hardware search's choice ({} = the baseline shape)."""
    if not hw or hw["best"]["baseline"]:
        return {}
    b = hw["best"]
    return shape_overrides(teacher.config, block, (b["heads"], b["dk"], b["dv"]))
