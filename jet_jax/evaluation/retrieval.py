"""Synthetic retrieval at a chosen context length: MQAR and passkey.

Both are scored teacher-forced: an answer counts as retrieved when every one of its tokens
is the model's argmax given the tokens before it, which is exactly when greedy decoding
would produce it.

* MQAR (multi-query associative recall, token level, no tokenizer): `num_pairs` key-value
  pairs, random filler tokens, then every key again in a random order; each value is one
  answer. Keys and values come from disjoint id ranges of the model's vocabulary.
* Passkey: a long filler text with "The pass key is NNNNN. Remember it." at a random depth,
  then "What is the pass key? The pass key is"; the answer is " NNNNN" (tokenized with the
  model's tokenizer).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from jet_jax.evaluation.multiple_choice import encode_pair
from jet_jax.evaluation.scoring import Request, Scorer

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def mqar_examples(vocab_size: int, *, context_len: int, num_pairs: int, num_examples: int,
                  seed: int = 0, low: int = 0, high: int | None = None) -> list[Request]:
    """Requests of exactly `context_len` tokens; the scored tokens are the recalled values.
    Keys come from [low, mid), values from [mid, high) with mid the middle of [low, high)."""
    high = vocab_size if high is None else high
    mid = (low + high) // 2
    if mid - low < num_pairs or high - mid < 1:
        raise ValueError(f"id range [{low}, {high}) is too small for {num_pairs} distinct keys")
    if context_len < 4 * num_pairs:
        raise ValueError(f"context_len {context_len} < 4 * num_pairs {num_pairs}: no room for "
                         "the pairs and the queries")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_examples):
        keys = rng.choice(np.arange(low, mid), size=num_pairs, replace=False)
        values = rng.integers(mid, high, size=num_pairs)
        pairs = np.stack([keys, values], 1).reshape(-1)
        order = rng.permutation(num_pairs)
        queries = np.stack([keys[order], values[order]], 1).reshape(-1)
        filler = rng.integers(low, high, size=context_len - len(pairs) - len(queries))
        ids = np.concatenate([pairs, filler, queries])
        mask = np.zeros(context_len, bool)
        mask[len(ids) - len(queries) + 1::2] = True  # the values after each repeated key
        out.append(Request(ids, mask))
    return out


def passkey_examples(encode: Callable[[str], list[int]], *, context_len: int, num_examples: int,
                     seed: int = 0, bos_id: int | None = None) -> list[Request]:
    """Requests of at most `context_len` tokens with the passkey at a random depth."""
    rng = np.random.default_rng(seed)
    question = "What is the pass key? The pass key is"
    per_filler = max(1, len(encode(FILLER)))
    out = []
    for _ in range(num_examples):
        key = int(rng.integers(10000, 100000))
        needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
        answer = encode(f" {key}")
        fixed = len(encode(needle + question)) + len(answer) + (bos_id is not None) + 2
        n_fill = max(0, (context_len - fixed) // per_filler)
        while True:
            depth = int(rng.integers(0, n_fill + 1))
            prompt = FILLER * depth + needle + FILLER * (n_fill - depth) + question
            _, cont = encode_pair(encode, prompt, f" {key}")
            ctx = ([bos_id] if bos_id is not None else []) + encode(prompt)
            if len(ctx) + len(cont) <= context_len or n_fill == 0:
                break
            n_fill -= 1  # tokenization across filler boundaries was longer than estimated
        ids = np.asarray(ctx + cont)
        mask = np.zeros(len(ids), bool)
        mask[len(ctx):] = True
        out.append(Request(ids, mask))
    return out


def retrieval_accuracy(model, requests: list[Request], *, per: str, batch_size: int = 4,
                       progress: str | None = None) -> dict:
    """per="token": fraction of scored tokens that are the argmax (MQAR: one token per value);
    per="request": fraction of requests whose scored tokens are all the argmax (passkey)."""
    scored = Scorer(model, batch_size=batch_size).score(requests, progress=progress)
    if per == "token":
        hits = np.concatenate([s.greedy for s in scored])
        return {"acc": float(hits.mean()), "n": int(hits.size)}
    if per == "request":
        hits = np.array([bool(s.greedy.all()) for s in scored])
        return {"acc": float(hits.mean()), "n": int(hits.size)}
    raise ValueError(f"per must be 'token' or 'request', got {per!r}")
