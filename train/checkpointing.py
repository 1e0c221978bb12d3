"""Training checkpoints with Orbax: async, interval, keep-last-N, atomic, restorable on any mesh.

Layout (one Orbax `CheckpointManager` step directory per saved step)::

    <directory>/<step>/state/   train_state arrays (`ocp.args.StandardSave`, OCDBT/zarr)
    <directory>/<step>/data/    the data-iterator state (`ocp.args.JsonSave`)
    <directory>/<step>/meta/    {"format", "step", "config_fingerprint", "extra"} (`JsonSave`)

Atomicity is Orbax's: a step is written into `<step>.orbax-checkpoint-tmp` and renamed to
`<step>` only once every item is on disk (the rename is the commit; each item also gets a
`commit_success.txt`). A process killed mid-save therefore leaves at most a `*.orbax-checkpoint-tmp`
directory that `latest_step()` ignores; the next save of that step replaces it (Orbax removes
an unfinalized tmp directory of the same step before writing).

Errors (`CheckpointError`) never modify the directory: `latest_step` and `restore` only read,
the Orbax manager used for saving is created on the first save, nothing is cleaned up on
construction (`cleanup_tmp_directories=False`), and inputs are validated before a save starts.

nnx state
---------
Orbax saves pytrees of arrays. Convert an `nnx.State` with `state_to_pytree(state)`
(= `nnx.to_pure_dict`) before saving and put restored values back with
`pytree_into_state(state, tree)` (= `nnx.replace_by_pure_dict`, in place). For the restore
target build the same pure dict of `jax.ShapeDtypeStruct`s carrying the shardings you want,
e.g. `abstract_pytree(nnx.state(abstract_model, nnx.Param), mesh)`; restoring onto a
different mesh (or a single device) is just a different set of shardings in that target.

Several processes (a pod): every process calls `maybe_save` / `restore` at the same steps;
Orbax writes each process's array shards, and the JSON items are written by process 0. The
data states of the processes differ (each reads its own input shards), so `maybe_save`
gathers them and stores their union (`merge_process_states`: nested dicts merged key by key;
the shard-keyed states of jet_jax_train.data.pipeline never collide, identical values are kept once,
conflicting values are an error naming the key). Every process restores the union and picks
its part, on any process count.

Async saves: `maybe_save` returns once the arrays are copied to host memory; the writes run in a
background thread. The caller may then donate/overwrite the device buffers. Call `wait()`
before reading a just-saved step from another process and `close()` at the end of training.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

FORMAT_VERSION = 1

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be saved or restored; the message names the step and the problem."""


# --------------------------------------------------------------------------- nnx helpers
def state_to_pytree(state) -> dict:
    """An `nnx.State` (or anything `nnx.to_pure_dict` accepts) as a pure nested dict."""
    from flax import nnx
    return nnx.to_pure_dict(state)


def pytree_into_state(state, tree):
    """Write the pure-dict `tree` back into the `nnx.State` `state` (in place); returns `state`."""
    from flax import nnx
    nnx.replace_by_pure_dict(state, tree)
    return state


def abstract_pytree(state, mesh=None, shardings=None) -> Any:
    """A pure dict of `jax.ShapeDtypeStruct`s (with shardings) for an `nnx.State` of arrays or of
    abstract values: the restore target. Shardings come from `shardings` (a matching pytree of
    `Sharding`s) or, given a `mesh`, from the parameters' logical axis names
    (`jet_jax.sharding.state_shardings`)."""
    from flax import nnx
    if shardings is None:
        if mesh is None:
            raise ValueError("abstract_pytree needs a mesh or explicit shardings")
        from jet_jax.sharding import state_shardings
        shardings = state_shardings(state, mesh)
    values = nnx.to_pure_dict(state)
    if isinstance(shardings, nnx.State):
        shardings = nnx.to_pure_dict(shardings)
    return jax.tree.map(
        lambda v, s: jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=s), values, shardings)


def with_sharding(tree, sharding) -> Any:
    """`tree` (arrays or ShapeDtypeStructs) as ShapeDtypeStructs that all carry `sharding`
    (e.g. a replicated `NamedSharding(mesh, P())` for the rng key and step)."""
    return jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(np.shape(v), getattr(v, "dtype", np.asarray(v).dtype),
                                       sharding=sharding), tree)


# --------------------------------------------------------------------------- helpers
def _path_str(path) -> str:
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(str(k.name))
        else:
            parts.append(str(k))
    return ".".join(parts) or "<root>"


def _json_normal(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what} is not JSON-serialisable: {e}") from None


def _flatten_json(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten_json(v, f"{prefix}.{k}" if prefix else str(k)))
        if not obj and prefix:
            out[prefix] = {}
        return out
    return {prefix or "<root>": obj}


def fingerprint_diff(saved: Mapping | None, current: Mapping | None) -> list[str]:
    """Human-readable differences between two JSON config fingerprints (dotted keys)."""
    a, b = _flatten_json(saved or {}), _flatten_json(current or {})
    diffs = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            diffs.append(f"{k}: missing in checkpoint, current {b[k]!r}")
        elif k not in b:
            diffs.append(f"{k}: checkpoint {a[k]!r}, missing in current config")
        elif a[k] != b[k]:
            diffs.append(f"{k}: checkpoint {a[k]!r} != current {b[k]!r}")
    return diffs


def _short(e: BaseException, limit: int = 600) -> str:
    msg = f"{type(e).__name__}: {e}".strip()
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[:limit] + " ..."


def _stored_shape(leaf):
    """Shape as stored: typed PRNG keys are stored as their key data (extra trailing dims)."""
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is not None and dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return jax.eval_shape(jax.random.key_data,
                              jax.ShapeDtypeStruct(shape, dtype)).shape
    return shape


# --------------------------------------------------------------------------- processes
def merge_process_states(states: list, where: str = "data_state") -> Any:
    """Union of per-process JSON states: dicts merged key by key, equal leaves kept once."""
    def merge(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(out[k], v, f"{path}.{k}") if k in out else v
            return out
        if a != b:
            raise CheckpointError(f"{path} differs between processes ({a!r} vs {b!r}) and cannot "
                                  "be merged; per-process state must be keyed by what it covers "
                                  "(e.g. the input shard)")
        return a
    out = states[0]
    for s in states[1:]:
        out = merge(out, s, where)
    return out


def gather_process_states(state: Any) -> list:
    """Every process's JSON-able `state`, in process order (a collective: all must call)."""
    if jax.process_count() == 1:
        return [state]
    from jax.experimental import multihost_utils
    raw = np.frombuffer(json.dumps(state, sort_keys=True).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(raw.size))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded))
    rows = rows.reshape(len(lengths), -1)
    return [json.loads(bytes(r[:n]).decode()) for r, n in zip(rows, lengths)]


# --------------------------------------------------------------------------- checkpointer
def _item_handlers() -> dict:
    import orbax.checkpoint as ocp
    return {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler()}


class TrainCheckpointer:
    """Saves `(train_state, data_state, extra)` every `save_interval_steps` steps, keeps the last
    `max_to_keep`, and restores the latest complete step onto the shardings you ask for."""

    def __init__(self, directory: str | os.PathLike, *, save_interval_steps: int,
                 max_to_keep: int = 3, async_save: bool = True,
                 config_fingerprint: dict | None = None):
        if int(save_interval_steps) < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
        if max_to_keep is not None and int(max_to_keep) < 1:
            raise ValueError(f"max_to_keep must be >= 1 (or None to keep all), got {max_to_keep}")
        self.directory = Path(directory).absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint path {self.directory} exists and is not a directory")
        self.save_interval_steps = int(save_interval_steps)
        self.max_to_keep = None if max_to_keep is None else int(max_to_keep)
        self.async_save = bool(async_save)
        self.config_fingerprint = (None if config_fingerprint is None else
                                   _json_normal(dict(config_fingerprint), "config_fingerprint"))
        self._mngr = None  # created on the first save: construction and restore never write

    # ---- orbax managers
    def _options(self, read_only: bool):
        import orbax.checkpoint as ocp
        if read_only:
            return ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                enable_async_checkpointing=False)
        policies = ocp.checkpoint_managers
        return ocp.CheckpointManagerOptions(
            save_decision_policy=policies.FixedIntervalPolicy(self.save_interval_steps),
            preservation_policy=(policies.LatestN(self.max_to_keep) if self.max_to_keep
                                 else None),
            enable_async_checkpointing=self.async_save,
            cleanup_tmp_directories=False, create=True)

    def _saver(self):
        if self._mngr is None:
            import orbax.checkpoint as ocp
            self._mngr = ocp.CheckpointManager(self.directory, options=self._options(False),
                                               item_handlers=_item_handlers())
        return self._mngr

    def _reader(self):
        import orbax.checkpoint as ocp
        # read_only logs a few absl warnings about the options it overrides; harmless.
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)
        try:
            return ocp.CheckpointManager(self.directory, options=self._options(True),
                                         item_handlers=_item_handlers())
        finally:
            absl_logger.setLevel(level)

    # ---- queries
    def all_steps(self) -> list[int]:
        """Complete (committed) steps on disk, ascending. In-flight async saves are not listed."""
        import orbax.checkpoint as ocp
        if not self.directory.is_dir():
            return []
        return sorted(ocp.utils.checkpoint_steps(self.directory))

    def latest_step(self) -> int | None:
        """The last COMPLETE checkpoint (an interrupted save's tmp directory is ignored)."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ---- save
    def maybe_save(self, step: int, train_state, *, data_state: dict,
                   extra: dict | None = None, force: bool = False) -> bool:
        """Start an (async) save of `step` if it is on the save interval (or `force`).

        Returns True when a save was started. A step that is already saved (or older than the
        newest saved step) is skipped. Inputs are validated before anything is written.
        """
        import orbax.checkpoint as ocp
        step = int(step)
        if step < 0:
            raise CheckpointError(f"step must be >= 0, got {step}")
        data = _json_normal(dict(data_state), f"data_state of step {step}")
        meta = {
            "format": FORMAT_VERSION, "step": step,
            "config_fingerprint": self.config_fingerprint,
            "extra": _json_normal(dict(extra or {}), f"extra of step {step}"),
        }
        bad = [_path_str(p) for p, leaf in jax.tree_util.tree_leaves_with_path(train_state)
               if isinstance(leaf, jax.ShapeDtypeStruct)]
        if bad:
            raise CheckpointError(f"train_state of step {step} has abstract (ShapeDtypeStruct) "
                                  f"leaves, not arrays: {bad[:5]}")
        mngr = self._saver()
        if not force and not mngr.should_save(step):
            return False
        latest = mngr.latest_step()
        if latest is not None and step <= latest:
            log.warning("checkpoint step %d not saved: step %d is already saved in %s",
                        step, latest, self.directory)
            return False
        if jax.process_count() > 1:
            data = merge_process_states(gather_process_states(data), f"data_state of step {step}")
        saved = mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(train_state),
            data=ocp.args.JsonSave(data),
            meta=ocp.args.JsonSave(meta)), force=force)
        return bool(saved)

    def wait(self) -> None:
        """Block until in-flight async saves are committed."""
        if self._mngr is not None:
            self._mngr.wait_until_finished()

    def close(self) -> None:
        if self._mngr is not None:
            self._mngr.wait_until_finished()
            self._mngr.close()
            self._mngr = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- restore
    def read_meta(self, step: int | None = None) -> tuple[int, dict, dict]:
        """(step, meta dict, data_state) of a complete step, without touching arrays."""
        import orbax.checkpoint as ocp
        step = self._resolve_step(step)
        try:
            got = self._reader().restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - reported with the step and the cause
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} is unreadable: its metadata/data "
                f"state is missing or corrupt ({_short(e)})") from e
        meta, data = got["meta"], got["data"]
        if not isinstance(meta, dict) or "format" not in meta:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} has no valid "
                                  f"'meta' item (got {type(meta).__name__})")
        if not isinstance(data, dict):
            raise CheckpointError(f"checkpoint step {step} in {self.directory} has no valid "
                                  f"'data' item (got {type(data).__name__})")
        return step, meta, data

    def _resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"no complete checkpoint in {self.directory}")
            return steps[-1]
        step = int(step)
        if step not in steps:
            raise CheckpointError(f"checkpoint step {step} not found (or incomplete) in "
                                  f"{self.directory}; complete steps: {steps}")
        return step

    def restore(self, abstract_train_state, step: int | None = None):
        """Restore `(train_state, data_state, extra)` of `step` (default: the latest complete).

        `abstract_train_state` is a pytree of `jax.ShapeDtypeStruct` (or arrays) whose
        `.sharding` says where each restored array goes - any mesh, not necessarily the one it
        was saved from. Dtypes are cast to the target's. Raises `CheckpointError` (directory
        untouched) on a config-fingerprint mismatch, a structure or shape mismatch, or a
        missing/corrupt file.
        """
        import orbax.checkpoint as ocp
        self.wait()  # a save of ours still in flight is not on disk yet
        step, meta, data = self.read_meta(step)
        where = f"checkpoint step {step} in {self.directory}"
        saved_fp = meta.get("config_fingerprint")
        if self.config_fingerprint is not None and saved_fp is not None:
            diffs = fingerprint_diff(saved_fp, self.config_fingerprint)
            if diffs:
                raise CheckpointError(f"{where} was saved with a different config; differing "
                                      "keys:\n  " + "\n  ".join(diffs))
        elif self.config_fingerprint is not None:
            log.warning("%s carries no config fingerprint; not checked", where)

        target = self._target(abstract_train_state, where)
        reader = self._reader()
        self._check_against_metadata(reader, step, target, where)
        try:
            got = reader.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target)))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{where}: array files are missing or corrupt "
                                  f"(reading the arrays failed: {_short(e)})") from e
        return got["state"], data, meta.get("extra") or {}

    @staticmethod
    def _target(abstract, where: str):
        missing = []

        def one(path, leaf):
            if isinstance(leaf, jax.Array):
                return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
            if isinstance(leaf, jax.ShapeDtypeStruct):
                if leaf.sharding is None:
                    missing.append(_path_str(path))
                return leaf
            return leaf

        target = jax.tree_util.tree_map_with_path(one, abstract)
        if missing:
            raise CheckpointError(
                f"restore target for {where} has leaves without a sharding: {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''}; give every jax.ShapeDtypeStruct a "
                "sharding (see with_sharding / abstract_pytree)")
        return target

    @staticmethod
    def _check_against_metadata(reader, step: int, target, where: str) -> None:
        try:
            md = reader.item_metadata(step)["state"]
            tree = md.tree if hasattr(md, "tree") else md
            if tree is None:
                raise ValueError("no array metadata")
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{where}: array files are missing or corrupt "
                                  f"(reading the array metadata failed: {_short(e)})") from e
        saved = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}
        wanted = {_path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(target)}
        problems = []
        missing = sorted(set(wanted) - set(saved))
        extra = sorted(set(saved) - set(wanted))
        if missing:
            problems.append(f"not in the checkpoint: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if extra:
            problems.append(f"in the checkpoint but not in the target: {extra[:10]}"
                            f"{' ...' if len(extra) > 10 else ''}")
        for name in sorted(set(saved) & set(wanted)):
            s_shape = getattr(saved[name], "shape", None)
            w_shape = _stored_shape(wanted[name])
            if s_shape is not None and w_shape is not None and tuple(s_shape) != tuple(w_shape):
                problems.append(f"shape mismatch for {name!r}: checkpoint {tuple(s_shape)}, "
                                f"target {tuple(w_shape)}")
        if problems:
            raise CheckpointError(f"{where} does not match the restore target:\n  "
                                  + "\n  ".join(problems))
