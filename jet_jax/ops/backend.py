"""Selection of Pallas kernels behind the ops' `implementation=` switch (the recurrentgemma
AUTO pattern): "pallas" demands the kernel, "auto" uses it only where it is built for the
current backend and falls back to the XLA form elsewhere."""

from __future__ import annotations

import importlib

import jax

ACCELERATOR_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def select_pallas(op: str, module: str, name: str, implementation: str,
                  backends: tuple[str, ...] = ACCELERATOR_BACKENDS):
    """The kernel `module.name` when `implementation` asks for it, else None (use XLA)."""
    if implementation == "auto" and jax.default_backend() not in backends:
        return None
    if implementation not in ("auto", "pallas"):
        return None
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        if implementation == "pallas":
            raise ImportError(f"{op}(implementation='pallas'): could not import {module}.{name} ({e})") from e
        return None
