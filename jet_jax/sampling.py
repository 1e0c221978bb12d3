"""Next-token sampling: greedy, temperature, top-k and top-p (nucleus), reproducible by seed.

All functions are pure and jittable; `SamplingConfig` is hashable so it can be a static
argument of a jitted decode loop.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """temperature <= 0 means greedy (argmax); top_k <= 0 and top_p >= 1 disable those filters.

    Filters are applied in the order of HF transformers: temperature, then top-k, then top-p.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1

    @classmethod
    def greedy_config(cls) -> "SamplingConfig":
        return cls()


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits per row (ties at the threshold are kept), the rest -> -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Keep the smallest set of most probable tokens whose probability mass reaches p.

    The most probable token is always kept. logits: [..., V] -> [..., V] with -inf outside.
    """
    if p >= 1.0:
        return logits
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more probable tokens
    keep_sorted = mass_before < p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
    return jnp.where(keep, logits, NEG_INF)


def filtered_logits(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Temperature-scaled, top-k and top-p filtered logits (float32) for a sampling config."""
    logits = logits.astype(jnp.float32)
    if cfg.temperature > 0:
        logits = logits / cfg.temperature
    logits = top_k_filter(logits, cfg.top_k)
    return top_p_filter(logits, cfg.top_p)


def sample(logits: jax.Array, key: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """logits: [B, V] -> tokens [B] int32. Greedy ignores `key`."""
    if cfg.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filtered_logits(logits, cfg), axis=-1).astype(jnp.int32)


def step_key(seed_key: jax.Array, step) -> jax.Array:
    """The sampling key of decode step `step` (independent of how steps are batched/jitted)."""
    return jax.random.fold_in(seed_key, step)
