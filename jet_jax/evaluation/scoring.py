"""Teacher-forced scoring: log-probabilities and greedy hits of chosen tokens, batched.

A `Request` is a token sequence and the positions whose tokens are scored (each predicted
from the tokens before it). Requests are sorted by length, right-padded into fixed
[batch_size, T] blocks (T rounded up to `pad_multiple`, so few shapes compile) and run
through one jitted forward; causal models never see the right padding.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jet_jax.token_ids import check_token_ids


@dataclasses.dataclass
class Request:
    """ids: [L] token ids; score: [L] bool, True where ids[j] is scored (j >= 1)."""

    ids: np.ndarray
    score: np.ndarray

    def __post_init__(self):
        self.ids = np.asarray(self.ids, np.int32)
        self.score = np.asarray(self.score, bool)
        if self.ids.ndim != 1 or self.ids.shape != self.score.shape:
            raise ValueError(f"request ids {self.ids.shape} and score mask {self.score.shape} "
                             "must be equal 1-D shapes")
        if self.score[:1].any():
            raise ValueError("token 0 has no context and cannot be scored")


@dataclasses.dataclass
class Scored:
    """Per scored token (in order): logprob [n] float64, greedy [n] bool (argmax == token)."""

    logprobs: np.ndarray
    greedy: np.ndarray


@functools.partial(jax.jit, static_argnums=0)
def _score_block(graphdef, state, inputs, targets):
    """inputs/targets: [B, T] -> (log p(target) [B, T], argmax == target [B, T])."""
    logits = nnx.merge(graphdef, state)(inputs)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return tok, jnp.argmax(logits, axis=-1) == targets


class Scorer:
    """Scores requests with one model. batch_size rows of up to max_length tokens each."""

    def __init__(self, model, *, batch_size: int = 4, pad_multiple: int = 64,
                 max_length: int | None = None):
        self.graphdef, self.state = nnx.split(model)
        self.vocab_size = model.config.vocab_size
        self.batch_size, self.pad_multiple = batch_size, pad_multiple
        self.max_length = max_length

    def score(self, requests: Sequence[Request], *, progress: str | None = None) -> list[Scored]:
        """Scored tokens of every request, in the order given. `progress`: a tqdm bar
        description (shown on stderr) or None for no bar."""
        for i, r in enumerate(requests):
            check_token_ids(r.ids, self.vocab_size, what=f"request {i}")
            if self.max_length is not None and len(r.ids) > self.max_length:
                raise ValueError(f"request {i} has {len(r.ids)} tokens, more than max_length "
                                 f"{self.max_length}")
        bar = None
        if progress is not None:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(requests), desc=progress, unit="seq", leave=False)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].ids))
        out: list[Scored | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            longest = max(len(requests[i].ids) for i in idx)
            t = -(-(longest - 1) // self.pad_multiple) * self.pad_multiple
            inputs = np.zeros((self.batch_size, t), np.int32)
            targets = np.zeros((self.batch_size, t), np.int32)
            for row, i in enumerate(idx):
                ids = requests[i].ids
                inputs[row, :len(ids) - 1] = ids[:-1]
                targets[row, :len(ids) - 1] = ids[1:]
            logp, greedy = jax.device_get(_score_block(self.graphdef, self.state,
                                                       jnp.asarray(inputs), jnp.asarray(targets)))
            for row, i in enumerate(idx):
                mask = requests[i].score[1:]
                n = len(mask)
                out[i] = Scored(np.asarray(logp[row, :n][mask], np.float64),
                                np.asarray(greedy[row, :n][mask]))
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out  # type: ignore[return-value]
