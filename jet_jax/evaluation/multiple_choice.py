"""Multiple choice scored by log-likelihood, as lm-evaluation-harness does.

For each choice the request is (context, delimiter + choice): trailing whitespace of the
context moves to the continuation, the pair is tokenized as context + continuation and the
continuation's tokens are those after the context's (lm-eval's `_encode_pair`). The score is
the sum of the continuation's token log-probabilities;
  acc      = mean(argmax_i ll_i == label)
  acc_norm = mean(argmax_i ll_i / len(choice_i in UTF-8 bytes) == label).
Over-long requests keep their last max_length + 1 tokens (left truncation, as lm-eval).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jet_jax.evaluation.data import MCExample, TaskFileError
from jet_jax.evaluation.scoring import Request, Scored, Scorer


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str
                ) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx):]


def choice_requests(encode, example: MCExample, *, delimiter: str = " ", bos_id: int | None = None,
                    max_length: int | None = None) -> list[Request]:
    requests = []
    for choice in example.choices:
        ctx, cont = encode_pair(encode, example.context, delimiter + choice)
        if bos_id is not None:
            ctx = [bos_id] + ctx
        if not ctx:
            raise TaskFileError(f"line {example.line}: empty context and no BOS id to score the "
                                "first choice token from")
        if not cont:
            raise TaskFileError(f"line {example.line}: choice {choice!r} tokenizes to nothing")
        ids = ctx + cont
        if max_length is not None:
            ids = ids[-(max_length + 1):]
        mask = np.zeros(len(ids), bool)
        mask[len(ids) - len(cont):] = True
        mask[0] = False  # left truncation may have cut the whole context
        requests.append(Request(np.asarray(ids), mask))
    return requests


def multiple_choice_requests(examples: Sequence[MCExample], encode: Callable[[str], list[int]],
                             *, delimiter: str = " ", bos_id: int | None = None,
                             max_length: int | None = None) -> list[Request]:
    """One request per (example, choice), examples in order, choices in order."""
    if not examples:
        raise TaskFileError("no multiple-choice examples")
    return [r for ex in examples for r in choice_requests(encode, ex, delimiter=delimiter,
                                                            bos_id=bos_id, max_length=max_length)]


def multiple_choice_metrics(examples: Sequence[MCExample], scored: Sequence[Scored], *,
                            return_loglikelihoods: bool = False) -> dict:
    """{"acc", "acc_norm", "n"} from the scored requests of `multiple_choice_requests`."""
    scored = iter(scored)
    acc = acc_norm = 0
    lls = []
    for ex in examples:
        ll = np.array([next(scored).logprobs.sum() for _ in ex.choices])
        lengths = np.array([len(c.encode("utf-8")) for c in ex.choices], np.float64)
        acc += int(np.argmax(ll) == ex.label)
        acc_norm += int(np.argmax(ll / lengths) == ex.label)
        lls.append(ll.tolist())
    out = {"acc": acc / len(examples), "acc_norm": acc_norm / len(examples), "n": len(examples)}
    if return_loglikelihoods:
        out["loglikelihoods"] = lls
    return out


def multiple_choice(model, examples: Sequence[MCExample], encode: Callable[[str], list[int]], *,
                    delimiter: str = " ", bos_id: int | None = None, max_length: int | None = None,
                    batch_size: int = 4, progress: str | None = None,
                    return_loglikelihoods: bool = False) -> dict:
    """{"acc", "acc_norm", "n"} (and "loglikelihoods": one list per example if asked)."""
    flat = multiple_choice_requests(examples, encode, delimiter=delimiter, bos_id=bos_id,
                                    max_length=max_length)
    scored = Scorer(model, batch_size=batch_size).score(flat, progress=progress)
    return multiple_choice_metrics(examples, scored, return_loglikelihoods=return_loglikelihoods)
