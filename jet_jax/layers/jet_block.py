"""JetBlock: gated-delta-rule linear attention with a dynamic causal convolution on V.

Submodule names mirror the official checkpoint keys (`dynamic_conv1d.kernel_generator.w1`,
`o_norm`, ...).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jet_jax.config import ModelConfig
from jet_jax.layers.fused_linear import project_inputs
from jet_jax.layers.norms import GatedRMSNorm
from jet_jax.ops.dynamic_conv import dynamic_causal_conv, dynamic_causal_conv_step
from jet_jax.ops.gated_delta_rule import gated_delta_rule, gated_delta_rule_step
from jet_jax.sharding import logical_param, partitioned


def _mirrored_units(init, axis: int, sign: float):
    """Initializer for a generator weight whose hidden units (along `axis`) come in tied groups.

    Units j and j + n//2 form a pair (with an odd count, the last unit joins pair 0): with
    sign=+1 (w1) every unit of a group gets the same weights; with sign=-1 (w2) a pair gets
    (a, -a) and the odd group (a, -a/2, -a/2), so each group's contribution to w2 silu(w1 x)
    cancels exactly and the sum is 0 (up to float rounding) while no weight is 0.
    """
    def f(key, shape, dtype=jnp.float32):
        n = shape[axis]
        if n < 2:  # nothing to pair with: this unit starts at 0 (w2) / random (w1)
            return init(key, shape, dtype) if sign > 0 else jnp.zeros(shape, dtype)
        half = list(shape)
        half[axis] = n // 2
        a = init(key, tuple(half), dtype)
        twin = a if sign > 0 else -a
        parts = [a, twin]
        if n % 2:
            first = jax.lax.slice_in_dim(a, 0, 1, axis=axis)
            if sign > 0:
                parts.append(first)
            else:  # group (a0, -a0/2, -a0/2): halve the twin of unit 0, the spare takes the rest
                parts[1] = jnp.concatenate(
                    [-first / 2, jax.lax.slice_in_dim(twin, 1, n // 2, axis=axis)], axis=axis)
                parts.append(-first / 2)
        return jnp.concatenate(parts, axis=axis).astype(dtype)
    return f


class KernelGenerator(nnx.Module):
    """x: [B, T, D] -> per-token kernels [B, T, V * W] = w2(silu(w1(x))) + b2.

    Init: b2 ~ N(0, init_std), so at init the convolution is a static depthwise conv with
    weights b2, as in the reference (which zeroes w1 and w2). Zero w1 AND w2 is a saddle:
    w1's gradient is proportional to w2 and w2's to silu(w1 x), both 0, so the conv could
    never become dynamic. Here w1 ~ N(0, 1/D) and w2 ~ N(0, init_std) with the hidden units
    in mirrored pairs (`_mirrored_units`): w2 silu(w1 x) is exactly 0 at init for every x
    (same block output as the reference init) while every generator weight gets a nonzero
    gradient; the pairs' gradients are opposite, so the symmetry breaks on the first step.
    """

    def __init__(self, d: int, hidden: int, out: int, *, init_std: float, rngs: nnx.Rngs,
                 dtype, param_dtype):
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        w1_init = _mirrored_units(nnx.initializers.normal(1.0 / math.sqrt(d)), axis=1, sign=1.0)
        w2_init = _mirrored_units(nnx.initializers.normal(init_std), axis=0, sign=-1.0)
        self.w1 = nnx.Linear(d, hidden, use_bias=False,
                             kernel_init=partitioned(w1_init, "embed", "generator"), **common)
        self.w2 = nnx.Linear(hidden, out, use_bias=True,
                             kernel_init=partitioned(w2_init, "generator", "conv_taps"),
                             bias_init=partitioned(nnx.initializers.normal(init_std), "conv_taps"),
                             **common)

    def __call__(self, x):
        return self.from_hidden(self.w1(x))

    def from_hidden(self, hidden):
        """hidden = w1(x): [B, T, hidden] -> kernels [B, T, V * W]."""
        return self.w2(jax.nn.silu(hidden))


class DynamicConv1d(nnx.Module):
    def __init__(self, d: int, channels: int, kernel_size: int, reduction: int, *,
                 init_std: float, rngs: nnx.Rngs, dtype, param_dtype):
        self.channels, self.kernel_size = channels, kernel_size
        self.kernel_generator = KernelGenerator(d, channels // reduction, channels * kernel_size,
                                                init_std=init_std, rngs=rngs, dtype=dtype,
                                                param_dtype=param_dtype)

    def kernels(self, x: jax.Array) -> jax.Array:
        """x: [B, T, D] -> [B, T, C, W]; flat generator index = channel * W + tap."""
        return self.kernels_from_hidden(self.kernel_generator.w1(x))

    def kernels_from_hidden(self, hidden: jax.Array) -> jax.Array:
        """hidden = kernel_generator.w1(x): [B, T, hidden] -> [B, T, C, W]."""
        b, t, _ = hidden.shape
        return self.kernel_generator.from_hidden(hidden).reshape(b, t, self.channels, self.kernel_size)


def _init_a_log(key, shape, dtype=jnp.float32):
    return jnp.log(jax.random.uniform(key, shape, jnp.float32, 0.0, 16.0)).astype(dtype)


def _init_dt_bias(key, shape, dtype=jnp.float32, dt_min=1e-3, dt_max=1e-1, floor=1e-4):
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)), floor)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)  # inverse softplus


class JetBlock(nnx.Module):
    """x: [B, T, D] -> [B, T, D]; cache = {"conv": [B, V, W], "state": [B, H, dk, dv] f32}."""

    # the projections of the block's input (one product once fused: jet_jax.layers.fused_linear)
    INPUT_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "b_proj", "a_proj", "g_proj",
                         "dynamic_conv1d.kernel_generator.w1")

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, gdr_implementation: str = "auto",
                 conv_implementation: str = "auto"):
        j = cfg.jet
        d = cfg.hidden_size
        self.num_heads, self.head_k_dim, self.head_v_dim = j.num_heads, j.head_dim, j.head_v_dim
        self.key_dim, self.value_dim, self.conv_size = j.key_dim, j.value_dim, j.conv_size
        self.dtype = dtype
        self.gdr_implementation = gdr_implementation
        self.conv_implementation = conv_implementation
        init = nnx.initializers.normal(cfg.initializer_range)
        common = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = nnx.Linear(d, j.key_dim, kernel_init=partitioned(init, "embed", "heads"), **common)
        self.k_proj = nnx.Linear(d, j.key_dim, kernel_init=partitioned(init, "embed", "heads"), **common)
        self.v_proj = nnx.Linear(d, j.value_dim, kernel_init=partitioned(init, "embed", "heads"), **common)
        self.b_proj = nnx.Linear(d, j.num_heads, kernel_init=partitioned(init, "embed", "head_scalars"),
                                 **common)
        self.a_proj = nnx.Linear(d, j.num_heads, kernel_init=partitioned(init, "embed", "head_scalars"),
                                 **common)
        self.A_log = logical_param(_init_a_log(rngs.params(), (j.num_heads,), param_dtype), "head_scalars")
        self.dt_bias = logical_param(_init_dt_bias(rngs.params(), (j.num_heads,), param_dtype),
                                     "head_scalars")
        self.dynamic_conv1d = DynamicConv1d(d, j.value_dim, j.conv_size, j.dconv_generator_reduction,
                                            init_std=cfg.initializer_range, rngs=rngs, dtype=dtype,
                                            param_dtype=param_dtype)
        self.g_proj = nnx.Linear(d, j.value_dim, kernel_init=partitioned(init, "embed", "heads"), **common)
        self.o_norm = GatedRMSNorm(j.head_v_dim, eps=j.norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.o_proj = nnx.Linear(j.value_dim, d, kernel_init=partitioned(init, "heads", "embed"), **common)

    def init_cache(self, batch_size: int, max_length: int | None = None, dtype=jnp.float32) -> dict:
        del max_length  # O(1) in context length
        return {"conv": jnp.zeros((batch_size, self.value_dim, self.conv_size), dtype),
                "state": jnp.zeros((batch_size, self.num_heads, self.head_k_dim, self.head_v_dim),
                                   jnp.float32)}

    def cache_bytes(self, batch_size: int, context: int = 0, dtype_bytes: int = 2) -> int:
        del context
        return batch_size * (self.value_dim * self.conv_size * dtype_bytes
                             + self.num_heads * self.head_k_dim * self.head_v_dim * 4)

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None,
                 cache: dict | None = None, positions=None):
        """x: [B, T, D]; segment_ids: [B, T]. Returns (y [B, T, D], new_cache or None)."""
        del positions  # position-free mixer
        b, t, _ = x.shape
        h, dk, dv = self.num_heads, self.head_k_dim, self.head_v_dim
        q, k, v0, b_x, a_x, g_x, hidden = project_inputs(self, x)
        q = jax.nn.silu(q).reshape(b, t, h, dk)
        k = jax.nn.silu(k).reshape(b, t, h, dk)
        kernels = self.dynamic_conv1d.kernels_from_hidden(hidden)
        beta = jax.nn.sigmoid(b_x.astype(jnp.float32))
        g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(
            a_x.astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32))

        new_cache = None
        if cache is not None and t == 1:
            v_t, conv = dynamic_causal_conv_step(v0[:, 0], kernels[:, 0], cache["conv"], activation="silu")
            o_t, state = gated_delta_rule_step(q[:, 0], k[:, 0], v_t.reshape(b, h, dv), g[:, 0],
                                               beta[:, 0], cache["state"], use_qk_l2norm=True)
            o = o_t[:, None]
            new_cache = {"conv": conv.astype(cache["conv"].dtype), "state": state}
        else:
            conv_state = None if cache is None else cache["conv"]
            v, conv = dynamic_causal_conv(v0, kernels, segment_ids=segment_ids, conv_state=conv_state,
                                          output_final_state=True, activation="silu",
                                          implementation=self.conv_implementation)
            o, state = gated_delta_rule(
                q, k, v.reshape(b, t, h, dv), g, beta,
                initial_state=None if cache is None else cache["state"],
                output_final_state=cache is not None, segment_ids=segment_ids,
                use_qk_l2norm=True, implementation=self.gdr_implementation)
            if cache is not None:
                new_cache = {"conv": conv.astype(cache["conv"].dtype), "state": state}
        gate = g_x.reshape(b, t, h, dv)
        o = self.o_norm(o, gate).reshape(b, t, h * dv)
        return self.o_proj(o.astype(self.dtype)), new_cache
