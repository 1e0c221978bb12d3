"""Multi-host start-up and the device mesh.

`initialize_distributed()` must run before anything touches the devices (`jax.devices()`,
creating arrays). It wraps `jax.distributed.initialize`:

* explicit arguments (or the `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`
  environment variables) -> passed through;
* otherwise, inside a cluster that JAX detects by itself (Cloud TPU pods / GKE TPU slices,
  SLURM with more than one task, Open MPI with more than one rank) -> `initialize()` with no
  arguments lets JAX auto-detect coordinator, process count and id;
* otherwise (a single process: a laptop, CPU tests, one GPU box) -> no-op.

Failure detection: JAX's coordination service aborts every surviving process (SIGABRT, exit
code 134, message "Terminating process because the JAX distributed service detected fatal
errors ... another task died") when a process disappears. A process whose sockets close (killed,
crashed) is noticed within seconds; a host that vanishes silently within
`heartbeat_timeout_seconds` (default here: `DEFAULT_HEARTBEAT_TIMEOUT_S` = 60 s, or the
`JET_JAX_HEARTBEAT_TIMEOUT_S` environment variable; JAX's own default is 100 s). So no
surviving process hangs longer than that in a collective whose peer is gone.

On CPU, cross-process collectives need an implementation; gloo is selected when none is.

`mesh_from_config(shape)` builds the `(data, fsdp, tensor)` mesh, validating that the shape
covers exactly the devices present (one entry may be -1: "whatever is left").

`write_from_process_zero(params, write)`: the one way a multi-process run writes a model:
every process gathers the (sharded) parameters, process 0 writes, the others wait for it.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Callable, Sequence

import jax

from jet_jax.sharding import MESH_AXES, make_mesh

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_TIMEOUT_S = 60


def heartbeat_timeout_s() -> int:
    """Seconds after which a silent peer process is declared dead (see module docstring)."""
    value = os.environ.get("JET_JAX_HEARTBEAT_TIMEOUT_S", "")
    try:
        t = int(value) if value else DEFAULT_HEARTBEAT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"JET_JAX_HEARTBEAT_TIMEOUT_S={value!r} is not an integer number of "
                         "seconds") from None
    if t < 1:
        raise ValueError(f"JET_JAX_HEARTBEAT_TIMEOUT_S must be >= 1, got {t}")
    return t


def _jax_initialize(**kwargs) -> None:
    """`jax.distributed.initialize` with our heartbeat timeout (where this JAX accepts it) and
    gloo CPU collectives (where none are selected)."""
    import inspect
    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "none", ""):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # option renamed/removed: JAX's default applies
        pass
    params = inspect.signature(jax.distributed.initialize).parameters
    if "heartbeat_timeout_seconds" in params:
        kwargs["heartbeat_timeout_seconds"] = heartbeat_timeout_s()
    jax.distributed.initialize(**kwargs)


def _detected_cluster() -> str | None:
    """Name of a multi-process cluster environment JAX would auto-detect, else None."""
    if int(os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", "1")) or 1) > 1:
        return "slurm"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "ompi"
    if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or \
            os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu_pod"
    try:  # JAX's own detectors (private API; absent or changed -> not detected)
        from jax._src import clusters
        for env in clusters.ClusterEnv._cluster_types:
            if getattr(env, "opt_in_only_method", False) or env.__name__ in (
                    "SlurmCluster", "OmpiCluster", "Mpi4pyCluster"):
                continue  # those are handled above (and only when multi-process)
            if env.__name__ in ("GceTpuCluster", "GkeTpuCluster") and env.is_env_present():
                # a TPU VM: only a multi-host slice needs the coordinator
                try:
                    if int(env.get_process_count()) > 1:
                        return "tpu_pod"
                except Exception:  # noqa: BLE001 - metadata server unreachable etc.
                    continue
    except Exception:  # noqa: BLE001
        pass
    return None


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> dict:
    """Start `jax.distributed` when this is a multi-process run; a no-op otherwise.

    Returns {"initialized", "how", "process_index", "process_count", "local_device_count",
    "device_count"}. Calling it again after a successful initialisation is a no-op.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))

    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and \
            not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} is outside [0, {num_processes})")
    how = "already"
    if not jax.distributed.is_initialized():
        if explicit:
            _jax_initialize(coordinator_address=coordinator_address,
                            num_processes=num_processes, process_id=process_id)
            how = "explicit"
        else:
            cluster = _detected_cluster()
            if cluster is None:
                how = "single-process"
            else:
                log.info("multi-process %s environment detected: jax.distributed.initialize()",
                         cluster)
                _jax_initialize()
                how = f"auto:{cluster}"
    return {
        "initialized": jax.distributed.is_initialized(), "how": how,
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "local_device_count": jax.local_device_count(), "device_count": jax.device_count(),
    }


def parse_mesh(text: str | Sequence[int]) -> tuple[int, ...]:
    """'1,256,1' (or a sequence) -> (1, 256, 1)."""
    if isinstance(text, str):
        try:
            return tuple(int(p) for p in text.split(","))
        except ValueError:
            raise ValueError(f"mesh {text!r} is not a comma-separated list of integers "
                             "such as '1,8,1'") from None
    return tuple(int(p) for p in text)


def resolve_mesh_shape(shape: Sequence[int], n_devices: int,
                       axis_names: Sequence[str] = MESH_AXES) -> tuple[int, ...]:
    """Validate `shape` against `n_devices`, filling in a single -1."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(axis_names):
        raise ValueError(f"mesh shape {shape} has {len(shape)} axes but axis names "
                         f"{tuple(axis_names)} have {len(axis_names)}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    bad = [s for s in shape if s == 0 or s < -1]
    if bad:
        raise ValueError(f"mesh shape {shape}: sizes must be positive (or one -1)")
    if -1 in shape:
        rest = math.prod(s for s in shape if s != -1)
        if n_devices % rest:
            raise ValueError(f"mesh shape {shape}: {n_devices} devices are not divisible by "
                             f"the fixed axes' product {rest}")
        shape = tuple(n_devices // rest if s == -1 else s for s in shape)
    if math.prod(shape) != n_devices:
        names = ", ".join(f"{a}={s}" for a, s in zip(axis_names, shape))
        raise ValueError(f"mesh shape {shape} ({names}) needs {math.prod(shape)} devices but "
                         f"{n_devices} are available; make the product equal the device count "
                         "(or use -1 for one axis)")
    return shape


def mesh_from_config(shape: Sequence[int] | str,
                     axis_names: Sequence[str] = MESH_AXES, devices=None):
    """A `jax.sharding.Mesh` of `shape` over all devices (all processes), topology-aware
    where JAX knows the topology (TPU); `shape` must multiply to the device count."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(parse_mesh(shape), len(devices), axis_names)
    ordered = devices
    try:
        from jax.experimental import mesh_utils
        ordered = list(mesh_utils.create_device_mesh(shape, devices=devices).reshape(-1))
    except Exception:  # noqa: BLE001 - unknown topology: keep the given order
        ordered = devices
    return make_mesh(shape, axis_names, devices=ordered)


def write_from_process_zero(params, write: Callable, *, barrier: str):
    """`write(host_params)` once, on process 0; returns what it returns there (None elsewhere).

    params: a pytree of (possibly sharded, possibly spanning processes) arrays. Every process
    must call this (the gather is a collective); the others return after process 0 finished,
    so the written files exist for every process afterwards. `barrier` names the wait."""
    if jax.process_count() == 1:
        return write(jax.device_get(params))
    from jax.experimental import multihost_utils
    params = multihost_utils.process_allgather(params, tiled=True)
    out = write(params) if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(barrier)
    return out
