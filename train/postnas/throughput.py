"""Measured decode throughput and cache size of a model on the current device, with the
library's pieces: `model.init_cache`, the jitted `jet_jax.generation.decode_step` (the step
`generate` and `jet-jax bench` decode with) and `model.cache_bytes` / the mixers' own
`cache_bytes` (so every block is counted the same way).

`measure_decode_throughput(model, batch_size, context, steps)`: feed `context` random tokens
into a fresh cache (the first call compiles and is not timed), then time `steps` further
decode steps, each timed with `clock()` (module-level, `time.perf_counter`, so tests can check
the numbers come from timing). Returns tokens / second = batch / fastest step time (like
`timeit`, the minimum estimates the device's speed: other processes on a shared machine only
ever add time); the median is reported too.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

clock = time.perf_counter


def cache_bytes(model, batch_size: int, context: int, dtype=jnp.bfloat16) -> int:
    """Decode-cache bytes at `context` tokens (`model.cache_bytes`: KV in `dtype`, recurrent
    states in their own dtype)."""
    return int(model.cache_bytes(batch_size, context, jnp.dtype(dtype).itemsize))


def linear_state_bytes(mixer, batch_size: int = 1) -> int:
    """Bytes of one linear-attention layer's recurrent + conv state (context-independent)."""
    return int(mixer.cache_bytes(batch_size, 1, jnp.dtype(jnp.float32).itemsize))


def measure_decode_throughput(model, *, batch_size: int = 1, context: int = 256,
                              steps: int = 32, seed: int = 0) -> dict:
    """Decode tokens/s of `model` (a JetNemotronForCausalLM) after a `context`-token prefill.

    Returns {"decode_tokens_per_s", "decode_ms_per_step", "median_ms_per_step", "seconds",
    "steps", "batch_size", "context"}; the timed region is `steps` decode steps, each blocked
    until ready.
    """
    from flax import nnx

    from jet_jax.generation import decode_step

    graphdef, state = nnx.split(model)
    # Timed on one device, so every model compared (teacher, candidates, finals) is timed
    # alike whatever mesh trained it (a no-op for parameters already there).
    state = jax.device_put(state, jax.devices()[0])

    def decode(tok, pos, cache):
        logits, cache = decode_step(graphdef, state, tok, jnp.full(tok.shape, pos, jnp.int32), cache)
        return jnp.argmax(logits, -1).astype(jnp.int32), cache

    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.integers(0, min(model.config.vocab_size, 256), (batch_size, context)),
                      jnp.int32)
    cache = model.init_cache(batch_size, context + steps + 1)
    # Fill the cache token by token with the same compiled step (one compilation per model;
    # the first call compiles and is not timed).
    for i in range(context):
        tok, cache = decode(ids[:, i], i, cache)
    tok, cache = decode(tok, context, cache)
    jax.block_until_ready(tok)
    per_step = []
    for i in range(steps):
        t0 = clock()
        tok, cache = decode(tok, context + 1 + i, cache)
        jax.block_until_ready(tok)
        per_step.append(clock() - t0)
    best = float(np.min(per_step))
    if not best > 0:
        raise RuntimeError(f"decode timing gave {best} s for the fastest step")
    return {"decode_tokens_per_s": batch_size / best, "decode_ms_per_step": 1e3 * best,
            "median_ms_per_step": 1e3 * float(np.median(per_step)),
            "seconds": float(np.sum(per_step)), "step_seconds": per_step, "steps": steps, "batch_size": batch_size,
            "context": context}
