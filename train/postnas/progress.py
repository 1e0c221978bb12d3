"""Progress output for the PostNAS stages: `bar` (a tqdm bar with rate and ETA, on stderr)
and `log` (a timestamped line that does not break a running bar)."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def bar(iterable=None, *, desc: str, total: int | None = None, unit: str = "it"):
    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=True)


def log(msg: str) -> None:
    tqdm.write(f"[postnas {time.strftime('%H:%M:%S')}] {msg}", file=sys.stdout)
    sys.stdout.flush()
