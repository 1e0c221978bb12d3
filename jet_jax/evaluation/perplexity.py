"""Perplexity and bits-per-byte of token streams, with a sliding window for long texts.

A document longer than `context_len` is cut into windows of `context_len` tokens starting
every `stride` tokens; each token is scored once, in the first window that reaches it, with
the preceding tokens of that window as context (the recipe of transformers' perplexity guide,
except that a window never starts at its first new token: with stride == context_len the
windows overlap by one token so that no token is left unscored).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from jet_jax.evaluation.scoring import Request, Scorer


def sliding_windows(n: int, context_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) windows over n tokens: tokens [first_scored, end) are scored
    with context [begin, end). Every token 1..n-1 is scored exactly once."""
    if context_len < 2 or not 0 < stride <= context_len:
        raise ValueError(f"need context_len >= 2 and 0 < stride <= context_len, got "
                         f"{context_len}, {stride}")
    out, done = [], 1  # token 0 has no context
    start = 0
    while done < n:
        begin = min(start, done - 1)  # the first new token always has a token of context
        end = min(begin + context_len, n)
        out.append((begin, end, done))
        done = end
        start += stride
    return out


def perplexity(model, documents: Sequence[Sequence[int]], *, context_len: int,
               stride: int | None = None, bos_id: int | None = None, num_bytes: int | None = None,
               batch_size: int = 4, progress: str | None = None) -> dict:
    """Mean next-token NLL over all documents -> {"nll", "ppl", "tokens"[, "bits_per_byte"]}.

    bos_id: prepended to every document so its first token is scored too. num_bytes: UTF-8
    bytes of the texts, for bits_per_byte = total NLL / ln 2 / num_bytes.
    """
    stride = context_len if stride is None else stride
    requests = []
    for doc in documents:
        ids = np.asarray(([bos_id] if bos_id is not None else []) + list(doc), np.int32)
        for begin, end, first in sliding_windows(len(ids), context_len, stride):
            mask = np.zeros(end - begin, bool)
            mask[first - begin:] = True
            requests.append(Request(ids[begin:end], mask))
    if not requests:
        raise ValueError("no tokens to score (every document has fewer than 2 tokens)")
    scored = Scorer(model, batch_size=batch_size).score(requests, progress=progress)
    logps = np.concatenate([s.logprobs for s in scored])
    nll = float(-logps.sum())
    out = {"nll": nll / len(logps), "ppl": math.exp(nll / len(logps)), "tokens": int(len(logps))}
    if num_bytes:
        out["bits_per_byte"] = nll / math.log(2) / num_bytes
    return out
