"""Progress lines of the PostNAS stages: `log`, a timestamped line that does not break a
running bar (`jet_jax_train.progress.progress_bar`)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def log(msg: str) -> None:
    tqdm.write(f"[postnas {time.strftime('%H:%M:%S')}] {msg}", file=sys.stdout)
    sys.stdout.flush()
