"""The progress bar of the training loop and the PostNAS stages: tqdm, rate and ETA, on stderr."""

from __future__ import annotations

import jax


def progress_bar(iterable=None, *, desc: str, total: int | None = None, initial: int = 0,
                 unit: str = "it", kind: str = "tqdm"):
    """A tqdm bar labelled `desc` over `iterable` (or updated by hand up to `total`).

    kind "tqdm" (tqdm.auto: a widget in a notebook), "rich" (tqdm's rich front end) or "none".
    With "none", and on every process but the first, the bar is disabled: it still iterates and
    takes update/close calls, so callers need no second code path."""
    if kind == "rich":
        import warnings

        from tqdm import TqdmExperimentalWarning
        from tqdm.rich import tqdm
        warnings.simplefilter("ignore", TqdmExperimentalWarning)
    else:
        from tqdm.auto import tqdm
    off = kind == "none" or jax.process_index() != 0
    return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, dynamic_ncols=True,
                disable=off)
