"""Synthetic multi-query associative recall (MQAR, Zoology / Arora et al. 2023).

A sequence is

    bos, k1 v1, k2 v2, ..., kN vN, q1 a1, q2 a2, ..., qQ aQ

where the queries q are keys drawn (without repetition) from the N pairs and each
answer a is the value paired with that key. Predicting a_i requires recalling the
pair from context, which is exactly what linear-attention / SSM layers are bad at
and full attention is good at, so it is the probe Jet-Nemotron uses to check that
PostNAS kept the retrieval-critical attention layers.

Keys come from the lower half of ``token_range`` and values from the upper half,
so a key and a value can never be confused. Keys within one sequence are
distinct (otherwise the answer would be ambiguous); values may repeat.

Examples are a pure function of (seed, index): any index can be produced in any
order, on any process, which is what makes the source random-access for grain
and the eval set identical across runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class MQARConfig:
    """MQAR task shape.

    num_pairs: N key-value pairs in context.
    num_queries: Q queries (<= N; each asks a distinct key).
    token_range: [lo, hi) token ids used for keys (lower half) and values (upper
        half); must lie inside the tokenizer's vocab and avoid its special ids.
    answer_only_loss: in training rows, put loss only on answer tokens (the
        Zoology setup). Eval rows always mark only answers.
    num_examples: length of the (virtual) training source; eval uses its own count.
    """

    num_pairs: int = 16
    num_queries: int = 16
    token_range: tuple[int, int] = (0, 256)
    answer_only_loss: bool = True
    num_examples: int = 1 << 30

    def __post_init__(self):
        lo, hi = self.token_range
        if not 0 <= lo < hi:
            raise ValueError(f"MQARConfig.token_range must be 0 <= lo < hi, got {self.token_range}")
        if self.num_pairs < 1:
            raise ValueError(f"MQARConfig.num_pairs must be >= 1, got {self.num_pairs}")
        if not 1 <= self.num_queries <= self.num_pairs:
            raise ValueError(
                f"MQARConfig.num_queries must be in [1, num_pairs={self.num_pairs}], got {self.num_queries}")
        if self.num_keys < self.num_pairs:
            raise ValueError(
                f"MQARConfig: token_range {self.token_range} gives only {self.num_keys} distinct keys "
                f"(lower half) but num_pairs={self.num_pairs} needs that many distinct keys")
        if self.num_examples < 1:
            raise ValueError(f"MQARConfig.num_examples must be >= 1, got {self.num_examples}")

    @property
    def num_keys(self) -> int:
        lo, hi = self.token_range
        return (hi - lo) // 2

    @property
    def key_range(self) -> tuple[int, int]:
        lo, _ = self.token_range
        return lo, lo + self.num_keys

    @property
    def value_range(self) -> tuple[int, int]:
        lo, hi = self.token_range
        return lo + self.num_keys, hi

    @property
    def length(self) -> int:
        """Tokens per example: bos + 2N + 2Q."""
        return 1 + 2 * self.num_pairs + 2 * self.num_queries

    def check_vocab(self, vocab_size: int, special_ids: tuple[int, ...]) -> None:
        """Raise if the token range leaves the vocab or overlaps a special id."""
        check_token_range("MQARConfig", self.token_range, vocab_size, special_ids)


def check_token_range(owner: str, token_range: tuple[int, int], vocab_size: int,
                      special_ids: tuple[int, ...]) -> None:
    """A synthetic task's [lo, hi) token ids must lie in the vocab and avoid special ids."""
    lo, hi = token_range
    if hi > vocab_size:
        raise ValueError(f"{owner}.token_range {token_range} exceeds vocab_size={vocab_size}")
    clash = sorted(i for i in set(special_ids) if lo <= i < hi)
    if clash:
        raise ValueError(f"{owner}.token_range {token_range} contains special token ids {clash}; "
                         f"pick a range without them")


def make_mqar_example(cfg: MQARConfig, seed: int, index: int, bos_id: int) -> dict[str, np.ndarray]:
    """One MQAR sequence, a pure function of (seed, index).

    Returns:
      input_ids: int32[L], L = cfg.length.
      answer_mask: bool[L], True exactly at the answer tokens a_i.
    """
    if index < 0:
        raise IndexError(f"MQAR index must be >= 0, got {index}")
    # SeedSequence mixes (seed, index) so neighbouring indices are independent.
    rng = np.random.default_rng([seed & 0xFFFFFFFF, index])
    klo, khi = cfg.key_range
    vlo, vhi = cfg.value_range
    keys = klo + rng.choice(khi - klo, size=cfg.num_pairs, replace=False)
    values = rng.integers(vlo, vhi, size=cfg.num_pairs)
    asked = rng.choice(cfg.num_pairs, size=cfg.num_queries, replace=False)

    ids = np.empty(cfg.length, dtype=np.int32)
    ids[0] = bos_id
    ctx = ids[1:1 + 2 * cfg.num_pairs]
    ctx[0::2], ctx[1::2] = keys, values
    qa = ids[1 + 2 * cfg.num_pairs:]
    qa[0::2], qa[1::2] = keys[asked], values[asked]
    answer_mask = np.zeros(cfg.length, dtype=bool)
    answer_mask[1 + 2 * cfg.num_pairs + 1::2] = True
    return {"input_ids": ids, "answer_mask": answer_mask}


class MQARSource:
    """Random-access grain source of MQAR examples (``len`` and ``__getitem__``).

    Subclasses for other synthetic tasks (``copy_task.CopySource``) swap ``make_example``."""

    make_example = staticmethod(make_mqar_example)

    def __init__(self, cfg, *, seed: int, bos_id: int, num_examples: int | None = None):
        self.cfg = cfg
        self.seed = seed
        self.bos_id = bos_id
        self._len = cfg.num_examples if num_examples is None else num_examples

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self._len:
            raise IndexError(f"{type(self).__name__} index {index} out of range [0, {self._len})")
        return self.make_example(self.cfg, self.seed, int(index), self.bos_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg}, seed={self.seed}, len={self._len})"


def answer_hits(logits_or_predictions, batch: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(correct answer tokens per row [B], answer tokens per row [B]) by argmax.

    Args:
      logits_or_predictions: float [B, T, V] logits, or int [B, T] predicted ids,
        aligned with ``batch["targets"]`` (position t predicts targets[t]).
      batch: a packed batch with ``targets`` [B, T] and ``loss_mask`` [B, T];
        for MQAR (and copy-task) eval batches (see ``pipeline.make_mqar_eval_batches``)
        the loss mask is 1 exactly where the target is an answer token.
    """
    pred = np.asarray(logits_or_predictions)
    targets = np.asarray(batch["targets"])
    mask = np.asarray(batch["loss_mask"]) > 0
    if pred.ndim == targets.ndim + 1:
        pred = pred.argmax(-1)
    if pred.shape != targets.shape:
        raise ValueError(
            f"answer accuracy: predictions shape {pred.shape} (after argmax) does not match "
            f"targets shape {targets.shape}")
    return ((pred == targets) & mask).sum(-1), mask.sum(-1)


def mqar_accuracy(logits_or_predictions, batch: Mapping[str, np.ndarray]) -> float:
    """Fraction of answer tokens predicted correctly by argmax (see `answer_hits`), as a
    Python float."""
    correct, total = answer_hits(logits_or_predictions, batch)
    n = int(total.sum())
    if n == 0:
        raise ValueError("mqar_accuracy: batch has no answer positions (loss_mask is all zero)")
    return float(correct.sum() / n)
