"""Progress lines of the PostNAS stages: `log`, a timestamped line that does not break a
running bar (`jet_jax_train.progress.progress_bar`); printed by process 0 only."""

from __future__ import annotations

import sys
import time

import jax
from tqdm.auto import tqdm


def log(msg: str) -> None:
    if jax.process_index() != 0:
        return
    tqdm.write(f"[postnas {time.strftime('%H:%M:%S')}] {msg}", file=sys.stdout)
    sys.stdout.flush()
