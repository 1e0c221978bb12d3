"""Synthetic copying (Jelassi et al. 2024, "Repeat After Me"): a probe that full attention
passes and fixed-size recurrent states fail once the span outgrows the state.

A sequence is

    bos, x1 .. xS, x1 .. xS

with S random tokens from ``token_range``; the loss / accuracy falls on the second copy
(each token predicted from the one before it). A full-attention layer copies with one
fixed-offset head; a linear-attention layer must hold all S tokens in its state. The PostNAS
demo uses it beside MQAR: it tells which layer of the teacher does the retrieval.

Examples are a pure function of (seed, index), like ``mqar``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jet_jax_train.data.mqar import MQARSource, check_token_range


@dataclasses.dataclass(frozen=True)
class CopyConfig:
    """span: S tokens to copy; token_range: [lo, hi) ids they are drawn from (inside the
    vocab, avoiding special ids); num_examples: length of the (virtual) training source."""

    span: int = 24
    token_range: tuple[int, int] = (0, 64)
    num_examples: int = 1 << 30

    def __post_init__(self):
        lo, hi = self.token_range
        if not 0 <= lo < hi:
            raise ValueError(f"CopyConfig.token_range must be 0 <= lo < hi, got {self.token_range}")
        if self.span < 1:
            raise ValueError(f"CopyConfig.span must be >= 1, got {self.span}")
        if self.num_examples < 1:
            raise ValueError(f"CopyConfig.num_examples must be >= 1, got {self.num_examples}")

    @property
    def length(self) -> int:
        """Tokens per example: bos + 2S."""
        return 1 + 2 * self.span

    def check_vocab(self, vocab_size: int, special_ids: tuple[int, ...]) -> None:
        check_token_range("CopyConfig", self.token_range, vocab_size, special_ids)


def make_copy_example(cfg: CopyConfig, seed: int, index: int, bos_id: int) -> dict[str, np.ndarray]:
    """input_ids: int32[1 + 2S]; answer_mask: bool, True on the second copy."""
    if index < 0:
        raise IndexError(f"copy index must be >= 0, got {index}")
    rng = np.random.default_rng([seed & 0xFFFFFFFF, index, 7])
    x = rng.integers(*cfg.token_range, size=cfg.span).astype(np.int32)
    ids = np.concatenate([[bos_id], x, x]).astype(np.int32)
    answer_mask = np.zeros(cfg.length, dtype=bool)
    answer_mask[1 + cfg.span:] = True
    return {"input_ids": ids, "answer_mask": answer_mask}


class CopySource(MQARSource):
    """Random-access grain source of copy examples (``len`` and ``__getitem__``)."""

    make_example = staticmethod(make_copy_example)
