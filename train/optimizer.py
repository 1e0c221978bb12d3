"""AdamW + linear warmup / cosine decay + global-norm clipping, with freezing and gradient
accumulation done by optax:

    MultiSteps(                                   # grad_accum_steps micro-batches per update
      multi_transform({
        "trainable": chain(clip_by_global_norm, adamw(schedule, mask=matrices only)),
        "frozen":    set_to_zero(),               # no update, no decay, no Adam moments
      }, labels))

Frozen by default (OptimizerSection.frozen): token embeddings (and an untied LM head), every
MLP, the decoder RMSNorms (input_layernorm, post_attention_layernorm) and the final norm:
the MLPs and the residual stream they read are the teacher's, as in Jet-Nemotron's PostNAS
stage; the mixers (new JetBlocks and the kept attention layers) are trained. The JetBlock's
own o_norm is part of the mixer and trains. `unfreeze_all` trains everything.

Weight decay applies to matrices only (ndim >= 2), never to biases, norms, A_log, dt_bias.
The global norm is clipped over the trainable parameters' gradients only.
"""

from __future__ import annotations

import re
from typing import Mapping

import jax
import optax

from jet_jax_train.config import OptimizerSection

TRAINABLE, FROZEN = "trainable", "frozen"


def param_labels(names, cfg: OptimizerSection) -> dict[str, str]:
    """{flat param name: "trainable" | "frozen"}."""
    patterns = [re.compile(p) for p in cfg.frozen]
    labels = {}
    for name in names:
        frozen = not cfg.unfreeze_all and any(p.search(name) for p in patterns)
        labels[name] = FROZEN if frozen else TRAINABLE
    if all(v == FROZEN for v in labels.values()):
        raise ValueError("every parameter is frozen by optimizer.frozen; nothing would train")
    return labels


def lr_schedule(cfg: OptimizerSection, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> lr over warmup_steps, cosine decay to lr * end_lr_ratio at total_steps."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.lr * cfg.end_lr_ratio)


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimizerSection, labels: Mapping[str, str], total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer over the full flat param dict, lr schedule indexed by optimizer step)."""
    schedule = lr_schedule(cfg, total_steps)
    trainable = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                    mask=_decay_mask),
    )
    labels = dict(labels)
    tx = optax.multi_transform({TRAINABLE: trainable, FROZEN: optax.set_to_zero()}, labels)
    if cfg.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
    return tx, schedule

