"""The jitted distillation step (and eval step) on a (data, fsdp, tensor) mesh.

Train state (a plain pytree, checkpointed as is):
    {"params": {flat name: array}, "opt_state": optax state, "step": int32 (micro-steps),
     "rng": uint32[2] (split every step; reserved for stochastic objectives)}

Parameters are sharded by their logical axis names (jet_jax.sharding rules), the optimizer
state like its parameters, the batch over ("data", "fsdp") on its batch dim, everything else
replicated; in/out shardings are explicit so a step never reshards silently. The teacher runs
in the same step on its own (sharded, frozen) parameters; its outputs are stop_gradient-ed
and only the trainable student parameters are differentiated. Frozen parameters are passed
through untouched (their optimizer branch is set_to_zero), so they stay bitwise identical.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jet_jax.sharding import constrain, step_mesh
from jet_jax_train.config import LossSection, OptimizerSection
from jet_jax_train.flat_model import FlatModel
from jet_jax_train.losses import distill_loss
from jet_jax_train.optimizer import FROZEN, TRAINABLE, make_optimizer, param_labels

BATCH_KEYS = ("input_ids", "segment_ids", "positions", "targets", "loss_mask")
BATCH_AXES = ("data", "fsdp")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays sharded over the batch axes."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch is missing {missing}; expected keys {BATCH_KEYS}")
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    sharding = batch_sharding(mesh)
    out = {}
    for k in BATCH_KEYS:
        x = np.asarray(batch[k])
        if (x.shape[0] * jax.process_count()) % shards:
            raise ValueError(f"global batch size {x.shape[0] * jax.process_count()} is not divisible "
                             f"by data*fsdp = {shards}")
        out[k] = jax.make_array_from_process_local_data(sharding, x)
    return out


@dataclasses.dataclass
class DistillStep:
    """Static pieces of training: models' graphs, optimizer, loss settings, mesh.

    `init_state(student_params)`, `abstract_state()` (for checkpoint restore),
    `step(state, teacher_params, batch) -> (state, metrics)`,
    `eval(student_params, teacher_params, batch) -> metrics`, `logits(params, batch)`.
    """

    student: FlatModel
    teacher: FlatModel
    optimizer_cfg: OptimizerSection
    loss_cfg: LossSection
    mesh: Mesh
    total_steps: int  # optimizer steps, for the lr schedule
    # > 0: KL/CE from hidden states over sequence chunks of this many positions, so the
    # [B, T, vocab] float32 logits never exist whole (jet_jax_train.losses.chunked_kl_and_ce).
    # None: the loss section's `logits_chunk` if it has one, else 0 (whole logits).
    logits_chunk: int | None = None

    def __post_init__(self):
        if self.logits_chunk is None:
            self.logits_chunk = int(getattr(self.loss_cfg, "logits_chunk", 0) or 0)
        self.labels = param_labels(self.student.names, self.optimizer_cfg)
        self.tx, self.schedule = make_optimizer(self.optimizer_cfg, self.labels, self.total_steps)
        self.accum = self.optimizer_cfg.grad_accum_steps
        self.replicated = NamedSharding(self.mesh, P())
        self.param_shardings = self.student.shardings(self.mesh)
        self.teacher_shardings = self.teacher.shardings(self.mesh)
        abstract = self._abstract_unsharded()
        opt_shardings = self._opt_state_shardings(abstract["opt_state"])
        self.state_shardings = {"params": self.param_shardings, "opt_state": opt_shardings,
                                "step": self.replicated, "rng": self.replicated}
        bs = batch_sharding(self.mesh)
        self.batch_shardings = {k: bs for k in BATCH_KEYS}
        metric_sh = self.replicated
        self._step = jax.jit(self._on_mesh(self._step_fn),
                             in_shardings=(self.state_shardings, self.teacher_shardings,
                                           self.batch_shardings),
                             out_shardings=(self.state_shardings, metric_sh),
                             donate_argnums=(0,))
        self._eval = jax.jit(self._on_mesh(self._eval_fn),
                             in_shardings=(self.param_shardings, self.teacher_shardings,
                                           self.batch_shardings),
                             out_shardings=metric_sh)
        self._logits = jax.jit(self._on_mesh(lambda p, b: self._forward(self.student, p, b, False)),
                               in_shardings=(self.param_shardings, self.batch_shardings),
                               out_shardings=NamedSharding(self.mesh, P(BATCH_AXES)))
        self._teacher_logits = jax.jit(self._on_mesh(lambda p, b: self._forward(self.teacher, p, b, False)),
                                       in_shardings=(self.teacher_shardings, self.batch_shardings),
                                       out_shardings=NamedSharding(self.mesh, P(BATCH_AXES)))
        self._init = jax.jit(self._init_fn, in_shardings=(self.param_shardings,),
                             out_shardings=self.state_shardings, static_argnums=(1,))

    def _on_mesh(self, fn):
        """`fn` traced on this mesh (jet_jax.sharding.step_mesh): the residual stream and logits
        stay batch-sharded, and Pallas kernels run per device, not on gathered operands."""
        def traced(*args):
            with step_mesh(self.mesh):
                return fn(*args)
        return traced

    # ---------------------------------------------------------------- state
    def _opt_state_shardings(self, abstract_opt_state):
        """Per-parameter optimizer leaves (Adam moments, accumulators: found under the
        parameter's name with its shape) shard like the parameter; the rest is replicated."""
        abstract_params = self.student.abstract_params()

        def one(path, leaf):
            for entry in reversed(path):
                name = getattr(entry, "key", None)
                if isinstance(name, str) and name in self.param_shardings:
                    if tuple(leaf.shape) == tuple(abstract_params[name].shape):
                        return self.param_shardings[name]
                    break
            return self.replicated

        return jax.tree_util.tree_map_with_path(one, abstract_opt_state)

    def _init_fn(self, params, seed: int):
        return {"params": params, "opt_state": self.tx.init(params),
                "step": jnp.zeros((), jnp.int32), "rng": jax.random.PRNGKey(seed)}

    def _abstract_unsharded(self):
        return jax.eval_shape(lambda p: self._init_fn(p, 0), self.student.abstract_params())

    def abstract_state(self) -> Any:
        """ShapeDtypeStructs carrying this mesh's shardings (the restore target)."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self._abstract_unsharded(), self.state_shardings)

    def init_state(self, student_params: Mapping[str, jax.Array], seed: int = 0):
        # Blocking on the transfers first: with many fake CPU devices on few cores, queuing a
        # computation behind still-pending host->device copies has been seen to deadlock.
        params = jax.block_until_ready(jax.device_put(dict(student_params), self.param_shardings))
        return jax.block_until_ready(self._init(params, seed))

    def put_teacher(self, teacher_params: Mapping[str, jax.Array]):
        return jax.block_until_ready(jax.device_put(dict(teacher_params), self.teacher_shardings))

    # ---------------------------------------------------------------- math
    def _apply(self, flat: FlatModel, model, batch, hidden: bool, head: bool):
        """`model` (merged from `flat`) on `batch`; the one place a model is called."""
        return model(batch["input_ids"], batch["segment_ids"], batch["positions"],
                     return_hidden_states=hidden, head=head)

    def _forward(self, flat: FlatModel, params, batch, hidden: bool, head: bool = True):
        return self._apply(flat, flat.merge(params), batch, hidden, head)

    def _loss_forward(self, flat: FlatModel, params, batch, hidden: bool):
        """The outputs the loss reads; with `logits_chunk`, final hidden states + the head."""
        if not self.logits_chunk:
            return self._forward(flat, params, batch, hidden), None
        model = flat.merge(params)
        out = self._apply(flat, model, batch, hidden, head=False)
        # FSDP gathers the head's weight (its embed dim) once here; left to XLA, every chunk
        # loop and its remat pass gathered its own whole copy (4 live [D, V] copies measured).
        if model.config.tie_word_embeddings:
            emb = model.model.embed_tokens.embedding
            emb.value = constrain(emb.value, "activation_vocab", None)
        else:
            kernel = model.lm_head.kernel
            kernel.value = constrain(kernel.value, None, "activation_vocab")
        return out, model.logits_from_hidden

    def _loss(self, student_out, teacher_out, batch, heads=None):
        c = self.loss_cfg
        return distill_loss(student_out, teacher_out, batch, temperature=c.temperature,
                            kl_weight=c.kl_weight, ce_weight=c.ce_weight,
                            mse_weight=c.mse_weight, mse_layers=c.mse_layers,
                            heads=heads, logits_chunk=self.logits_chunk or 512)

    def _step_fn(self, state, teacher_params, batch):
        hidden = self.loss_cfg.mse_weight > 0
        teacher_out, teacher_head = self._loss_forward(self.teacher, teacher_params, batch, hidden)
        teacher_out = jax.lax.stop_gradient(teacher_out)
        params = state["params"]
        trainable = {k: v for k, v in params.items() if self.labels[k] == TRAINABLE}
        frozen = {k: v for k, v in params.items() if self.labels[k] == FROZEN}

        def loss_fn(trainable_params):
            out, student_head = self._loss_forward(self.student, {**frozen, **trainable_params},
                                                   batch, hidden)
            heads = None if student_head is None else (student_head, teacher_head)
            return self._loss(out, teacher_out, batch, heads)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        metrics["grad_norm"] = optax.global_norm(grads)
        # The frozen branch is optax.set_to_zero: it ignores these zeros (no state, no update).
        full_grads = {**{k: jnp.zeros_like(v) for k, v in frozen.items()}, **grads}
        updates, opt_state = self.tx.update(full_grads, state["opt_state"], params)
        new_trainable = optax.apply_updates(trainable, {k: updates[k] for k in trainable})
        metrics["lr"] = self.schedule(state["step"] // self.accum)
        rng, _ = jax.random.split(state["rng"])
        new_state = {"params": {**frozen, **new_trainable}, "opt_state": opt_state,
                     "step": state["step"] + 1, "rng": rng}
        return new_state, metrics

    def _eval_fn(self, params, teacher_params, batch):
        hidden = self.loss_cfg.mse_weight > 0
        teacher_out, teacher_head = self._loss_forward(self.teacher, teacher_params, batch, hidden)
        student_out, student_head = self._loss_forward(self.student, params, batch, hidden)
        heads = None if student_head is None else (student_head, teacher_head)
        _, metrics = self._loss(student_out, teacher_out, batch, heads)
        t_logits = teacher_out[0] if hidden else teacher_out
        t_heads = None if heads is None else (teacher_head, teacher_head)
        _, t_metrics = self._loss(t_logits, t_logits, batch, t_heads) if not hidden else \
            self._loss((t_logits, teacher_out[1]), teacher_out, batch, t_heads)
        metrics["teacher_ce"] = t_metrics["ce"]
        return metrics

    # ---------------------------------------------------------------- API
    def step(self, state, teacher_params, batch: Mapping[str, np.ndarray]):
        """One micro-step (an optimizer update every grad_accum_steps calls)."""
        return self._step(state, teacher_params, shard_batch(batch, self.mesh))

    def eval(self, params, teacher_params, batch: Mapping[str, np.ndarray]):
        return self._eval(params, teacher_params, shard_batch(batch, self.mesh))

    def logits(self, params, batch: Mapping[str, np.ndarray]) -> jax.Array:
        return self._logits(params, shard_batch(batch, self.mesh))

    def teacher_logits(self, teacher_params, batch: Mapping[str, np.ndarray]) -> jax.Array:
        return self._teacher_logits(teacher_params, shard_batch(batch, self.mesh))
