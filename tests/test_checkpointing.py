"""TrainCheckpointer: bitwise round trip, interval, keep-last-N, restore onto other meshes,
interrupted saves (a real SIGKILL mid-save), and clear errors that leave the directory untouched."""

import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from jet_jax.sharding import make_mesh, partitioned, state_shardings
from jet_jax_train.checkpointing import (CheckpointError, TrainCheckpointer, abstract_pytree,
                                 pytree_into_state, state_to_pytree, with_sharding)

REPO = Path(__file__).resolve().parents[1]
# orbax/tensorstore may log "Event loop is closed" from a background thread after a failed read
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def tree_hash(root) -> str:
    """Hash of every path (files and directories) and file content under `root`."""
    h = hashlib.sha256()
    root = Path(root)
    if not root.exists():
        return "absent"
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        h.update(b"D" + os.path.relpath(dirpath, root).encode())
        for f in sorted(filenames):
            p = Path(dirpath) / f
            h.update(b"F" + str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


class Tiny(nnx.Module):
    """Two layers with logical axis names (an nnx.List gives int keys in the pure dict)."""

    def __init__(self, rngs):
        init = partitioned(nnx.initializers.normal(0.02), "embed", "mlp")
        self.layers = nnx.List([nnx.Linear(16, 32, kernel_init=init, rngs=rngs,
                                           param_dtype=jnp.bfloat16) for _ in range(2)])
        self.norm = nnx.Param(jnp.ones((16,), jnp.float32))


def make_state(mesh, seed=0):
    """A realistic train state: nnx params (bf16 + f32), AdamW state, rng key data, step."""
    model = Tiny(nnx.Rngs(seed))
    params = nnx.state(model, nnx.Param)
    shard = nnx.to_pure_dict(state_shardings(params, mesh))
    pure = jax.device_put(state_to_pytree(params), shard)
    pure = jax.tree.map(lambda x: x + jnp.asarray(seed, x.dtype), pure)
    opt = optax.adamw(1e-3)
    opt_state = opt.init(pure)
    # make the moments non-trivial so a round trip is a real check
    opt_state = jax.tree.map(lambda x: x + 0.5 if x.dtype != jnp.int32 else x + 7, opt_state)
    ts = {"params": pure, "opt_state": opt_state,
          "rng": jax.random.key_data(jax.random.key(seed + 1)), "step": jnp.int32(seed)}
    return model, params, opt, ts


def abstract_state(params, opt, mesh):
    rep = NamedSharding(mesh, P())
    ap = abstract_pytree(params, mesh)
    aos = jax.eval_shape(opt.init, ap)
    # moments follow the parameters' shardings, scalars (count) are replicated
    aos = (aos[0]._replace(count=with_sharding(aos[0].count, rep), mu=ap, nu=ap),) + tuple(aos[1:])
    return {"params": ap, "opt_state": aos,
            "rng": jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)}


def assert_bitwise_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.fixture(scope="module")
def mesh8():
    return make_mesh((1, 8, 1))


def test_round_trip_bitwise_with_data_state_extra_and_nnx(tmp_path, mesh8):
    model, params, opt, ts = make_state(mesh8, seed=3)
    fp = {"hidden_size": 16, "layer_types": ["attn", "jet"]}
    ck = TrainCheckpointer(tmp_path / "ck", save_interval_steps=10, config_fingerprint=fp)
    assert ck.latest_step() is None
    data_state = {"shard": 2, "pos": [1, 2, 3], "name": "mix-a"}
    assert ck.maybe_save(20, ts, data_state=data_state, extra={"loss": 1.25, "tokens": 123})
    ck.wait()
    assert ck.latest_step() == 20
    got, data, extra = ck.restore(abstract_state(params, opt, mesh8))
    assert_bitwise_equal(got, ts)
    assert data == data_state and extra == {"loss": 1.25, "tokens": 123}
    # shardings are the requested ones
    for x, want in zip(jax.tree.leaves(got["params"]),
                       jax.tree.leaves(abstract_pytree(params, mesh8))):
        assert x.sharding.is_equivalent_to(want.sharding, x.ndim)
    # put back into a fresh nnx model
    other = Tiny(nnx.Rngs(99))
    st = nnx.state(other, nnx.Param)
    pytree_into_state(st, got["params"])
    nnx.update(other, st)
    np.testing.assert_array_equal(np.asarray(other.layers[1].kernel[...]),
                                  np.asarray(ts["params"]["layers"][1]["kernel"]))
    # a second checkpointer (a new process after a restart) sees the same thing
    ck.close()
    ck2 = TrainCheckpointer(tmp_path / "ck", save_interval_steps=10, config_fingerprint=fp)
    assert ck2.latest_step() == 20
    assert_bitwise_equal(ck2.restore(abstract_state(params, opt, mesh8))[0], ts)


def test_interval_keep_last_n_and_force(tmp_path):
    ts = {"w": jnp.arange(6.0), "step": jnp.int32(0)}
    ck = TrainCheckpointer(tmp_path / "ck", save_interval_steps=3, max_to_keep=2)
    started = [s for s in range(11)
               if ck.maybe_save(s, {**ts, "step": jnp.int32(s)}, data_state={"s": s})]
    assert started == [0, 3, 6, 9]
    ck.wait()
    assert ck.all_steps() == [6, 9]
    assert ck.maybe_save(10, ts, data_state={"s": 10}, force=True)  # off-interval, forced
    assert not ck.maybe_save(9, ts, data_state={}, force=True)  # already saved: skipped
    ck.wait()
    assert ck.all_steps() == [9, 10]
    rep = SingleDeviceSharding(jax.devices()[0])
    got, data, _ = ck.restore(with_sharding(ts, rep), step=9)
    assert int(got["step"]) == 9 and data == {"s": 9}
    assert ck.restore(with_sharding(ts, rep))[1] == {"s": 10}  # default: latest
    ck.close()


def test_restore_onto_other_meshes(tmp_path):
    mesh8 = jax.make_mesh((8,), ("fsdp",))
    x = jnp.arange(16 * 24, dtype=jnp.float32).reshape(16, 24)
    ts = {"a": jax.device_put(x, NamedSharding(mesh8, P("fsdp", None))),
          "b": jax.device_put(x.T.astype(jnp.bfloat16), NamedSharding(mesh8, P(None, "fsdp")))}
    ck = TrainCheckpointer(tmp_path / "ck", save_interval_steps=1, async_save=False)
    assert ck.maybe_save(1, ts, data_state={})
    mesh24 = make_mesh((2, 4), ("data", "fsdp"))
    targets = {
        "2x4": {"a": NamedSharding(mesh24, P("data", "fsdp")),
                "b": NamedSharding(mesh24, P("fsdp", None))},
        "1dev": {"a": SingleDeviceSharding(jax.devices()[3]),
                 "b": SingleDeviceSharding(jax.devices()[3])},
    }
    for name, shardings in targets.items():
        target = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                              ts, shardings)
        got = ck.restore(target)[0]
        for k in ts:
            assert got[k].sharding == shardings[k], name
            assert np.asarray(got[k]).tobytes() == np.asarray(ts[k]).tobytes(), name
    assert len(targets["2x4"]["a"].shard_shape((16, 24))) == 2
    assert got["a"].addressable_shards[0].data.shape == (16, 24)  # 1 device holds it all
    ck.close()


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity
    from jet_jax_train.checkpointing import TrainCheckpointer
    ck = TrainCheckpointer(sys.argv[1], save_interval_steps=1)
    ck.maybe_save(1, {"w": jnp.full((256, 256), 1.0)}, data_state={"s": 1})
    ck.wait()
    async def die(self, *a, **k):  # the process dies after writing, before the commit rename
        os.kill(os.getpid(), signal.SIGKILL)
    atomicity.AtomicRenameTemporaryPath.finalize = die
    atomicity.CommitFileTemporaryPath.finalize = die
    ck.maybe_save(2, {"w": jnp.full((256, 256), 2.0)}, data_state={"s": 2})
    ck.wait()
    print("NOT KILLED")
""")


def test_interrupted_save_keeps_previous_checkpoint(tmp_path):
    d = tmp_path / "ck"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(d)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-2000:]
    leftovers = [p.name for p in d.iterdir()]
    assert "1" in leftovers and "2" not in leftovers
    assert any(n.startswith("2") and "tmp" in n for n in leftovers), leftovers
    before = tree_hash(d)
    ck = TrainCheckpointer(d, save_interval_steps=1)
    assert ck.latest_step() == 1
    rep = SingleDeviceSharding(jax.devices()[0])
    got, data, _ = ck.restore({"w": jax.ShapeDtypeStruct((256, 256), jnp.float32, sharding=rep)})
    assert float(got["w"][0, 0]) == 1.0 and data == {"s": 1}
    with pytest.raises(CheckpointError, match="step 2 not found"):
        ck.restore({"w": jax.ShapeDtypeStruct((256, 256), jnp.float32, sharding=rep)}, step=2)
    assert tree_hash(d) == before  # reading never touched the directory
    # resuming training re-saves step 2 over the interrupted attempt
    assert ck.maybe_save(2, {"w": jnp.full((256, 256), 2.0)}, data_state={"s": 2})
    ck.wait()
    assert ck.all_steps() == [1, 2]
    assert float(ck.restore({"w": jax.ShapeDtypeStruct((256, 256), jnp.float32,
                                                       sharding=rep)})[0]["w"][5, 5]) == 2.0
    ck.close()


# ----------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("saved") / "ck"
    mesh = jax.make_mesh((8,), ("fsdp",))
    ts = {"params": {"w": jax.device_put(jnp.arange(64.0).reshape(16, 4),
                                         NamedSharding(mesh, P("fsdp"))),
                     "b": jnp.ones((3,), jnp.bfloat16)},
          "step": jnp.int32(5)}
    ck = TrainCheckpointer(d, save_interval_steps=5, config_fingerprint={"hidden": 64,
                                                                        "jet": {"heads": 2}})
    assert ck.maybe_save(5, ts, data_state={"pos": 7}, extra={"loss": 2.0})
    ck.close()
    return d, ts


def _target(ts, w_shape=None):
    rep = SingleDeviceSharding(jax.devices()[0])
    t = with_sharding(ts, rep)
    if w_shape:
        t["params"]["w"] = jax.ShapeDtypeStruct(w_shape, jnp.float32, sharding=rep)
    return t


def _copy(saved_dir, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(saved_dir[0], d)
    return d


def _expect_error(d, target, match, fingerprint=None):
    before = tree_hash(d)
    ck = TrainCheckpointer(d, save_interval_steps=5,
                           config_fingerprint=fingerprint or {"hidden": 64, "jet": {"heads": 2}})
    with pytest.raises(CheckpointError, match=match) as e:
        ck.restore(target)
    ck.close()
    assert tree_hash(d) == before, "a failed restore modified the checkpoint directory"
    return str(e.value)


def test_config_mismatch_names_keys(saved_dir, tmp_path):
    d = _copy(saved_dir, tmp_path)
    msg = _expect_error(d, _target(saved_dir[1]), "different config",
                        fingerprint={"hidden": 128, "jet": {"heads": 2}, "vocab": 9})
    assert "hidden: checkpoint 64 != current 128" in msg
    assert "vocab: missing in checkpoint" in msg and "jet.heads" not in msg
    assert "step 5" in msg


def test_wrong_shape_names_parameter_and_shapes(saved_dir, tmp_path):
    d = _copy(saved_dir, tmp_path)
    msg = _expect_error(d, _target(saved_dir[1], w_shape=(16, 8)), "shape mismatch")
    assert "'params.w': checkpoint (16, 4), target (16, 8)" in msg


def test_structure_mismatch(saved_dir, tmp_path):
    d = _copy(saved_dir, tmp_path)
    t = _target(saved_dir[1])
    t["params"]["extra_bias"] = t["params"]["b"]
    del t["step"]
    msg = _expect_error(d, t, "does not match the restore target")
    assert "params.extra_bias" in msg and "'step'" in msg


def _array_files(d):
    files = [f for f in glob.glob(str(d / "5" / "state" / "**" / "d" / "*"), recursive=True)
             if os.path.isfile(f)]
    assert files
    return files


def test_missing_array_file(saved_dir, tmp_path):
    d = _copy(saved_dir, tmp_path)
    for f in _array_files(d):
        os.remove(f)
    _expect_error(d, _target(saved_dir[1]), r"step 5 .*array files are missing or corrupt")


def test_truncated_array_file(saved_dir, tmp_path):
    d = _copy(saved_dir, tmp_path)
    for f in _array_files(d):
        os.truncate(f, os.path.getsize(f) // 2)
    _expect_error(d, _target(saved_dir[1]), r"step 5 .*array files are missing or corrupt")


def test_missing_array_metadata(saved_dir, tmp_path):
    d = _copy(saved_dir, tmp_path)
    os.remove(d / "5" / "state" / "_METADATA")
    _expect_error(d, _target(saved_dir[1]), r"step 5 .*array files are missing or corrupt")


def test_corrupt_json_items(saved_dir, tmp_path):
    d = _copy(saved_dir, tmp_path)
    (d / "5" / "meta" / "metadata").write_text("{not json")
    _expect_error(d, _target(saved_dir[1]), r"step 5 .*unreadable")
    d2 = tmp_path / "ck2"
    shutil.copytree(saved_dir[0], d2)
    os.remove(d2 / "5" / "data" / "metadata")
    _expect_error(d2, _target(saved_dir[1]), r"step 5 .*unreadable")


def test_missing_sharding_and_missing_checkpoint(saved_dir, tmp_path):
    d = _copy(saved_dir, tmp_path)
    t = _target(saved_dir[1])
    t["params"]["w"] = jax.ShapeDtypeStruct((16, 4), jnp.float32)
    _expect_error(d, t, r"without a sharding: \['params.w'\]")
    ck = TrainCheckpointer(d, save_interval_steps=5)
    before = tree_hash(d)
    with pytest.raises(CheckpointError, match=r"step 9 not found .* complete steps: \[5\]"):
        ck.restore(_target(saved_dir[1]), step=9)
    assert tree_hash(d) == before
    nowhere = tmp_path / "typo"
    ck = TrainCheckpointer(nowhere, save_interval_steps=5)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ck.restore(_target(saved_dir[1]))
    assert ck.latest_step() is None and not nowhere.exists()


def test_bad_save_inputs_write_nothing(tmp_path):
    d = tmp_path / "ck"
    ck = TrainCheckpointer(d, save_interval_steps=1)
    with pytest.raises(CheckpointError, match="data_state of step 1 is not JSON"):
        ck.maybe_save(1, {"w": jnp.ones(3)}, data_state={"it": object()})
    with pytest.raises(CheckpointError, match="abstract"):
        ck.maybe_save(1, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}, data_state={})
    assert not d.exists()
    with pytest.raises(ValueError, match="save_interval_steps"):
        TrainCheckpointer(d, save_interval_steps=0)


def test_typed_prng_key_and_python_scalars(tmp_path):
    rep = SingleDeviceSharding(jax.devices()[0])
    key = jax.random.key(42)
    ts = {"rng": key, "w": jnp.arange(3.0), "epoch": 7}
    ck = TrainCheckpointer(tmp_path / "ck", save_interval_steps=1, async_save=False)
    assert ck.maybe_save(1, ts, data_state={})
    target = {"rng": jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep),
              "w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=rep), "epoch": 0}
    got = ck.restore(target)[0]
    assert got["rng"].dtype == key.dtype
    np.testing.assert_array_equal(jax.random.key_data(got["rng"]), jax.random.key_data(key))
    assert got["epoch"] == 7
    ck.close()
