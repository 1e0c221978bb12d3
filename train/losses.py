"""Distillation loss: KL(teacher || student) at temperature tau (x tau^2), optional
cross-entropy on the targets, optional hidden-state MSE (feature distillation).

All terms are means over the tokens with loss_mask > 0 (weighted by the mask).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax


def _masked_mean(per_token: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(per_token * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _kl_per_token(student_logits, teacher_logits, temperature):
    log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    return optax.losses.kl_divergence_with_log_targets(log_s, log_t)


def _ce_per_token(logits, targets):
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def kl_to_teacher(student_logits: jax.Array, teacher_logits: jax.Array, mask: jax.Array,
                  temperature: float = 1.0) -> jax.Array:
    """tau^2 * mean_tokens KL(softmax(t/tau) || softmax(s/tau)). Logits [B, T, V], mask [B, T]."""
    return temperature ** 2 * _masked_mean(_kl_per_token(student_logits, teacher_logits, temperature), mask)


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    return _masked_mean(_ce_per_token(logits, targets), mask)


def chunked_kl_and_ce(student_hidden: jax.Array, teacher_hidden: jax.Array, student_head: Callable,
                      teacher_head: Callable, targets: jax.Array, mask: jax.Array, *,
                      temperature: float = 1.0, chunk: int = 512) -> tuple[jax.Array, jax.Array]:
    """(`kl_to_teacher`, `cross_entropy`) from final hidden states without [B, T, V] logits.

    student_hidden / teacher_hidden: [B, T, D] (the normed states the heads read);
    *_head: [B, c, D] -> logits [B, c, V]; targets, mask: [B, T]. Logits exist for `chunk`
    positions at a time: a lax.scan over sequence chunks whose body is rematerialised in the
    backward pass. Values and gradients equal the unchunked losses (up to summation order).
    """
    b, t = mask.shape
    chunk = max(1, min(int(chunk), t))
    pad = -t % chunk

    def blocks(x):  # [B, T, ...] -> [n, B, chunk, ...], padded positions masked out
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape((b, -1, chunk) + x.shape[2:]), 1, 0)

    @jax.checkpoint
    def one(sh, th, tg, m):
        s_logits = student_head(sh)
        t_logits = jax.lax.stop_gradient(teacher_head(th))
        return (jnp.sum(_kl_per_token(s_logits, t_logits, temperature) * m),
                jnp.sum(_ce_per_token(s_logits, tg) * m))

    def body(acc, xs):
        kl, ce = one(*xs)
        return (acc[0] + kl, acc[1] + ce), None

    zero = jnp.zeros((), jnp.float32)
    (kl_sum, ce_sum), _ = jax.lax.scan(
        body, (zero, zero), (blocks(student_hidden), blocks(jax.lax.stop_gradient(teacher_hidden)),
                             blocks(targets), blocks(mask.astype(jnp.float32))))
    denom = jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)
    return temperature ** 2 * kl_sum / denom, ce_sum / denom


def hidden_mse(student_hidden: Sequence[jax.Array], teacher_hidden: Sequence[jax.Array],
               mask: jax.Array, layers: Sequence[int] | None = None) -> jax.Array:
    """Mean over `layers` (indices into h_0..h_L; None = 1..L) of the masked per-token
    mean squared difference of the hidden states."""
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"student has {len(student_hidden)} hidden states, teacher "
                         f"{len(teacher_hidden)}")
    n = len(student_hidden)
    layers = tuple(range(1, n)) if layers is None else tuple(layers)
    if not layers:
        raise ValueError("hidden_mse: no layers selected")
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"hidden_mse: layer {i} out of range for {n} hidden states (h_0..h_{n - 1})")
    terms = []
    for i in layers:
        diff = student_hidden[i].astype(jnp.float32) - teacher_hidden[i].astype(jnp.float32)
        terms.append(_masked_mean(jnp.mean(diff * diff, axis=-1), mask))
    return sum(terms) / len(terms)


def distill_loss(student_out, teacher_out, batch, *, temperature: float = 1.0,
                 kl_weight: float = 1.0, ce_weight: float = 0.0, mse_weight: float = 0.0,
                 mse_layers: Sequence[int] | None = None, heads: tuple[Callable, Callable] | None = None,
                 logits_chunk: int = 512):
    """student_out / teacher_out: logits, or (logits, hidden_states) when mse_weight > 0.

    With `heads` = (student_head, teacher_head), the "logits" given are instead the final
    normed hidden states [B, T, D] and KL/CE go through `chunked_kl_and_ce` (`logits_chunk`
    positions at a time), so [B, T, V] logits never exist whole.
    The teacher outputs are wrapped in stop_gradient here, so no gradient can reach a
    teacher even if the caller differentiates through it. Returns (loss, metrics dict).
    """
    teacher_out = jax.lax.stop_gradient(teacher_out)
    if mse_weight > 0:
        (s_logits, s_hidden), (t_logits, t_hidden) = student_out, teacher_out
    else:
        s_logits, t_logits = student_out, teacher_out
    mask = batch["loss_mask"].astype(jnp.float32)
    if heads is not None:
        kl, ce = chunked_kl_and_ce(s_logits, t_logits, heads[0], heads[1], batch["targets"], mask,
                                   temperature=temperature, chunk=logits_chunk)
    else:
        kl = kl_to_teacher(s_logits, t_logits, mask, temperature)
        ce = cross_entropy(s_logits, batch["targets"], mask)
    loss = kl_weight * kl + ce_weight * ce
    metrics = {"kl": kl, "ce": ce}
    if mse_weight > 0:
        mse = hidden_mse(s_hidden, t_hidden, mask, mse_layers)
        loss = loss + mse_weight * mse
        metrics["mse"] = mse
    else:
        metrics["mse"] = jnp.zeros((), jnp.float32)
    metrics["loss"] = loss
    return loss, metrics
