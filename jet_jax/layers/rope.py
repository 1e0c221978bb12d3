"""Rotary position embedding, HF Llama/Qwen layout (rotate-half, not interleaved).

The inverse frequencies follow transformers' `modeling_rope_utils` for the RoPE types a
config may declare (`ModelConfig.rope_scaling`):

    default  inv_freq[i] = theta ** (-2i / D)
    linear   inv_freq / factor                       (position interpolation)
    llama3   per-frequency: wavelengths longer than original_max_position_embeddings /
             low_freq_factor are divided by `factor`, shorter than .. / high_freq_factor kept,
             the band between interpolated smoothly (Llama 3.1)

None of these rescales cos/sin (attention_factor = 1).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def rope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None) -> np.ndarray:
    """[head_dim / 2] float32 inverse frequencies (computed in float32 like transformers)."""
    scaling = dict(scaling or {})
    kind = scaling.get("rope_type", "default")
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
    if kind == "default":
        return inv_freq
    factor = np.float32(scaling["factor"])
    if kind == "linear":
        return (inv_freq / factor).astype(np.float32)
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = np.float32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq).astype(np.float32)
        smooth = ((old_len / wavelen - low) / (high - low)).astype(np.float32)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"unsupported rope type {kind!r}")


def apply_rope(x: jax.Array, positions: jax.Array, theta: float,
               scaling: Mapping[str, Any] | None = None) -> jax.Array:
    """x: [B, T, H, D], positions: [B, T] int -> [B, T, H, D] (x's dtype; angles in float32)."""
    d = x.shape[-1]
    inv_freq = jnp.asarray(rope_inv_freq(d, theta, scaling))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Position of each token inside its document. segment_ids: [B, T] -> [B, T] int32."""
    t = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)[None, :]
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], dtype=bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
        axis=1)
    start_index = jax.lax.cummax(jnp.where(starts, t, 0), axis=1)
    return t - start_index
