"""RMSNorm (computed in float32, as Qwen2) and the JetBlock's per-head gated RMSNorm."""

import jax
import jax.numpy as jnp
from flax import nnx

from jet_jax.sharding import logical_param


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
    """y = x / rms(x) * weight over the last axis. x: [..., dim]."""

    def __init__(self, dim: int, *, eps: float = 1e-6, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        del rngs
        self.eps = eps
        self.dtype = dtype
        self.weight = logical_param(jnp.ones((dim,), param_dtype), "norm")

    def __call__(self, x: jax.Array) -> jax.Array:
        # Qwen2 casts back to the input dtype before the weight multiply.
        y = rms_normalize(x, self.eps).astype(x.dtype)
        return (self.weight[...].astype(self.dtype) * y.astype(self.dtype))


class GatedRMSNorm(nnx.Module):
    """Per-head RMSNorm times silu(gate); the weight [dv] is shared by all heads.

    o: [B, T, H, dv], gate: [B, T, H, dv] -> [B, T, H, dv] (float32 inside).
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        self.eps = eps
        self.dtype = dtype
        self.weight = logical_param(jnp.ones((dim,), param_dtype), "norm")

    def __call__(self, o: jax.Array, gate: jax.Array) -> jax.Array:
        y = rms_normalize(o, self.eps) * self.weight[...].astype(jnp.float32)
        return (y * jax.nn.silu(gate.astype(jnp.float32))).astype(self.dtype)
