"""Autoregressive generation: chunked prefill into the cache, then a jitted decode loop.

Batched prompts of different lengths are LEFT padded: padding has segment id 0 (never
attended, inert for linear-attention states) and real tokens segment id 1; each row's RoPE
positions start at 0 at its first real token. All rows advance through the cache in lock
step, so a decode step is one [B, 1] forward.

    tokens = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=16,
                      sampling=SamplingConfig(temperature=0.8, top_p=0.9), seed=0,
                      stop_tokens=(eos,))
    for step_tokens in generate_stream(model, prompts, max_new_tokens=16): ...

`attn` layers cost O(context) per decoded token (their KV cache grows); `swa` layers
O(window); `jet` (and other linear) layers O(1).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jet_jax.sampling import SamplingConfig, sample, step_key
from jet_jax.token_ids import check_prompts

ATTENTION_TYPES = ("attn", "swa")


# ---------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class PaddedBatch:
    """Left-padded prompts. ids/segment_ids/positions: [B, P] int32; lengths: [B]."""

    ids: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    lengths: np.ndarray

    @property
    def padded_length(self) -> int:
        return self.ids.shape[1]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 1,
             min_length: int = 0) -> PaddedBatch:
    """Left-pad `prompts` to a common length (rounded up to a multiple of `multiple`)."""
    if not prompts:
        raise ValueError("no prompts given")
    lengths = np.array([len(p) for p in prompts], np.int32)
    if (lengths == 0).any():
        raise ValueError(f"every prompt needs at least one token; empty rows: "
                         f"{np.flatnonzero(lengths == 0).tolist()}")
    p = max(int(lengths.max()), min_length)
    p = -(-p // multiple) * multiple
    b = len(prompts)
    ids = np.full((b, p), pad_id, np.int32)
    seg = np.zeros((b, p), np.int32)
    pos = np.zeros((b, p), np.int32)
    for i, prompt in enumerate(prompts):
        n = len(prompt)
        ids[i, p - n:] = np.asarray(prompt, np.int32)
        seg[i, p - n:] = 1
        pos[i, p - n:] = np.arange(n)
    return PaddedBatch(ids, seg, pos, lengths)


def default_pad_id(config) -> int:
    for v in (config.pad_token_id, config.eos_token_id):
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return 0


# ---------------------------------------------------------------------------------------
# Jitted building blocks (the model travels as graphdef (static) + state)
# ---------------------------------------------------------------------------------------

def forward_last(model, ids, segment_ids, positions, cache):
    """Run [B, T] tokens through the model with a cache; logits of the LAST position only.

    Same computation as `model(..., cache=cache)` but the LM head is applied to one position,
    so a long prefill never materialises [B, T, vocab] logits.
    """
    logits, new_cache = model(ids, segment_ids, positions, cache=cache, last_only=True)
    return logits[:, 0], new_cache


def _reset_unstarted(cache, entries, started):
    """Zero the linear-attention states of rows that have seen no real token yet.

    A chunk made only of left padding (segment 0) would otherwise leave a state that the
    next chunk (which starts the row's real segment) continues from. `entries`: the model's
    `cache_entries()`, (layer type, layers) per cache entry; an entry of several layers is
    stacked on a leading axis.
    """
    out = []
    for (t, layers), c in zip(entries, cache):
        if t in ATTENTION_TYPES:  # padding slots are marked -1 and never attended
            out.append(c)
            continue
        lead = 1 if len(layers) > 1 else 0  # batch axis after the stacked layer axis
        out.append(jax.tree.map(
            lambda x: jnp.where(started.reshape((1,) * lead + (-1,) + (1,) * (x.ndim - 1 - lead)),
                                x, jnp.zeros_like(x)) if x.ndim > lead else x, c))
    return out


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def prefill_step(graphdef, state, ids, segment_ids, positions, cache, started):
    """One jitted prefill chunk: ids/segment_ids/positions [B, C] -> (last logits [B, V], cache).

    `started` [B] marks rows whose prompt has begun (left padding before it resets their
    linear states)."""
    model = nnx.merge(graphdef, state)
    logits, cache = forward_last(model, ids, segment_ids, positions, cache)
    cache = _reset_unstarted(cache, model.cache_entries(), started)
    return logits, cache


def _choose(logits, i, done, seed_key, sampling, stop_tokens, pad_id):
    """Sample step i's tokens [B]; finished rows get `pad_id`. Returns (tokens, new done).

    stop_tokens: [S] int32 array (-1 entries never match)."""
    tok = sample(logits, step_key(seed_key, i), sampling)
    tok = jnp.where(done, pad_id, tok)
    return tok, done | jnp.isin(tok, stop_tokens)


def feed_tokens(model, tok, positions, cache):
    """Feed tokens [B] at RoPE positions [B]: (next logits [B, V], cache)."""
    seg = jnp.ones_like(tok)[:, None]
    return forward_last(model, tok[:, None], seg, positions[:, None], cache)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "pad_id", "max_new_tokens"),
                   donate_argnames=("cache",))
def _decode_loop(graphdef, state, logits, cache, positions, seed_key, stop_tokens, *, sampling,
                 pad_id, max_new_tokens):
    model = nnx.merge(graphdef, state)
    b = logits.shape[0]

    def cond(carry):
        i, _, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, logits, cache, out, done, pos = carry
        tok, done = _choose(logits, i, done, seed_key, sampling, stop_tokens, pad_id)
        out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1)
        # No forward after the last token (or once every row has stopped).
        more = (i + 1 < max_new_tokens) & ~jnp.all(done)
        logits, cache = jax.lax.cond(more, lambda: feed_tokens(model, tok, pos, cache),
                                     lambda: (logits, cache))
        return i + 1, logits, cache, out, done, pos + 1

    carry = (jnp.zeros((), jnp.int32), logits, cache,
             jnp.full((b, max_new_tokens), pad_id, jnp.int32), jnp.zeros((b,), bool), positions)
    _, _, cache, out, done, _ = jax.lax.while_loop(cond, body, carry)
    return out, done, cache


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "pad_id"),
                   donate_argnames=("cache",))
def _decode_one(graphdef, state, i, logits, cache, done, positions, seed_key, stop_tokens, *,
                sampling, pad_id):
    """One step of `_decode_loop` (the streaming path): the same tokens as the loop."""
    model = nnx.merge(graphdef, state)
    tok, done = _choose(logits, i, done, seed_key, sampling, stop_tokens, pad_id)
    logits, cache = feed_tokens(model, tok, positions, cache)
    return tok, done, logits, cache


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache",))
def decode_step(graphdef, state, tokens, positions, cache):
    """One jitted [B, 1] decode step (no sampling): (logits [B, V], new cache). For benchmarks."""
    return feed_tokens(nnx.merge(graphdef, state), tokens, positions, cache)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------

def prefill(model, batch: PaddedBatch, cache, *, chunk_size: int | None = None,
            graphdef=None, state=None):
    """Run the padded prompts through the model into `cache`, `chunk_size` tokens at a time.

    Returns (logits of the last prompt position [B, V] float32, cache). The padded length
    must be a multiple of `chunk_size` (use `left_pad(..., multiple=chunk_size)`).
    """
    if graphdef is None:
        graphdef, state = nnx.split(model)
    p = batch.padded_length
    c = p if not chunk_size else int(chunk_size)
    if p % c:
        raise ValueError(f"padded prompt length {p} is not a multiple of chunk_size {c}")
    seen = np.zeros((batch.ids.shape[0],), bool)
    logits = None
    for s in range(0, p, c):
        sl = slice(s, s + c)
        seen |= batch.segment_ids[:, sl].any(axis=1)
        logits, cache = prefill_step(graphdef, state, jnp.asarray(batch.ids[:, sl]),
                                       jnp.asarray(batch.segment_ids[:, sl]),
                                       jnp.asarray(batch.positions[:, sl]), cache,
                                       jnp.asarray(seen))
    return logits, cache


def _setup(model, prompts, max_new_tokens, pad_id, max_length, prefill_chunk_size, cache_dtype):
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    pad_id = default_pad_id(model.config) if pad_id is None else int(pad_id)
    batch = left_pad(prompts, pad_id, multiple=prefill_chunk_size or 1)
    need = batch.padded_length + max_new_tokens
    if max_length is None:
        max_length = need
    elif need > max_length:
        raise ValueError(f"padded prompt length {batch.padded_length} + max_new_tokens "
                         f"{max_new_tokens} = {need} exceeds max_length {max_length}")
    cache = model.init_cache(len(prompts), max_length, cache_dtype)
    return pad_id, batch, cache


def _stop_array(stop: tuple[int, ...]) -> jax.Array:
    """Stop tokens as an int32 array padded to a multiple of 4 with -1 (few recompiles)."""
    n = max(4, -(-len(stop) // 4) * 4)
    return jnp.asarray(list(stop) + [-1] * (n - len(stop)), jnp.int32)


def _trim(row: np.ndarray, stop_tokens, n: int) -> list[int]:
    toks = row[:n].tolist()
    for j, t in enumerate(toks):
        if t in stop_tokens:
            return toks[: j + 1]
    return toks


def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             sampling: SamplingConfig = SamplingConfig(), stop_tokens: Sequence[int] = (),
             seed: int = 0, max_length: int | None = None, pad_id: int | None = None,
             prefill_chunk_size: int | None = None, cache_dtype=jnp.float32) -> list[list[int]]:
    """Generate up to `max_new_tokens` tokens after each prompt.

    Returns the new tokens of each row (prompt excluded); a row that emits a stop token ends
    with it. `max_length` (cache slots) defaults to padded prompt length + max_new_tokens;
    `prefill_chunk_size` splits the prefill into chunks of that many tokens (the batch is
    left-padded to a multiple of it).
    """
    check_prompts(prompts, model.config.vocab_size)
    stop = tuple(int(t) for t in stop_tokens)
    pad_id, batch, cache = _setup(model, prompts, max_new_tokens, pad_id, max_length,
                                  prefill_chunk_size, cache_dtype)
    if max_new_tokens == 0:
        return [[] for _ in prompts]
    graphdef, state = nnx.split(model)
    logits, cache = prefill(model, batch, cache, chunk_size=prefill_chunk_size,
                            graphdef=graphdef, state=state)
    out, _, _ = _decode_loop(graphdef, state, logits, cache, jnp.asarray(batch.lengths),
                             jax.random.key(seed), _stop_array(stop), sampling=sampling,
                             pad_id=pad_id, max_new_tokens=max_new_tokens)
    out = np.asarray(out)
    return [_trim(out[i], stop, max_new_tokens) for i in range(len(prompts))]


def generate_stream(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    sampling: SamplingConfig = SamplingConfig(), stop_tokens: Sequence[int] = (),
                    seed: int = 0, max_length: int | None = None, pad_id: int | None = None,
                    prefill_chunk_size: int | None = None,
                    cache_dtype=jnp.float32) -> Iterator[list[int | None]]:
    """Like `generate`, but yields after every step a list with one entry per row: the new
    token, or None for a row that already finished. Produces the same tokens as `generate`
    for the same arguments."""
    check_prompts(prompts, model.config.vocab_size)
    stop = tuple(int(t) for t in stop_tokens)
    pad_id, batch, cache = _setup(model, prompts, max_new_tokens, pad_id, max_length,
                                  prefill_chunk_size, cache_dtype)
    if max_new_tokens == 0:
        return
    graphdef, state = nnx.split(model)
    logits, cache = prefill(model, batch, cache, chunk_size=prefill_chunk_size,
                            graphdef=graphdef, state=state)
    positions = jnp.asarray(batch.lengths)
    done = jnp.zeros((len(prompts),), bool)
    key = jax.random.key(seed)
    stop_arr = _stop_array(stop)
    for i in range(max_new_tokens):
        was_done = np.asarray(done)
        tok, done, logits, cache = _decode_one(
            graphdef, state, jnp.asarray(i, jnp.int32), logits, cache, done, positions, key,
            stop_arr, sampling=sampling, pad_id=pad_id)
        positions = positions + 1
        tok = np.asarray(tok)
        yield [None if was_done[r] else int(tok[r]) for r in range(len(prompts))]
        if bool(np.asarray(done).all()):
            return
