"""Measured decode throughput and cache size of a model on the current device.

`measure_decode_throughput(model, batch_size, context, steps)`: feed `context` random tokens
into a fresh cache (with the same jitted single-token step, which compiles on the first call),
then time `steps` further decode steps, each timed with `clock()` (module-level, `time.perf_counter`, so
tests can check the numbers come from timing). Returns tokens / second = batch / fastest step
time (like `timeit`, the minimum estimates the device's speed: other processes on a shared
machine only ever add time); the median is reported too.

`cache_bytes(model, batch_size, context)`: bytes of the decode cache (KV buffers of attention
layers at `context` tokens, recurrent/conv state of linear layers), from the actual cache
arrays' shapes, so every block is measured the same way.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jet_jax.layers.attention import Attention

clock = time.perf_counter


def init_layer_cache(mixer, batch_size: int, max_length: int, dtype=jnp.float32):
    """One layer's decode cache; zoo blocks take only the batch size."""
    if isinstance(mixer, Attention):
        return mixer.init_cache(batch_size, max_length, dtype)
    try:
        return mixer.init_cache(batch_size, max_length, dtype)
    except TypeError:
        return mixer.init_cache(batch_size)


def init_cache(model, batch_size: int, max_length: int, dtype=jnp.float32) -> list:
    return [init_layer_cache(layer.self_attn, batch_size, max_length, dtype)
            for layer in model.model.layers]


def cache_bytes(model, batch_size: int, context: int, dtype=jnp.bfloat16) -> int:
    """Decode-cache bytes at `context` tokens (KV in `dtype`; recurrent states as allocated)."""
    shapes = jax.eval_shape(lambda: init_cache(model, batch_size, context, dtype))
    return int(sum(math.prod(s.shape) * jnp.dtype(s.dtype).itemsize
                   for s in jax.tree.leaves(shapes)))


def linear_state_bytes(mixer, batch_size: int = 1) -> int:
    """Bytes of one linear-attention layer's recurrent + conv state (context-independent)."""
    shapes = jax.eval_shape(lambda: init_layer_cache(mixer, batch_size, 1))
    return int(sum(math.prod(s.shape) * jnp.dtype(s.dtype).itemsize
                   for s in jax.tree.leaves(shapes)))


def measure_decode_throughput(model, *, batch_size: int = 1, context: int = 256,
                              steps: int = 32, seed: int = 0) -> dict:
    """Decode tokens/s of `model` (a JetNemotronForCausalLM) after a `context`-token prefill.

    Returns {"decode_tokens_per_s", "decode_ms_per_step", "seconds", "steps", "batch_size",
    "context"}; the timed region is `steps` decode steps, each blocked until ready.
    """
    from flax import nnx

    graphdef, state = nnx.split(model)
    vocab = model.config.vocab_size

    @jax.jit
    def decode(state, tok, pos, cache):
        m = nnx.merge(graphdef, state)
        logits, cache = m(tok[:, None], positions=jnp.broadcast_to(pos, (tok.shape[0], 1)),
                          cache=cache)
        return jnp.argmax(logits[:, -1], -1).astype(jnp.int32), cache

    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.integers(0, min(vocab, 256), (batch_size, context)), jnp.int32)
    cache = init_cache(model, batch_size, context + steps + 1)
    # Fill the cache token by token with the same compiled step (one compilation per model;
    # the first call compiles and is not timed).
    for i in range(context):
        tok, cache = decode(state, ids[:, i], jnp.int32(i), cache)
    tok, cache = decode(state, tok, jnp.int32(context), cache)
    jax.block_until_ready(tok)
    per_step = []
    for i in range(steps):
        t0 = clock()
        tok, cache = decode(state, tok, jnp.int32(context + 1 + i), cache)
        jax.block_until_ready(tok)
        per_step.append(clock() - t0)
    best = float(np.min(per_step))
    if not best > 0:
        raise RuntimeError(f"decode timing gave {best} s for the fastest step")
    return {"decode_tokens_per_s": batch_size / best, "decode_ms_per_step": 1e3 * best,
            "median_ms_per_step": 1e3 * float(np.median(per_step)),
            "seconds": float(np.sum(per_step)), "step_seconds": per_step, "steps": steps, "batch_size": batch_size,
            "context": context}
