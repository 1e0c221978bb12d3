"""Logical axis names carried by parameters, and the one rules table that maps them to a mesh.

Parameters are annotated with logical names at construction (placement is deferred:
`eager_sharding=False`); training turns the annotations into `NamedSharding`s for a
`(data, fsdp, tensor)` mesh with `logical_to_mesh_sharding`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes); None = replicated. `embed` is the FSDP-sharded dim of
# every large matrix; the per-head / MLP / vocab dims are tensor-parallel.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("sequence", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),       # flattened query heads x head_dim / JetBlock key or value dim
    ("kv_heads", "tensor"),    # flattened KV heads x head_dim
    ("conv_taps", ("tensor", "fsdp")),  # generator output (value dim x taps); no embed dim to fsdp-shard
    ("generator", None),       # dynamic-conv generator bottleneck
    ("head_scalars", None),    # per-head scalars (A_log, dt_bias, beta/decay projections)
    ("norm", None),
    # activations (`constrain`): the residual stream stays batch-sharded on every device
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_vocab", "tensor"),
)

# The mesh a step is traced for (`step_mesh`): `constrain` pins activations to it, and the
# Pallas kernels run per device on it (jet_jax.ops.shard_map_kernel).
_STEP_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar(
    "jet_jax_step_mesh", default=None)


@contextlib.contextmanager
def step_mesh(mesh: Mesh | None):
    """Trace a step inside this context: activations are constrained to `mesh` and kernel
    calls run per device on it."""
    token = _STEP_MESH.set(mesh)
    try:
        yield
    finally:
        _STEP_MESH.reset(token)


def current_step_mesh() -> Mesh | None:
    """The mesh of the enclosing `step_mesh`, or None."""
    return _STEP_MESH.get()


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """Sharding constraint on an activation by logical names (no-op outside `step_mesh`).

    Without it XLA may keep the global batch of an activation on every device (it did: the
    logits of an FSDP-sharded head came out of an all-reduce, [global B, T, V] per device).
    A dim that does not divide its mesh axes is left unconstrained."""
    mesh = _STEP_MESH.get()
    if mesh is None:
        return x
    spec = fitted_spec(x.shape, names, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def partitioned(init, *names: str | None):
    """Wrap an initializer so its parameter carries logical axis `names` (placement deferred)."""
    return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


def logical_param(value, *names: str | None) -> nnx.Param:
    return nnx.Param(value, sharding=tuple(names), eager_sharding=False)


def logical_to_mesh_spec(names: Sequence[str | None] | None,
                         rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
                         mesh: Mesh | None = None) -> PartitionSpec:
    """PartitionSpec for logical `names`; a mesh axis is used at most once per array and
    axes of size 1 (or missing from `mesh`) are dropped."""
    if not names:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in names:
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        axes = table.get(name) if name is not None else None
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if mesh is not None:
            axes = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def fitted_spec(shape: Sequence[int], names: Sequence[str | None] | None, mesh,
                rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES, *,
                trim: bool = False) -> PartitionSpec:
    """PartitionSpec for an array of `shape` [d0, .., dn-1] with logical `names` whose mesh axes
    divide every dim: those of `logical_to_mesh_spec`, except where their product does not
    divide a dim. There the dim is replicated, or with `trim` keeps the longest leading run of
    axes that divides it (the kernels' batch keeps `data` when `fsdp` does not fit).
    `mesh` needs only `.shape` (axis name -> size), so a shape-only stand-in works."""
    spec = tuple(logical_to_mesh_spec(names, rules, mesh))
    out = []
    for dim, axes in zip(shape, spec + (None,) * (len(shape) - len(spec))):
        ax = (axes,) if isinstance(axes, str) else tuple(axes or ())
        while ax and dim % math.prod(mesh.shape[a] for a in ax):
            ax = ax[:-1] if trim else ()
        out.append(None if not ax else ax[0] if len(ax) == 1 else ax)
    return PartitionSpec(*out)


def state_shardings(state, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedSharding pytree for an `nnx.State` (or abstract state) from its logical names.

    A dim whose size does not divide the mesh axes assigned to it is replicated instead.
    """
    def one(var):
        names = var.get_metadata().get("out_sharding") if isinstance(var, nnx.Variable) else None
        shape = getattr(var, "shape", None) or getattr(var.value, "shape", ())
        return NamedSharding(mesh, fitted_spec(shape, names, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def host_array(x) -> np.ndarray:
    """The whole of `x` as a host numpy array, also when it is sharded over several processes
    (then every process gathers it: a collective, all must call)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def place(value, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host array as a `jax.Array` laid out by `sharding`: each device (of every process)
    receives only its own shard, so no device ever holds the whole array."""
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def sharded_init(make: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """`make()` (a module built by random initialisation) with every variable created already
    sharded over `mesh` by its logical axis names (`state_shardings`): the construction runs
    under `jit` with those output shardings, so each device computes and holds only its shard
    (a model larger than one device can be built)."""
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    state = jax.jit(lambda: nnx.split(make())[1], out_shardings=state_shardings(abstract, mesh))()
    return nnx.merge(graphdef, state)


def make_mesh(shape: Sequence[int], axis_names: Sequence[str] = MESH_AXES,
              devices=None) -> Mesh:
    """A `(data, fsdp, tensor)` mesh; `shape` must multiply to the number of devices used."""
    devices = list(devices if devices is not None else jax.devices())
    n = 1
    for s in shape:
        n *= s
    if n != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {n} devices, found {len(devices)}")
    import numpy as np
    return Mesh(np.asarray(devices).reshape(tuple(shape)), tuple(axis_names))
