"""Refuse token ids the model has no embedding for.

An id >= vocab_size (a tokenizer that does not match the model) would be clamped or read as
NaN by the embedding lookup inside jit; it is caught here, on the host, at every entry point
that takes ids or text (generation, evaluation, the CLI).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class TokenIdError(ValueError):
    """Token ids outside [0, vocab_size)."""


def check_token_ids(ids, vocab_size: int, *, what: str = "token ids") -> None:
    """Raise TokenIdError naming the first offending id and its index.

    ids: an array of any shape, one sequence of ints, or a list of (ragged) sequences of ints.
    """
    if isinstance(ids, (list, tuple)) and ids and not np.isscalar(ids[0]):
        for r, row in enumerate(ids):  # ragged rows: check each, report [row, column]
            _check_array(np.asarray(row, dtype=np.int64), vocab_size, what, prefix=(r,))
    else:
        _check_array(np.asarray(ids), vocab_size, what, prefix=())


def _check_array(arr: np.ndarray, vocab_size: int, what: str, prefix: tuple) -> None:
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TokenIdError(f"{what}: expected integer token ids, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise TokenIdError(_message(what, int(arr[where]), prefix + where, vocab_size, int(bad.sum())))


def _message(what: str, value: int, where: tuple, vocab_size: int, count: int) -> str:
    more = f" ({count - 1} more)" if count > 1 else ""
    return (f"{what}: id {value} at index {list(where)} is outside the model's vocabulary "
            f"[0, {vocab_size}){more}; does the tokenizer match the model?")


def check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> None:
    """Prompts for generation: a list of rows of token ids."""
    check_token_ids(prompts, vocab_size, what="prompt token ids")
