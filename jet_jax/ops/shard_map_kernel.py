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

from typing import Any, Callable, Sequence

import jax
from jax.sharding import PartitionSpec

from jet_jax.sharding import LOGICAL_AXIS_RULES, current_step_mesh

def _inside_shard_map() -> bool:
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    am = get() if get is not None else None
    return bool(am is not None and not getattr(am, "empty", True) and getattr(am, "manual_axes", ()))


def active_mesh():
    """The mesh kernels are split over, or None (call the kernel directly)."""
    if _inside_shard_map():  # already per device (an outer shard_map): nothing to split
        return None
    mesh = current_step_mesh()
    if mesh is not None:
        return mesh
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    am = get() if get is not None else None
    if am is not None and not getattr(am, "empty", True):
        return am
    return None


def _shard_map(fn, mesh, in_specs, out_specs):
    sm = getattr(jax, "shard_map", None)
    if sm is not None:  # jax >= 0.7 (0.10 here, 0.11 on the GPU machine)
        return sm(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map
    return shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def _axes_for(names_and_dims, mesh, rules) -> dict[str, tuple[str, ...]]:
    """logical name -> mesh axes that divide every dim carrying that name (a mesh axis at most
    once per name; axes of size 1 or absent from the mesh dropped)."""
    table = dict(rules)
    out: dict[str, tuple[str, ...]] = {}
    shape = dict(mesh.shape)
    for name in {n for n, _ in names_and_dims}:
        axes = table.get(name)
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        axes = tuple(a for a in axes if shape.get(a, 1) > 1)
        dims = [d for n, d in names_and_dims if n == name]
        # drop trailing axes until every dim divides (keeps e.g. `data` when `fsdp` does not fit)
        while axes:
            size = 1
            for a in axes:
                size *= shape[a]
            if all(d % size == 0 for d in dims):
                break
            axes = axes[:-1]
        out[name] = axes
    return out


def _spec(names, axes_of) -> PartitionSpec:
    used: set[str] = set()
    out = []
    for n in names:
        ax = tuple(a for a in axes_of.get(n, ()) if a not in used) if n is not None else ()
        used.update(ax)
        out.append(None if not ax else ax[0] if len(ax) == 1 else ax)
    return PartitionSpec(*out)


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
    pairs = [(n, args[i].shape[d]) for i in present for d, n in enumerate(arg_names[i]) if n is not None]
    axes_of = _axes_for(pairs, mesh, rules)
    if not any(axes_of.values()):
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

    in_specs = tuple(_spec(arg_names[i], axes_of) for i in present)
    out_specs = tuple(_spec(out_leaves[i], axes_of) for i in keep)
    results = _shard_map(local, mesh, in_specs, out_specs)(*(args[i] for i in present))
    leaves = [None] * len(out_leaves)
    for i, r in zip(keep, results):
        leaves[i] = r
    return jax.tree.unflatten(out_tree, leaves)
