"""Selection of Pallas kernels behind the ops' `implementation=` switch.

"pallas" demands the kernel (an ImportError naming it when it cannot be imported);
"auto" uses it only when `pallas_kernels.verified` lists (op, current backend) -- a kernel
that has passed the device check on that backend -- and otherwise returns None so the op
runs its XLA form. Being built for a backend, or importable, is not enough for "auto".
"""

from __future__ import annotations

import importlib

import jax


def current_backend() -> str:
    """jax.default_backend(), with cuda/rocm reported as "gpu"."""
    b = jax.default_backend()
    return "gpu" if b in ("gpu", "cuda", "rocm") else b


def auto_uses_pallas(op: str, backend: str | None = None) -> bool:
    """True when `implementation="auto"` runs the Pallas kernel of `op` on `backend`
    (default: the current one): only when it is recorded as verified there."""
    backend = current_backend() if backend is None else backend
    if backend == "cpu":
        return False
    try:
        verified = importlib.import_module("pallas_kernels.verified")
    except ImportError:
        return False
    return verified.is_verified(op, backend)


def select_pallas(op: str, module: str, name: str, implementation: str,
                  backends: tuple[str, ...] | None = None):
    """The kernel `module.name` when `implementation` asks for it, else None (use XLA).

    backends: optionally, the only backends the kernel is built for ("auto" additionally
    requires the current backend to be one of them; the verified table decides first).
    """
    if implementation == "auto" and (not auto_uses_pallas(op)
                                     or (backends is not None and current_backend() not in backends)):
        return None
    if implementation not in ("auto", "pallas"):
        return None
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        if implementation == "pallas":
            raise ImportError(f"{op}(implementation='pallas'): could not import {module}.{name} ({e})") from e
        return None
