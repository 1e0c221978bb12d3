"""Grouped-query attention as in Qwen2 (q/k/v bias, RoPE), full or sliding-window.

Segment-aware (packed documents never attend across boundaries). With a cache it continues
a stream: `attn` layers keep a preallocated KV buffer, `swa` layers a ring buffer of
`window` slots. Each slot remembers the absolute stream index of its token (-1 = empty or
padding), so causality, the window and padding are one mask. The score/softmax math is
`jet_jax.ops.attention.dot_product_attention` (`implementation=` picks the backend).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jet_jax.config import ModelConfig
from jet_jax.layers.fused_linear import project_inputs
from jet_jax.layers.norms import RMSNorm
from jet_jax.layers.rope import apply_rope
from jet_jax.ops.attention import dot_product_attention
from jet_jax.sharding import partitioned


class Attention(nnx.Module):
    """x: [B, T, D] -> [B, T, D]. window=None: full causal; else sliding window."""

    INPUT_PROJECTIONS = ("q_proj", "k_proj", "v_proj")  # see jet_jax.layers.fused_linear

    def __init__(self, cfg: ModelConfig, *, window: int | None, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32, implementation: str = "auto"):
        d, h, kv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, hd
        self.window = window
        self.implementation = implementation  # jet_jax.ops.attention implementations
        self.rope_theta = cfg.rope_theta
        self.rope_scaling = cfg.rope_scaling  # (key, value) pairs: hashable, static
        init = nnx.initializers.normal(cfg.initializer_range)
        zeros = nnx.initializers.zeros_init()
        common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        bias = cfg.qkv_bias  # qwen2: q/k/v biases; llama, qwen3: none
        self.q_proj = nnx.Linear(d, h * hd, use_bias=bias, kernel_init=partitioned(init, "embed", "heads"),
                                 bias_init=partitioned(zeros, "heads"), **common)
        self.k_proj = nnx.Linear(d, kv * hd, use_bias=bias, kernel_init=partitioned(init, "embed", "kv_heads"),
                                 bias_init=partitioned(zeros, "kv_heads"), **common)
        self.v_proj = nnx.Linear(d, kv * hd, use_bias=bias, kernel_init=partitioned(init, "embed", "kv_heads"),
                                 bias_init=partitioned(zeros, "kv_heads"), **common)
        if cfg.qk_norm:  # qwen3: per-head RMSNorm over head_dim on q and k, before RoPE
            norm = dict(eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
            self.q_norm, self.k_norm = RMSNorm(hd, **norm), RMSNorm(hd, **norm)
        self.o_proj = nnx.Linear(h * hd, d, use_bias=False, kernel_init=partitioned(init, "heads", "embed"),
                                 **common)

    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> dict:
        slots = max_length if self.window is None else min(self.window, max_length)
        shape = (batch_size, self.num_kv_heads, slots, self.head_dim)  # heads before slots
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                "slot_index": jnp.full((batch_size, slots), -1, jnp.int32),
                "length": jnp.zeros((), jnp.int32)}

    def cache_bytes(self, batch_size: int, context: int, dtype_bytes: int = 2) -> int:
        slots = context if self.window is None else min(self.window, context)
        return 2 * batch_size * slots * self.num_kv_heads * self.head_dim * dtype_bytes

    def __call__(self, x: jax.Array, *, positions: jax.Array, segment_ids: jax.Array | None = None,
                 cache: dict | None = None):
        """positions: [B, T] RoPE positions; segment_ids: [B, T] (0 = padding when caching).

        Returns (y [B, T, D], new_cache or None).
        """
        b, t, _ = x.shape
        q, k, v = project_inputs(self, x)
        q = q.reshape(b, t, self.num_heads, self.head_dim)
        k = k.reshape(b, t, self.num_kv_heads, self.head_dim)
        v = v.reshape(b, t, self.num_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, positions, self.rope_theta, self.rope_scaling)
        k = apply_rope(k, positions, self.rope_theta, self.rope_scaling)
        if cache is None:
            out = dot_product_attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                                        window=self.window, implementation=self.implementation)
            new_cache = None
        else:
            start = cache["length"]
            new_index = start + jnp.arange(t, dtype=jnp.int32)[None, :]
            new_index = jnp.broadcast_to(new_index, (b, t))
            if segment_ids is not None:
                new_index = jnp.where(segment_ids != 0, new_index, -1)
            new_cache = self._write_cache(cache, k, v, new_index, start)
            if self.window is None or t == 1:
                # Writing first never evicts a key a query of this call still sees, and it
                # avoids copying the whole buffer every decode step.
                keys, values, key_index = new_cache["k"], new_cache["v"], new_cache["slot_index"]
            else:  # a multi-token ring-buffer write may evict keys earlier queries need
                keys = jnp.concatenate([cache["k"], jnp.swapaxes(k, 1, 2).astype(cache["k"].dtype)], axis=2)
                values = jnp.concatenate([cache["v"], jnp.swapaxes(v, 1, 2).astype(cache["v"].dtype)], axis=2)
                key_index = jnp.concatenate([cache["slot_index"], new_index], axis=1)
            # Cache buffers are [B, KV, slots, D]: the score and value matmuls read them in
            # place (no per-step transposed copy of a layer's K and V).
            q_index = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
            impl = "xla" if self.implementation == "auto" and t == 1 else self.implementation
            out = dot_product_attention(q, jnp.swapaxes(keys, 1, 2), jnp.swapaxes(values, 1, 2),
                                        q_positions=q_index, kv_positions=key_index,
                                        window=self.window, implementation=impl)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), new_cache

    def _write_cache(self, cache, k, v, new_index, start):
        slots = cache["k"].shape[2]
        t = k.shape[1]
        if self.window is None:
            upd = lambda buf, new, axis: jax.lax.dynamic_update_slice_in_dim(
                buf, new.astype(buf.dtype), start, axis)
            return {"k": upd(cache["k"], jnp.swapaxes(k, 1, 2), 2),
                    "v": upd(cache["v"], jnp.swapaxes(v, 1, 2), 2),
                    "slot_index": upd(cache["slot_index"], new_index, 1), "length": start + t}
        # Ring buffer: only the newest `slots` tokens survive; their slots are distinct.
        keep = min(t, slots)
        pos = (start + t - keep + jnp.arange(keep)) % slots
        upd = lambda buf, new: buf.at[:, pos].set(new[:, t - keep:].astype(buf.dtype))
        kv_upd = lambda buf, new: buf.at[:, :, pos].set(jnp.swapaxes(new[:, t - keep:], 1, 2).astype(buf.dtype))
        return {"k": kv_upd(cache["k"], k), "v": kv_upd(cache["v"], v),
                "slot_index": upd(cache["slot_index"], new_index), "length": start + t}
