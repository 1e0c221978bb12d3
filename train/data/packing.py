"""Packing tokenized documents into fixed-length training rows.

Every document becomes one next-token example *before* packing:

    ids     = [bos, t1, ..., tn, eos]                  int32[L]
    inputs  = ids[:-1], targets = ids[1:]              int32[L-1]
    loss_mask = per-target weight (1, or MQAR answers)  float32[L-1]

Shifting per document (instead of shifting the packed row) means a target is
always the next token *of the same document*: nothing is ever trained to predict
across a document boundary, the final eos is a target but never an input (it has
nothing to predict), and when a long document is split across rows the token at
the split still has its true next token as target. So no position is wasted and
none needs masking except padding.

Rows are then packed by grain:
  * text: ``grain.experimental.ConcatThenSplitIterDataset`` - concatenate and
    cut at ``seq_len``; long documents continue in the next row (as a new
    segment whose positions restart at 0), no padding except at stream end.
  * MQAR: ``grain.experimental.FirstFitPackIterDataset`` - whole examples are
    never split (the queries need their key-value pairs in the same row); the
    rest of a row is padding.

A packed row (``finalize_row``) is a dict of [T] arrays, T = seq_len:
    input_ids   int32   token ids; pad_id at padding
    segment_ids int32   1, 2, 3, ... per document piece within the row; 0 = padding
    positions   int32   0-based position within the segment (restarts per segment)
    targets     int32   next token of the same document; pad_id at padding
    loss_mask   float32 0 at padding (and at non-answers for answer-only MQAR)
Attention must be restricted to equal segment_ids (the model's job).
"""

from __future__ import annotations

from collections.abc import Mapping

import grain
import numpy as np

ROW_KEYS = ("input_ids", "segment_ids", "positions", "targets", "loss_mask")
_FEATURES = ("inputs", "targets", "loss_mask")


def lm_example(ids: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Shift one document into next-token form.

    Args:
      ids: int[L], L >= 2, the full document including bos/eos.
      weights: optional float[L], loss weight of each token *as a target*
        (e.g. MQAR answer mask); default 1 everywhere.
    Returns:
      {"inputs": int32[L-1], "targets": int32[L-1], "loss_mask": float32[L-1]}
    """
    ids = np.asarray(ids, dtype=np.int32)
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError(f"lm_example needs a 1-D sequence of >= 2 tokens, got shape {ids.shape}")
    if weights is None:
        w = np.ones(len(ids) - 1, np.float32)
    else:
        weights = np.asarray(weights, dtype=np.float32)
        if weights.shape != ids.shape:
            raise ValueError(f"lm_example: weights shape {weights.shape} != ids shape {ids.shape}")
        w = weights[1:]
    return {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": w}


def encode_document(text: str, tokenizer) -> dict[str, np.ndarray]:
    """Tokenize one document, add bos/eos and shift (see ``lm_example``)."""
    enc = getattr(tokenizer, "encode_array", None)
    body = enc(text) if enc is not None else np.asarray(tokenizer.encode(text), np.int32)
    ids = np.concatenate([[tokenizer.bos_id], body, [tokenizer.eos_id]]).astype(np.int32)
    return lm_example(ids)


def mqar_lm_example(example: Mapping[str, np.ndarray], answer_only_loss: bool) -> dict[str, np.ndarray]:
    """MQAR example (``mqar.make_mqar_example``) -> next-token form; with
    ``answer_only_loss`` the loss falls only where the target is an answer."""
    weights = example["answer_mask"].astype(np.float32) if answer_only_loss else None
    return lm_example(example["input_ids"], weights)


def _lengths(seq_len: int) -> dict[str, int]:
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    return {k: seq_len for k in _FEATURES}


def pack_concat_then_split(ds: grain.IterDataset, seq_len: int) -> grain.IterDataset:
    """Pack ``lm_example`` dicts by concatenation, splitting at ``seq_len``."""
    return grain.experimental.ConcatThenSplitIterDataset(ds, length_struct=_lengths(seq_len))


def pack_first_fit(ds: grain.IterDataset, seq_len: int, *, num_bins: int, seed: int,
                   max_sequences_per_bin: int | None = None) -> grain.IterDataset:
    """Pack whole ``lm_example`` dicts into ``num_bins`` open rows (first fit), never
    splitting one; ``max_sequences_per_bin=1`` gives one example per padded row."""
    return grain.experimental.FirstFitPackIterDataset(
        ds, length_struct=_lengths(seq_len), num_packing_bins=num_bins, seed=seed,
        shuffle_bins=max_sequences_per_bin != 1, max_sequences_per_bin=max_sequences_per_bin)


def finalize_row(row: Mapping[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """Grain's packed feature names -> the row format in the module docstring."""
    seg = np.asarray(row["inputs_segment_ids"], np.int32)
    pad = seg == 0
    return {
        "input_ids": np.where(pad, pad_id, row["inputs"]).astype(np.int32),
        "segment_ids": seg,
        "positions": np.asarray(row["inputs_positions"], np.int32),
        "targets": np.where(pad, pad_id, row["targets"]).astype(np.int32),
        # Grain pads loss_mask with 0 already; multiplying makes it independent of that.
        "loss_mask": (np.asarray(row["loss_mask"], np.float32) * ~pad).astype(np.float32),
    }


def restore_json_state(state):
    """Undo what a JSON round trip does to grain's concat-then-split state.

    grain 0.2.18's ConcatThenSplit iterator stores ``remainder_slices`` as
    tuples and detects "no remainder" by comparing with the tuple ``(-1, -1)``.
    JSON (which grain's own checkpoint handler uses) turns them into lists, the
    comparison then always fails and a restored iterator silently yields
    different rows. Converting them back to tuples makes restore exact.
    """
    if isinstance(state, dict):
        return {k: ({f: tuple(s) for f, s in v.items()} if k == "remainder_slices" and isinstance(v, dict)
                    else restore_json_state(v))
                for k, v in state.items()}
    if isinstance(state, list):
        return [restore_json_state(v) for v in state]
    return state
