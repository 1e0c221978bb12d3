"""The one training loop. Teacher pre-training (`jet_jax_train.pretrain.train_teacher`), distillation
(`jet_jax_train.distill.run_distill`) and super-network training (`jet_jax_train.postnas.trainer`) are
configurations of it: what differs is the step function, where its inputs come from and
the hooks (logging, evaluation, checkpointing), in the manner of levanter's Trainer.

    loop = TrainLoop(step_fn, stage="distill", total_steps=N, tokens=B * T)
    loop.every(10, log_metrics)          # hook(info) at steps 10, 20, ... and the last
    loop.at_end(save_final)              # hook(info) once, after the last step run
    state, result = loop.run(state, next_input, start=0)

`step_fn(state, inputs) -> (state, metrics)`; `next_input(step)` gives the inputs of step
`step` (0-based): a batch, a list of micro-batches, or a (batch, choice) pair.
`stop_requested(step)` is checked at every step boundary (preemption: the caller saves and
exits); the progress bar (tqdm or rich, or none) is labelled with the stage and shows the
rate and the ETA.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax

from jet_jax_train.progress import progress_bar


@dataclasses.dataclass
class StepInfo:
    """What a hook sees after optimizer step `step` (1-based count of steps done)."""

    step: int
    state: Any
    metrics: Any            # step_fn's metrics of this step (device arrays)
    tokens_per_s: float     # since the first (compiling) step finished; nan before
    loop: "TrainLoop"


@dataclasses.dataclass
class LoopResult:
    start_step: int
    end_step: int
    interrupted: bool
    wall_s: float           # the whole loop, first (compiling) step included
    tokens_per_s: float     # over all steps run, first step included (nan if none)


class TrainLoop:
    """Runs `step_fn` from `start` to `total_steps` with hooks; see the module docstring."""

    def __init__(self, step_fn: Callable[[Any, Any], tuple[Any, Any]], *, stage: str,
                 total_steps: int, tokens: Callable[[Any], int] | int = 0, progress: str = "tqdm",
                 stop_requested: Callable[[int], bool] | None = None):
        if progress not in ("tqdm", "rich", "none"):
            raise ValueError(f"progress must be tqdm, rich or none, got {progress!r}")
        self.step_fn, self.stage, self.total_steps = step_fn, stage, total_steps
        self.tokens = tokens if callable(tokens) else (lambda _inputs, n=tokens: n)
        self.progress = progress
        self.stop_requested = stop_requested or (lambda _step: False)
        self._every: list[tuple[int, Callable[[StepInfo], Any]]] = []
        self._end: list[Callable[[StepInfo], Any]] = []
        self._bar = None

    def every(self, interval: int, hook: Callable[[StepInfo], Any]) -> "TrainLoop":
        """Call `hook` after every `interval`-th step and after the last one (interval <= 0:
        never)."""
        self._every.append((interval, hook))
        return self

    def at_end(self, hook: Callable[[StepInfo], Any]) -> "TrainLoop":
        """Call `hook` once after the loop (also when stopped early or when no step ran)."""
        self._end.append(hook)
        return self

    def postfix(self, text: str) -> None:
        """Show `text` (e.g. the latest loss) after the progress bar."""
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def run(self, state, next_input: Callable[[int], Any], *, start: int = 0
            ) -> tuple[Any, LoopResult]:
        self._bar = progress_bar(desc=self.stage, total=self.total_steps, initial=start,
                                 kind=self.progress)
        step, interrupted, metrics = start, False, None
        t_start = time.perf_counter()
        t_first = None
        tokens_all = tokens_after_first = 0
        try:
            while step < self.total_steps:
                if self.stop_requested(step):
                    interrupted = True
                    break
                inputs = next_input(step)
                state, metrics = self.step_fn(state, inputs)
                step += 1
                n = self.tokens(inputs)
                tokens_all += n
                if t_first is None:  # the first step compiles: rates start after it
                    jax.block_until_ready(metrics)
                    t_first = time.perf_counter()
                else:
                    tokens_after_first += n
                self._bar.update(1)
                info = StepInfo(step, state, metrics, _rate(tokens_after_first, t_first), self)
                for interval, hook in self._every:
                    if interval > 0 and (step % interval == 0 or step == self.total_steps):
                        hook(info)
            wall = time.perf_counter() - t_start
            info = StepInfo(step, state, metrics, _rate(tokens_after_first, t_first), self)
            for hook in self._end:
                hook(info)
        finally:
            self._bar.close()
            self._bar = None
        rate = tokens_all / wall if tokens_all and wall > 0 else float("nan")
        return state, LoopResult(start, step, interrupted, wall, rate)


def _rate(tokens: int, since: float | None) -> float:
    elapsed = time.perf_counter() - since if since is not None else 0.0
    return tokens / elapsed if tokens and elapsed > 0 else float("nan")
