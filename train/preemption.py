"""Stop training cleanly on SIGTERM / SIGINT, at the same step on every process.

    stop = Preemption()
    with stop.installed():
        while step < total:
            if stop.should_stop(step):   # same answer on every process for the same step
                break                    # the caller saves a checkpoint of `step` and exits 0
            ...

A scheduler preempting a pod sends SIGTERM to the processes of some hosts, not necessarily all,
and not at the same instant. If each process stopped on its own signal they would stop at
different steps and the next collective (the train step, the checkpoint save) would hang.
So the decision is made collectively:

* multi-process (after `jax.distributed.initialize`): JAX's preemption sync manager. JAX's
  preemption notifier (installed by `jax.distributed.initialize`) catches SIGTERM in any
  process and tells the coordination service; `multihost_utils.reached_preemption_sync_point(s)`
  then returns True on every process at the same step `s`. We therefore do NOT install a
  Python SIGTERM handler there (it would replace JAX's); SIGINT (Ctrl-C) is turned into a
  SIGTERM to this process so it takes the same route. Orbax's `CheckpointManager.should_save`
  consults the same sync point, so the step that stops is also saved.
* multi-process without a sync manager (an older/other runtime): Python handlers set a local
  flag and `should_stop` takes the maximum of the flags over processes (one tiny allgather
  per step).
* single process: Python handlers set a flag that `should_stop` returns.

`signum` holds the signal that this process received (None if the stop came from another
process or nothing happened).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

import jax
import numpy as np

log = logging.getLogger(__name__)


def _sync_manager():
    try:
        from jax._src import distributed
        return distributed.global_state.preemption_sync_manager
    except Exception:  # noqa: BLE001 - private API moved: fall back to the allgather
        return None


class Preemption:
    """SIGTERM/SIGINT -> `should_stop(step)` True on every process at the same step."""

    def __init__(self):
        self.signum: int | None = None
        self.stopped_at: int | None = None
        self._multi = jax.process_count() > 1
        self._use_sync_manager = self._multi and _sync_manager() is not None

    # ---- signal handlers
    def _flag(self, signum, frame):
        self.signum = signum

    def _sigint_to_sigterm(self, signum, frame):
        self.signum = signum
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier takes it from here

    @contextlib.contextmanager
    def installed(self):
        """Install the handlers for the duration of the block (main thread only)."""
        if self._use_sync_manager:
            handlers = {signal.SIGINT: self._sigint_to_sigterm}
        else:
            handlers = {signal.SIGTERM: self._flag, signal.SIGINT: self._flag}
        old = {}
        try:
            for s, h in handlers.items():
                old[s] = signal.signal(s, h)
        except ValueError:  # not the main thread: signals cannot be handled here
            pass
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # ---- the decision
    def should_stop(self, step: int) -> bool:
        """True when training must stop before running step `step + 1`; every process gets the
        same answer for the same `step` (call it at every step boundary on every process, with
        increasing `step`)."""
        if self.stopped_at is not None:
            return True
        if self._use_sync_manager:
            from jax.experimental import multihost_utils
            stop = bool(multihost_utils.reached_preemption_sync_point(int(step)))
        elif self._multi:
            from jax.experimental import multihost_utils
            flags = multihost_utils.process_allgather(np.int32(self.signum is not None))
            stop = bool(np.max(flags))
        else:
            stop = self.signum is not None
        if stop:
            self.stopped_at = int(step)
            if self.signum is None:
                self.signum = int(signal.SIGTERM)  # received by this or another process
            log.warning("process %d: stop requested (signal %s); stopping at step %d",
                        jax.process_index(), self.signum, step)
        return stop
