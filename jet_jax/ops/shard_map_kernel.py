"""Run a Pallas kernel call per device under `shard_map` when a mesh is active.

The SPMD partitioner cannot split a custom call (a Pallas kernel), so under a sharded `jit`
it gathers the kernel's operands onto every device. The kernels here are independent per
batch row and per head (GDR, splash attention) or per channel (dynamic conv), so each device
can run the kernel on its own shard: batch over the `data`/`fsdp` mesh axes, heads (or
channels) over `tensor`, the logical-axis rules of `jet_jax.sharding`.

The mesh comes from `jet_jax.sharding.step_mesh(mesh)` (the context the train step is traced in), or
else from `jax.set_mesh`/`jax.sharding.use_mesh`. With neither, or on a mesh where nothing
would be split, the kernel is called directly. The XLA forms of the ops are not wrapped:
the partitioner splits them already.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax

from jet_jax.sharding import LOGICAL_AXIS_RULES, current_step_mesh, fitted_spec

def _abstract_mesh():
    """The mesh of `jax.set_mesh`/`use_mesh` (inside a `shard_map` too), or None when unset."""
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    am = get() if get is not None else None
    return None if am is None or getattr(am, "empty", True) else am


def active_mesh():
    """The mesh kernels are split over, or None (call the kernel directly)."""
    am = _abstract_mesh()
    if am is not None and getattr(am, "manual_axes", ()):
        return None  # already per device (an outer shard_map): nothing to split
    mesh = current_step_mesh()
    return am if mesh is None else mesh


def _shard_map(fn, mesh, in_specs, out_specs):
    sm = getattr(jax, "shard_map", None)
    if sm is not None:  # jax >= 0.7 (0.10 here, 0.11 on the GPU machine)
        return sm(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map
    return shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def call_per_shard(fn: Callable, args: Sequence[Any], arg_names: Sequence[Sequence[str | None] | None],
                   out_names: Any, *, mesh=None, rules=LOGICAL_AXIS_RULES):
    """`fn(*args)`, per device under `shard_map` when a mesh is active (or given).

    args: arrays or None; arg_names: per arg, a logical name per dim (e.g.
    ("batch", None, "heads", None)), None for a None arg. out_names: the outputs' pytree with a
    names tuple per array output and None where `fn` returns None. `fn` must be independent
    across every named dim (each shard computes its own rows/heads with no communication).
    A name's mesh axes are used only where they divide every input dim that carries it.
    """
    mesh = active_mesh() if mesh is None else mesh
    if mesh is None:
        return fn(*args)
    present = [i for i, a in enumerate(args) if a is not None]
    # Each name is split alike in every operand: over the axes that divide all its dims (their gcd).
    common: dict[str, int] = {}
    for i in present:
        for n, d in zip(arg_names[i], args[i].shape):
            if n is not None:
                common[n] = math.gcd(common.get(n, 0), d)
    spec = lambda names: fitted_spec([common.get(n, 1) for n in names], names, mesh, rules,
                                     trim=True)
    in_specs = tuple(spec(arg_names[i]) for i in present)
    if all(ax is None for s in in_specs for ax in s):
        return fn(*args)
    is_names = lambda x: x is None or (isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x))
    out_leaves, out_tree = jax.tree.flatten(out_names, is_leaf=is_names)
    keep = [i for i, n in enumerate(out_leaves) if n is not None]

    def local(*xs):
        full = list(args)
        for i, x in zip(present, xs):
            full[i] = x
        outs = jax.tree.leaves(fn(*full), is_leaf=lambda x: x is None)
        outs = [o for o in outs if o is not None]
        if len(outs) != len(keep):
            raise ValueError(f"call_per_shard: kernel returned {len(outs)} arrays, out_names names {len(keep)}")
        return tuple(outs)

    out_specs = tuple(spec(out_leaves[i]) for i in keep)
    results = _shard_map(local, mesh, in_specs, out_specs)(*(args[i] for i in present))
    leaves = [None] * len(out_leaves)
    for i, r in zip(keep, results):
        leaves[i] = r
    return jax.tree.unflatten(out_tree, leaves)
