"""One process of a multi-process checkpoint round trip (tests/test_multiprocess.py).

    python -m tests.multiprocess_checkpoint_worker save|restore <directory> <mesh> <seed>

Run under jet_jax_train.launch.spawn (JAX_* variables set) or in-process via `save` / `restore`.
The saved tree is a known function of `seed`, so a restore on any process count and mesh can
be checked shard by shard against numpy.
"""

from __future__ import annotations

import json
import sys

import numpy as np

STEP = 7


def expected(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"params": {"w": rng.standard_normal((16, 8)).astype(np.float32),
                       "b": rng.standard_normal((8,)).astype(np.float32)},
            "opt_state": {"mu": rng.standard_normal((16, 8)).astype(np.float32)},
            "step": np.int32(seed)}


def _shardings(mesh):
    from jax.sharding import NamedSharding, PartitionSpec as P
    w = NamedSharding(mesh, P(("data", "fsdp"), "tensor"))
    return {"params": {"w": w, "b": NamedSharding(mesh, P("tensor"))},
            "opt_state": {"mu": w}, "step": NamedSharding(mesh, P())}


def save(directory: str, mesh, seed: int) -> None:
    import jax

    from jet_jax_train.checkpointing import TrainCheckpointer
    tree = jax.tree.map(lambda x, s: jax.make_array_from_callback(
        np.shape(x), s, lambda idx, x=x: np.asarray(x)[idx]), expected(seed), _shardings(mesh))
    # per-process data state, keyed by the input shard this process reads
    pi, pc = jax.process_index(), jax.process_count()
    data = {"iterator": {"num_shards": pc, "shards": {str(pi): {"position": 10 * pi + seed}}}}
    with TrainCheckpointer(directory, save_interval_steps=1, async_save=True) as ckpt:
        assert ckpt.maybe_save(STEP, tree, data_state=data, force=True)


def restore(directory: str, mesh, seed: int) -> dict:
    """Restores and checks every addressable shard; returns the data state."""
    import jax

    from jet_jax_train.checkpointing import TrainCheckpointer
    want = expected(seed)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                            sharding=s), want, _shardings(mesh))
    state, data, _ = TrainCheckpointer(directory, save_interval_steps=1).restore(target)
    for got, exp, sh in zip(jax.tree.leaves(state), jax.tree.leaves(want),
                            jax.tree.leaves(_shardings(mesh))):
        assert got.sharding == sh, (got.sharding, sh)
        for shard in got.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(exp)[shard.index])
    return data


def main(argv: list[str]) -> int:
    mode, directory, mesh_text, seed = argv
    from jet_jax_train.distributed import initialize_distributed, mesh_from_config
    initialize_distributed()
    import jax
    mesh = mesh_from_config(mesh_text)
    out = {"process": jax.process_index(), "processes": jax.process_count()}
    if mode == "save":
        save(directory, mesh, int(seed))
    else:
        out["data"] = restore(directory, mesh, int(seed))
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
