"""Pre-training a teacher from scratch: cross-entropy on the training mixture, on the one
training loop (`jet_jax_train.loop.TrainLoop`) with the distillation optimizer (`jet_jax_train.optimizer`,
nothing frozen). Used by `jet-jax demo --distill-only` and by PostNAS when no teacher is given.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jet_jax.convert.hf import to_hf
from jet_jax.model import JetNemotronForCausalLM
from jet_jax_train.config import OptimizerSection
from jet_jax_train.data.pipeline import make_train_iterator
from jet_jax_train.flat_model import FlatModel
from jet_jax_train.losses import cross_entropy
from jet_jax_train.loop import TrainLoop
from jet_jax_train.optimizer import make_optimizer, param_labels


def ce_train_step(flat, tx):
    """Jitted (params, opt_state, batch) -> (params, opt_state, loss): one cross-entropy step
    of `flat` (a jet_jax_train.flat_model.FlatModel) with the optax transform `tx`."""

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            logits = flat.merge(p)(batch["input_ids"], batch["segment_ids"], batch["positions"])
            return cross_entropy(logits, batch["targets"], batch["loss_mask"])
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


def train_teacher(model_cfg, data_cfg, *, steps: int, lr: float, warmup_steps: int, seed: int,
                  out_dir: str, progress: str = "tqdm", print_fn=print) -> dict:
    """Cross-entropy pre-training of a Qwen2-architecture model on `jet_jax_train.loop.TrainLoop`, with
    the distillation optimizer (`jet_jax_train.optimizer`, nothing frozen); saved with `to_hf`."""
    if not model_cfg.is_qwen2:
        raise ValueError("the demo teacher must be a Qwen2 (all-attn) config")
    model = JetNemotronForCausalLM(model_cfg, rngs=nnx.Rngs(seed))
    flat = FlatModel(model)
    params = flat.params(model)
    opt = OptimizerSection(lr=lr, warmup_steps=warmup_steps, frozen=())
    tx, _ = make_optimizer(opt, param_labels(flat.names, opt), steps)
    it = make_train_iterator(data_cfg)
    step = ce_train_step(flat, tx)

    def step_fn(state, batch):
        params, opt_state, loss = step(*state, batch)
        return (params, opt_state), loss

    loop = TrainLoop(step_fn, stage="teacher", total_steps=steps,
                     tokens=data_cfg.batch_size * data_cfg.seq_len, progress=progress)
    final = {}
    loop.every(10, lambda info: info.loop.postfix(f"ce {float(info.metrics):.3f}"))
    loop.at_end(lambda info: final.update(ce=float(info.metrics)))
    (params, _), result = loop.run((params, tx.init(params)), lambda _: next(it))
    to_hf(flat.merge(params), out_dir, dtype=jnp.float32, overwrite=True)
    print_fn(f"teacher: {steps} steps, final train CE {final['ce']:.3f}, "
             f"{result.tokens_per_s:.0f} tokens/s, saved to {out_dir}")
    return {"steps": steps, "final_ce": final["ce"], "tokens_per_s": result.tokens_per_s,
            "wall_s": result.wall_s}
