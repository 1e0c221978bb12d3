"""The distillation loop: teacher -> student, train with periodic eval, checkpoint, resume.

    run_distill(cfg) -> summary dict

* Teacher: `from_hf(cfg.model.teacher)` (an HF qwen2 / jet_nemotron directory) or
  `preset:<name>` (random init, for tests). Student: `student_from_teacher`.
* Auto-resume: if `<output_dir>/checkpoints` holds a complete step, params, optimizer state,
  step, rng and the data iterator position are restored, so the continued run sees exactly
  the batches (and, on CPU, produces exactly the losses) an uninterrupted run would.
* SIGTERM/SIGINT: finish the current step, save a checkpoint, exit cleanly (preemption).
* Metrics: `<output_dir>/metrics.jsonl` and TensorBoard under `<output_dir>/tensorboard`;
  eval = held-out LM loss (student CE), KL to the teacher, MQAR accuracy.
* Export: a run that reaches `train.steps` writes the student for `jet-jax generate` / `eval`
  to `<output_dir>/hf` (HF, the default) or `<output_dir>/model` (Orbax), per `train.export`;
  running the finished command again resumes at the last step and writes it again.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jet_jax.config import ModelConfig, hybrid_layer_types
from jet_jax.model import JetNemotronForCausalLM
from jet_jax.ops.attention import backend_problem
from jet_jax_train.checkpointing import TrainCheckpointer
from jet_jax_train.config import EXECUTION_KEYS, EXPORT_DIRS, ConfigError, TrainConfig, to_dict
from jet_jax_train.data.mqar import mqar_accuracy
from jet_jax_train.data.pipeline import make_eval_batches, make_mqar_eval_batches, make_train_iterator
from jet_jax_train.distributed import (initialize_distributed, mesh_from_config,
                                       write_from_process_zero)
from jet_jax_train.flat_model import FlatModel
from jet_jax_train.loop import TrainLoop
from jet_jax_train.metrics import MetricsWriter
from jet_jax_train.preemption import Preemption
from jet_jax_train.student import student_from_teacher
from jet_jax_train.train_step import DistillStep

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def load_teacher(spec: str, *, dtype=jnp.float32, param_dtype=jnp.float32, seed: int = 0,
                 mesh=None, **model_options) -> JetNemotronForCausalLM:
    """`preset:<name>` (random init) or an HF directory, computing in `dtype` with parameters
    held in `param_dtype`. `model_options`: constructor arguments such as `scan_layers` and
    the `*_implementation`s (ModelSection.model_options). mesh: build it sharded over this
    mesh by its logical axes (no device holds it whole) instead of on the default device."""
    if spec.startswith("preset:"):
        from jet_jax.presets import get_preset
        from jet_jax.sharding import sharded_init
        cfg = get_preset(spec.split(":", 1)[1])

        def build(**kw):
            make = lambda: JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(seed), dtype=dtype,  # noqa: E731
                                                  **kw, **model_options)
            return make() if mesh is None else sharded_init(make, mesh)
        model = build()
        if jnp.dtype(param_dtype) == jnp.float32:
            return model
        # initialised in float32 and rounded, as an HF teacher is: the same network in either
        # dtype (initialising in bf16 would draw other weights)
        out = nnx.eval_shape(lambda: build(param_dtype=param_dtype))
        nnx.update(out, jax.tree.map(lambda x: x.astype(param_dtype),
                                     nnx.state(model, nnx.Param)))
        return out
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"teacher {spec!r} is neither 'preset:<name>' nor an HF directory")
    from jet_jax.convert.hf import from_hf
    return from_hf(spec, dtype=dtype, param_dtype=param_dtype, mesh=mesh, **model_options)


def check_teacher(spec: str) -> None:
    """ConfigError (one line, naming the file) if `load_teacher(spec)` would fail on the spec
    or the directory's config.json; reads only that file."""
    if spec.startswith("preset:"):
        from jet_jax.presets import PRESETS
        if spec.split(":", 1)[1] not in PRESETS:
            raise ConfigError(f"model.teacher: unknown preset {spec!r}; available: {sorted(PRESETS)}")
        return
    if not os.path.isdir(spec):
        raise ConfigError(f"model.teacher: {spec!r} is neither 'preset:<name>' nor an HF directory")
    try:
        ModelConfig.from_json_file(os.path.join(spec, "config.json"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"model.teacher: {e}") from None


def check_kernels(cfg: TrainConfig, backend: str | None = None) -> None:
    """ConfigError (one line) if a kernel the config names cannot run on `backend` (default:
    this process's): Splash attention is a TPU (Mosaic) kernel."""
    problem = backend_problem(cfg.model.attention_implementation, backend)
    if problem:
        raise ConfigError(f"model.attention_implementation: {problem}; use 'chunked' (memory "
                          "linear in the sequence anywhere)")


def student_layer_types(cfg: TrainConfig, num_layers: int) -> tuple[str, ...]:
    m = cfg.model
    if m.layer_types is not None:
        return tuple(m.layer_types)
    return hybrid_layer_types(num_layers, attn=m.attn_layers, swa=m.swa_layers)


def fingerprint(cfg: TrainConfig) -> dict:
    """What must match for a checkpoint to be resumed (eval/logging/mesh may change)."""
    d = to_dict(cfg)
    d["model"] = {k: v for k, v in d["model"].items() if k not in EXECUTION_KEYS}
    if d["model"]["teacher_param_dtype"] == "float32":
        # the default, and what runs did before the setting existed: left out, so their
        # checkpoints still resume
        del d["model"]["teacher_param_dtype"]
    return {k: d[k] for k in ("model", "data", "optimizer", "loss")} | {
        "train": {"steps": cfg.train.steps, "seed": cfg.train.seed}}


def evaluate(ds: DistillStep, params, teacher_params, lm_batches, mqar_batches,
             teacher_mqar: float | None = None) -> dict[str, float]:
    """Held-out student CE (`loss_lm`), teacher CE, KL to teacher; MQAR accuracies."""
    sums: dict[str, float] = {}
    for b in lm_batches:
        m = jax.device_get(ds.eval(params, teacher_params, b))
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    out = {k: v / len(lm_batches) for k, v in sums.items()} if lm_batches else {}
    if mqar_batches:
        acc = [mqar_accuracy(np.asarray(jax.device_get(ds.logits(params, b))), b) for b in mqar_batches]
        out["mqar_acc"] = float(np.mean(acc))
        if teacher_mqar is not None:
            out["teacher_mqar_acc"] = teacher_mqar
    return out


def run_distill(cfg: TrainConfig, *, teacher_model: JetNemotronForCausalLM | None = None,
                print_fn: Callable[[str], Any] = print) -> dict:
    """Train; returns {"start_step", "end_step", "init_eval", "final_eval", "tokens_per_s",
    "train_wall_s", "interrupted"}."""
    initialize_distributed()
    check_kernels(cfg)  # after jax.distributed starts: it asks JAX for the backend
    out_dir = os.path.abspath(cfg.train.output_dir)
    shape = tuple(cfg.mesh.shape)
    devices = None
    if -1 not in shape and int(np.prod(shape)) < jax.device_count():
        devices = jax.devices()[:int(np.prod(shape))]
        print_fn(f"mesh {shape} uses {len(devices)} of {jax.device_count()} devices")
    mesh = mesh_from_config(shape, devices=devices)
    dtype = DTYPES[cfg.model.dtype]

    options = cfg.model.model_options()
    # On a mesh of several devices the teacher and the student are built sharded (each device
    # holds only its shards), so models larger than one device's memory can start.
    build_mesh = mesh if mesh.devices.size > 1 else None
    teacher = teacher_model if teacher_model is not None else load_teacher(
        cfg.model.teacher, dtype=dtype, param_dtype=DTYPES[cfg.model.teacher_param_dtype],
        seed=cfg.model.init_seed + 1, mesh=build_mesh, **options)
    layer_types = student_layer_types(cfg, teacher.config.num_hidden_layers)
    student = student_from_teacher(teacher, layer_types, jet=cfg.model.jet,
                                   window_size=cfg.model.window_size, seed=cfg.model.init_seed,
                                   dtype=dtype, remat=cfg.model.remat, mesh=build_mesh, **options)
    s_flat, t_flat = FlatModel(student), FlatModel(teacher)
    ds = DistillStep(s_flat, t_flat, cfg.optimizer, cfg.loss, mesh, total_steps=cfg.train.steps)
    teacher_params = ds.put_teacher(t_flat.params(teacher))
    init_params = s_flat.params(student)
    del teacher, student

    ckpt = TrainCheckpointer(os.path.join(out_dir, "checkpoints"),
                             save_interval_steps=cfg.checkpoint.save_interval_steps,
                             max_to_keep=cfg.checkpoint.max_to_keep,
                             async_save=cfg.checkpoint.async_save,
                             config_fingerprint=fingerprint(cfg))
    data_it = make_train_iterator(cfg.data)
    accum = cfg.optimizer.grad_accum_steps
    latest = ckpt.latest_step()
    if latest is not None:
        state, data_state, _ = ckpt.restore(ds.abstract_state())
        data_it.set_state(data_state["iterator"])
        start = int(jax.device_get(state["step"])) // accum
        print_fn(f"resumed from {ckpt.directory}/{latest} (step {start})")
    else:
        state = ds.init_state(init_params, cfg.train.seed)
        start = 0

    writer = MetricsWriter(out_dir, tensorboard=cfg.logging.tensorboard)
    lm_batches = (make_eval_batches(cfg.data, cfg.eval.num_batches)
                  if cfg.eval.num_batches > 0 else [])
    mqar_batches = (make_mqar_eval_batches(cfg.data, cfg.eval.mqar_batches)
                    if cfg.eval.mqar_batches > 0 else [])
    teacher_mqar = None
    if mqar_batches:
        teacher_mqar = float(np.mean([mqar_accuracy(np.asarray(jax.device_get(
            ds.teacher_logits(teacher_params, b))), b) for b in mqar_batches]))

    def do_eval(state, step):
        m = evaluate(ds, state["params"], teacher_params, lm_batches, mqar_batches, teacher_mqar)
        if m:
            writer.write(step, m, "eval")
        return m

    summary: dict[str, Any] = {"start_step": start, "init_eval": None, "interrupted": False}
    if start == 0 and (lm_batches or mqar_batches):
        summary["init_eval"] = do_eval(state, 0)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * accum
    stop = Preemption()

    def step_fn(state, micro_batches):
        metrics = []
        for batch in micro_batches:
            state, m = ds.step(state, teacher_params, batch)
            metrics.append(m)
        return state, metrics

    loop = TrainLoop(step_fn, stage="distill", total_steps=cfg.train.steps, tokens=tokens_per_step,
                     progress=cfg.logging.progress, stop_requested=stop.should_stop)
    saved = {"step": start}
    window = {"t": time.perf_counter(), "steps": 0}

    def save(info):
        if ckpt.maybe_save(info.step, info.state, data_state={"iterator": data_it.get_state()}):
            saved["step"] = info.step

    def log_train(info):
        vals = jax.device_get(info.metrics)
        metrics = {k: float(np.mean([v[k] for v in vals])) for k in vals[0]}
        now = time.perf_counter()
        steps = info.step - start - window["steps"]
        metrics["tokens_per_s"] = tokens_per_step * steps / (now - window["t"])
        window["t"], window["steps"] = now, info.step - start
        writer.write(info.step, metrics, "train")
        info.loop.postfix(f"loss {metrics['loss']:.4f} kl {metrics['kl']:.4f}")

    def periodic_eval(info):
        if info.step < cfg.train.steps:
            summary["final_eval"] = do_eval(info.state, info.step)

    def finish(info):
        if stop.stopped_at is not None:
            summary["interrupted"] = True
            print_fn(f"signal {stop.signum}: saving step {info.step} and stopping")
        if saved["step"] != info.step:
            ckpt.maybe_save(info.step, info.state, data_state={"iterator": data_it.get_state()},
                            force=True)
        if not summary["interrupted"] and (lm_batches or mqar_batches):
            summary["final_eval"] = do_eval(info.state, info.step)

    loop.every(1, save).every(cfg.logging.interval, log_train).every(cfg.eval.interval, periodic_eval)
    loop.at_end(finish)
    summary["final_eval"] = None
    try:
        with stop.installed():
            state, result = loop.run(state, lambda _: [next(data_it) for _ in range(accum)],
                                     start=start)
        summary["train_wall_s"] = result.wall_s
        if result.end_step > start:
            summary["tokens_per_s"] = result.tokens_per_s
        summary["end_step"] = result.end_step
        summary["final_params"] = state["params"]
        summary["student_config"] = s_flat.config
        summary["flat_model"] = s_flat
    finally:
        ckpt.close()
        writer.close()
    summary["exported"] = None
    sub = EXPORT_DIRS[cfg.train.export]
    if sub is not None and not summary["interrupted"] and summary["end_step"] >= cfg.train.steps:
        path = os.path.join(out_dir, sub)
        export_student(s_flat, state["params"], path, cfg.train.export,
                       tokenizer_from=cfg.model.teacher if os.path.isdir(cfg.model.teacher) else None)
        summary["exported"] = path
        print_fn(f"student written to {path} ({cfg.train.export})")
    return summary


def export_student(flat: FlatModel, params, path: str, fmt: str, *,
                   tokenizer_from: str | None = None) -> None:
    """Write the student `flat.merge(params)` to `path` as "hf" (`to_hf`) or "orbax"
    (`save_orbax`), in its parameter dtype, with the teacher's tokenizer files. Both writers
    stage the folder and move it into place, so an earlier export there is replaced whole. With
    several processes every process gathers the parameters and process 0 writes."""
    def write(host_params):
        model = flat.merge(host_params)
        if fmt == "hf":
            from jet_jax.convert.hf import to_hf
            to_hf(model, path, tokenizer_from=tokenizer_from, overwrite=True)
        else:
            from jet_jax.checkpoint_io import save_orbax
            save_orbax(model, path, tokenizer_from=tokenizer_from, overwrite=True)
    write_from_process_zero(params, write, barrier="jet-jax export")
