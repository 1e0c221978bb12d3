"""Which Pallas kernels have been verified on which backend: the only input of `auto`.

`implementation="auto"` (jet_jax.ops.backend.select_pallas) runs a Pallas kernel on a
backend only when VERIFIED below has an entry for (kernel, backend); everywhere else it
runs the XLA form. An entry is added by hand, after the kernel passed the correctness
part of `benchmarks/gpu_suite.py` (GPU) -- or the equivalent run on a TPU -- on a real
device: every output, the final state and every gradient against the float32 recurrent
reference, with packed documents, T not a multiple of the chunk and Dk != Dv. Each entry
names the device, the date, the commit that was measured and the largest error seen, so
a reader can re-run exactly that check (docs/kernels.md says how).

State today:
  GPU: nothing verified. The old Triton kernel did not launch on an H200 (shared memory
    311296 B requested, 232448 B available; issue 10). The chunk-parallel kernels that
    replaced it (pallas_kernels/gdr_gpu.py) have only run in interpret mode on CPU.
  TPU: nothing verified. gdr_tpu and dynamic_conv have only run in interpret mode
    (including TPU-semantics interpretation) on CPU; no TPU has ever run them.
So `auto` selects XLA on every backend until an entry is added.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Verification:
    """One passed on-device check of a kernel.

    kernel: the op name ("gated_delta_rule" | "dynamic_causal_conv").
    backend: "gpu" | "tpu" (jax.default_backend() of the device, cuda/rocm -> gpu).
    device: device kind as jax reports it, e.g. "NVIDIA H200".
    date: ISO date of the run; commit: the git commit measured (full or short hash).
    max_error: largest max|err|/max|ref| over outputs, final state and gradients (f32 inputs).
    command: the command that produced it (so it can be re-run).
    """
    kernel: str
    backend: str
    device: str
    date: str
    commit: str
    max_error: float
    command: str


# Add an entry only after the device check passed; never for interpret-mode runs.
VERIFIED: tuple[Verification, ...] = ()


def normalize_backend(backend: str) -> str:
    """jax backend / platform name -> "gpu" | "tpu" | "cpu" | other (cuda/rocm -> gpu)."""
    return "gpu" if backend in ("gpu", "cuda", "rocm") else backend


def verification(kernel: str, backend: str) -> Verification | None:
    """The entry for (kernel, backend), or None when the kernel is not verified there."""
    backend = normalize_backend(backend)
    for v in VERIFIED:
        if v.kernel == kernel and v.backend == backend:
            return v
    return None


def is_verified(kernel: str, backend: str) -> bool:
    return verification(kernel, backend) is not None
