"""Training a super-network by distillation from its teacher, on the distillation machinery.

`SupernetDistillStep` is `jet_jax_train.train_step.DistillStep` (mesh, optimizer with freezing
regexes, `jet_jax_train.losses.distill_loss`, train-state pytree) whose student forward also reads a
replicated `choice` [L] int32 from the batch: the sampled sub-network of that step, a traced
array, so every sub-network shares one compiled step.

`train_supernet` configures the training loop (`jet_jax_train.loop.TrainLoop`): per step draw `choice = sampler(step)` (deterministic in seed and
step), take a batch from the grain iterator and update; optionally checkpoint
(`jet_jax_train.checkpointing.TrainCheckpointer`, train state + data-iterator state) and resume.
With a "fixed" sampler the same loop is plain distillation of one architecture (used by block
selection and hardware search so every candidate gets the identical recipe).

A run with checkpoints stops cleanly on SIGTERM / SIGINT (a preemption; on several processes
at the same step, `jet_jax_train.preemption`): the step is saved and `Interrupted` is raised,
and the same run started again resumes there.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jet_jax.sharding import make_mesh
from jet_jax_train.config import LossSection, OptimizerSection
from jet_jax_train.distributed import mesh_from_config
from jet_jax_train.flat_model import FlatModel
from jet_jax_train.loop import TrainLoop
from jet_jax_train.postnas.sampling import ChoiceSampler
from jet_jax_train.postnas.supernet import SuperNetwork, frozen_patterns
from jet_jax_train.preemption import Preemption
from jet_jax_train.train_step import BATCH_AXES, DistillStep, shard_batch


class Interrupted(Exception):
    """Training stopped on a signal after saving `step` to `checkpoint_dir`; the same run
    started again resumes there."""

    def __init__(self, step: int, signum: int | None, checkpoint_dir: str):
        what = f"signal {signum}" if signum is not None else "a signal to another process"
        super().__init__(f"{what}: saved step {step} to {checkpoint_dir}; run the same command "
                         "again to resume")
        self.step, self.signum, self.checkpoint_dir = step, signum, checkpoint_dir


class SupernetDistillStep(DistillStep):
    """`step(state, teacher_params, batch, choice)`; `eval(...)`/`logits(...)` likewise."""

    def __post_init__(self):
        super().__post_init__()
        bs = dict(self.batch_shardings)
        bs["choice"] = self.replicated
        self.batch_shardings = bs
        # traced on the mesh, as DistillStep's: sharding constraints and kernels under shard_map
        self._step = jax.jit(self._on_mesh(self._step_fn),
                             in_shardings=(self.state_shardings, self.teacher_shardings, bs),
                             out_shardings=(self.state_shardings, self.replicated),
                             donate_argnums=(0,))
        self._eval = jax.jit(self._on_mesh(self._eval_fn),
                             in_shardings=(self.param_shardings, self.teacher_shardings, bs),
                             out_shardings=self.replicated)
        self._logits = jax.jit(self._on_mesh(lambda p, b: self._forward(self.student, p, b, False)),
                               in_shardings=(self.param_shardings, bs),
                               out_shardings=NamedSharding(self.mesh, P(BATCH_AXES)))

    def _apply(self, flat, model, batch, hidden, head):
        if flat is not self.student:
            return super()._apply(flat, model, batch, hidden, head)
        return model(batch["input_ids"], batch["choice"], batch["segment_ids"], batch["positions"],
                     return_hidden_states=hidden, head=head)

    def _put(self, batch, choice):
        out = shard_batch(batch, self.mesh)
        out["choice"] = jax.device_put(np.asarray(choice, np.int32), self.replicated)
        return out

    def step(self, state, teacher_params, batch, choice):
        return self._step(state, teacher_params, self._put(batch, choice))

    def eval(self, params, teacher_params, batch, choice):
        return self._eval(params, teacher_params, self._put(batch, choice))

    def logits(self, params, batch, choice):
        return self._logits(params, self._put(batch, choice))


@dataclasses.dataclass(frozen=True)
class SupernetTrainConfig:
    """steps: optimizer steps; train_attention: also train the attention paths (default frozen,
    as in the paper's search stage); log_every: history granularity; mesh_shape: the devices
    the step is sharded over (the batch over data x fsdp, parameters by their logical axes)."""

    steps: int = 100
    optimizer: OptimizerSection = OptimizerSection(lr=3e-3, warmup_steps=10)
    loss: LossSection = LossSection()
    train_attention: bool = False
    log_every: int = 10
    checkpoint_dir: str | None = None
    save_interval_steps: int = 100
    # (data, fsdp, tensor) mesh over all this process's devices (one -1 allowed); None or
    # (1, 1, 1): one device
    mesh_shape: tuple[int, int, int] | None = None
    # recompute each layer in the backward pass (activation memory of one layer, not all)
    remat: bool = False


def single_device_mesh():
    return make_mesh((1, 1, 1), devices=jax.devices()[:1])


def train_mesh(shape: tuple[int, int, int] | None):
    """The mesh of `SupernetTrainConfig.mesh_shape`: None or (1, 1, 1) is one device however
    many this host has; otherwise all of them (one -1 takes what the others leave)."""
    return single_device_mesh() if shape is None or tuple(shape) == (1, 1, 1) \
        else mesh_from_config(shape)


def build_mesh(shape: tuple[int, int, int] | None):
    """The mesh models are built sharded over for a run on `shape` (its training mesh), or
    None for one device (they are built whole there)."""
    return None if shape is None or tuple(shape) == (1, 1, 1) else train_mesh(shape)


def frozen_attention_patterns(layer_types) -> tuple[str, ...]:
    """Regexes freezing the attention mixers of a plain student (its `attn`/`swa` layers)."""
    idx = [str(i) for i, t in enumerate(layer_types) if t in ("attn", "swa")]
    return (rf"^model/layers/({'|'.join(idx)})/self_attn/",) if idx else ()


def train_supernet(supernet, teacher, data: Iterator[Mapping[str, np.ndarray]],
                   sampler: ChoiceSampler | None, cfg: SupernetTrainConfig, *, mesh=None,
                   on_log: Callable[[dict], None] | None = None, stage: str | None = None,
                   progress: str = "tqdm"):
    """Distil `supernet` from `teacher` for `cfg.steps` steps, sampling a sub-network per step.

    `supernet` may also be a plain `JetNemotronForCausalLM` student (sampler None): the same
    loop, optimizer, loss and freezing rule (embeddings/MLPs/norms frozen; attention layers
    too unless `train_attention`), i.e. plain distillation with the identical recipe.

    data: iterator of batches (dicts of [B, T] numpy arrays, jet_jax_train.data row format); a grain
      DatasetIterator is checkpointed with the train state when `checkpoint_dir` is set.
    Runs on `jet_jax_train.loop.TrainLoop` (progress bar labelled `stage`).
    Returns (the trained super-network, history: [{"step", "loss", "kl", "ce", "choice",
    "tokens_per_s"}]). Training throughput excludes the first (compiling) step.
    """
    is_super = isinstance(supernet, SuperNetwork)
    if is_super and sampler is None:
        raise ValueError("training a SuperNetwork needs a ChoiceSampler")
    if is_super and sampler.num_layers != supernet.num_layers:
        raise ValueError(f"sampler is for {sampler.num_layers} layers, super-network has "
                         f"{supernet.num_layers}")
    mesh = train_mesh(cfg.mesh_shape) if mesh is None else mesh
    if is_super:
        frozen = frozen_patterns(cfg.optimizer.frozen, cfg.train_attention)
    else:
        frozen = tuple(cfg.optimizer.frozen) + (
            () if cfg.train_attention else frozen_attention_patterns(supernet.config.layer_types))
    opt = dataclasses.replace(cfg.optimizer, frozen=frozen)
    if cfg.remat and not supernet.remat:
        supernet = nnx.merge(*nnx.split(supernet))  # a view (same arrays) that rematerialises
        supernet.remat = True
    student_flat, teacher_flat = FlatModel(supernet), FlatModel(teacher)
    cls = SupernetDistillStep if is_super else DistillStep
    step_obj = cls(student=student_flat, teacher=teacher_flat, optimizer_cfg=opt,
                   loss_cfg=cfg.loss, mesh=mesh, total_steps=cfg.steps)
    teacher_params = step_obj.put_teacher(teacher_flat.params(teacher))
    seed = sampler.cfg.seed if sampler is not None else 0
    state = step_obj.init_state(student_flat.params(supernet), seed=seed)
    start = 0
    ckpt = None
    if cfg.checkpoint_dir:
        from jet_jax_train.checkpointing import TrainCheckpointer
        fingerprint = {"postnas_supernet": getattr(supernet, "block", "student"),
                       "layers": len(supernet.model.layers), "steps": cfg.steps,
                       "lr": cfg.optimizer.lr,
                       "sampling": repr(sampler.cfg) if sampler else None}
        held = {x.dtype.name for x in teacher_params.values()}
        if held != {"float32"}:  # (left out at float32: older checkpoints still resume)
            fingerprint["teacher_param_dtype"] = ",".join(sorted(held))
        ckpt = TrainCheckpointer(cfg.checkpoint_dir, save_interval_steps=cfg.save_interval_steps,
                                 config_fingerprint=fingerprint)
        if ckpt.latest_step() is not None:
            state, data_state, _ = ckpt.restore(step_obj.abstract_state())
            if hasattr(data, "set_state") and data_state:
                data.set_state(data_state)
            start = int(ckpt.latest_step())
    history: list[dict] = []

    def next_input(step):
        return next(data), (sampler(step) if is_super else None)

    def step_fn(state, inputs):
        batch, choice = inputs
        if is_super:
            return step_obj.step(state, teacher_params, batch, choice)
        return step_obj.step(state, teacher_params, batch)

    def record(info):
        m = {k: float(v) for k, v in jax.device_get(info.metrics).items()}
        rec = {"step": info.step, **m, "tokens_per_s": info.tokens_per_s}
        if is_super:
            rec["choice"] = sampler(info.step - 1).tolist()
        history.append(rec)
        info.loop.postfix(f"kl {m['kl']:.4f}")
        if on_log is not None:
            on_log(rec)

    def data_state():
        return data.get_state() if hasattr(data, "get_state") else {}

    stage = stage or ("super-network" if is_super else "distill")
    stop = Preemption() if ckpt is not None else None  # only a run that can resume stops early
    loop = TrainLoop(step_fn, stage=stage, total_steps=cfg.steps, progress=progress,
                     tokens=lambda inputs: int(np.asarray(inputs[0]["input_ids"]).size),
                     stop_requested=None if stop is None else stop.should_stop)
    loop.every(cfg.log_every, record)
    if ckpt is not None:
        saved = {"step": start}

        def save(info):
            if ckpt.maybe_save(info.step, info.state, data_state=data_state()):
                saved["step"] = info.step

        def save_last(info):  # the last step, or the one a signal stopped at
            if info.step > saved["step"]:
                ckpt.maybe_save(info.step, info.state, data_state=data_state(), force=True)
        loop.every(1, save).at_end(save_last)
    try:
        with stop.installed() if stop is not None else contextlib.nullcontext():
            state, result = loop.run(state, next_input, start=start)
    finally:
        if ckpt is not None:
            ckpt.close()
    if result.interrupted:
        raise Interrupted(result.end_step, stop.signum, cfg.checkpoint_dir)
    # The trained parameters stay where the step left them (sharded over the mesh), so
    # whatever runs the returned model next (scoring, sub-networks, timings) runs on the
    # same devices instead of copying the parameters from the host at every call.
    trained = student_flat.merge(jax.block_until_ready(state["params"]))
    return trained, history
