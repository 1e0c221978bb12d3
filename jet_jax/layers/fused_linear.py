"""Input projections fused for inference: the `nnx.Linear`s of a layer that read the same
input, as one matrix.

A layer class lists them in `INPUT_PROJECTIONS` (attribute paths, in the order its
`__call__` takes their outputs) and reads them through `project_inputs`. `fuse_inputs`
replaces them with one `FusedLinear` (`module.fused_inputs`), so a decode step runs one
matrix-vector product per layer input instead of one per projection: fewer kernels to
launch on an accelerator, fewer to generate and compile (XLA:CPU emits code for every
matrix-vector dot, and every layer loop compiles its own). `unfuse_inputs` gives the
projections back with their values and variable metadata. Parameters are stored unfused
(checkpoints, HF conversion, training); `jet_jax.model.stack_layers` fuses its view.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["FusedLinear", "fuse_inputs", "unfuse_inputs", "project_inputs"]


def _get(module, path: str):
    for name in path.split("."):
        module = getattr(module, name)
    return module


def _owner(module, path: str):
    """(the module holding the attribute at `path`, the attribute's name)."""
    head, _, name = path.rpartition(".")
    return (_get(module, head) if head else module), name


def _fused_metadata(metadata: dict) -> dict:
    """A part's variable metadata for the fused array: its output axis is no longer one
    logical axis (heads, kv heads, ... side by side), so it is left unnamed (replicated)."""
    out = dict(metadata)
    if out.get("out_sharding"):
        out["out_sharding"] = tuple(out["out_sharding"][:-1]) + (None,)
    return out


class FusedLinear(nnx.Module):
    """x: [..., D] -> one array [..., N_i] per part: x @ [W_1 | ... | W_n] (+ [b_1 | ... | b_n]).

    `parts`: `nnx.Linear`s with the same input size, dtypes, precision and bias use. Their
    kernels may carry leading stacked-layer axes ([L, D, N_i]); they are joined on the last
    axis. Each output element is the dot product the part computes on its own.
    """

    def __init__(self, parts: Sequence[nnx.Linear]):
        first = parts[0]
        same = ("in_features", "use_bias", "dtype", "param_dtype", "precision", "dot_general",
                "promote_dtype", "preferred_element_type")
        for p in parts[1:]:
            for name in same:
                if getattr(p, name) != getattr(first, name):
                    raise ValueError(f"FusedLinear: parts differ in {name}: "
                                     f"{getattr(first, name)!r} vs {getattr(p, name)!r}")
        self.sizes = tuple(p.out_features for p in parts)
        for name in same:
            setattr(self, name, getattr(first, name))
        self.kernel = nnx.Param(jnp.concatenate([p.kernel[...] for p in parts], axis=-1),
                                **_fused_metadata(first.kernel.get_metadata()))
        self.bias = (nnx.Param(jnp.concatenate([p.bias[...] for p in parts], axis=-1),
                               **_fused_metadata(first.bias.get_metadata()))
                     if first.use_bias else None)
        # static: how to rebuild each part (`unfuse`)
        self.part_defs = tuple((nnx.graphdef(p), tuple(p.kernel.get_metadata().items()),
                                tuple(p.bias.get_metadata().items()) if p.use_bias else None)
                               for p in parts)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        kw = {} if self.preferred_element_type is None else {
            "preferred_element_type": self.preferred_element_type}
        y = self.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                             precision=self.precision, **kw)
        if bias is not None:
            y = y + bias
        return self._split(y)

    def _split(self, a: jax.Array) -> tuple[jax.Array, ...]:
        """[..., sum(sizes)] -> one [..., N_i] per part."""
        return tuple(jnp.split(a, list(itertools.accumulate(self.sizes[:-1])), axis=-1))

    def unfuse(self) -> list[nnx.Linear]:
        """The parts as `nnx.Linear`s again (values split off the fused arrays)."""
        kernels = self._split(self.kernel[...])
        biases = self._split(self.bias[...]) if self.bias is not None else [None] * len(kernels)
        out = []
        for kernel, bias, (graphdef, kmeta, bmeta) in zip(kernels, biases, self.part_defs):
            state = {"kernel": nnx.Param(kernel, **dict(kmeta))}
            if bmeta is not None:
                state["bias"] = nnx.Param(bias, **dict(bmeta))
            out.append(nnx.merge(graphdef, nnx.State(state)))
        return out


def _fusable(module) -> bool:
    return isinstance(module, nnx.Module) and bool(getattr(type(module), "INPUT_PROJECTIONS", ()))


def fuse_inputs(module: nnx.Module) -> nnx.Module:
    """In place: every submodule of `module` (itself included) whose class lists
    `INPUT_PROJECTIONS` gets them replaced by one `FusedLinear` (`fused_inputs`). Returns
    `module`. A submodule already fused is left as it is."""
    targets = [m for _, m in nnx.iter_modules(module) if _fusable(m)]
    for m in targets:
        if getattr(m, "fused_inputs", None) is not None:
            continue
        paths = type(m).INPUT_PROJECTIONS
        fused = FusedLinear([_get(m, p) for p in paths])
        for p in paths:
            delattr(*_owner(m, p))
        m.fused_inputs = fused
    return module


def unfuse_inputs(module: nnx.Module) -> nnx.Module:
    """In place: the inverse of `fuse_inputs`. Returns `module`."""
    targets = [m for _, m in nnx.iter_modules(module)
               if _fusable(m) and getattr(m, "fused_inputs", None) is not None]
    for m in targets:
        for p, part in zip(type(m).INPUT_PROJECTIONS, m.fused_inputs.unfuse()):
            setattr(*_owner(m, p), part)
        del m.fused_inputs
    return module


def project_inputs(module: nnx.Module, x: jax.Array) -> tuple[jax.Array, ...]:
    """The outputs of `module`'s `INPUT_PROJECTIONS` on x, in that order: one product when
    fused, else each projection's own."""
    fused = getattr(module, "fused_inputs", None)
    if fused is not None:
        return fused(x)
    # read through the instance: views that delegate their attributes to a layer work too
    return tuple(_get(module, p)(x) for p in module.INPUT_PROJECTIONS)
