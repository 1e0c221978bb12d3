"""Packed-sequence bookkeeping shared by the recurrent ops and mixers."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def document_index(segment_ids: jax.Array) -> jax.Array:
    """segment_ids: [B, T] int -> [B, T] int32 running document number, starting at 0.

    A new document starts wherever the id changes from the previous token, so ids may repeat
    non-adjacently (and need not be sorted); a recurrent state is reset where the index moves.
    """
    change = (segment_ids[:, 1:] != segment_ids[:, :-1]).astype(jnp.int32)
    first = jnp.zeros((segment_ids.shape[0], 1), jnp.int32)  # also right for T == 1
    return jnp.concatenate([first, jnp.cumsum(change, axis=1)], axis=1)
