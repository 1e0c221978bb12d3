"""Test-wide settings: 8 fake CPU devices (set before jax is imported) for the mesh tests, and
one XLA compilation cache for the session."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Many tests compile the same small programs (a tiny model's train or decode step), in this
# process, in the xdist workers and in the runs they start as subprocesses; all of them
# inherit this cache, so each program is compiled once per session. XLA's cache key covers
# the program, the compile options and the XLA flags (device count), so nothing is shared
# that should not be. Removed by the process that made it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jet-jax-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import pytest  # noqa: E402  (after the environment above)


@pytest.fixture
def kernel_calls(monkeypatch):
    """{"attention": [...], "gdr": [...], "conv": [...]}: the `implementation=` every
    attention, gated-delta-rule and dynamic-conv call of the model's layers asks for, in call
    order (each call still runs)."""
    import jet_jax.layers.attention as attention_layer
    import jet_jax.layers.jet_block as jet_block

    seen = {"attention": [], "gdr": [], "conv": []}

    def wrap(module, name, key):
        fn = getattr(module, name)

        def spy(*args, implementation="auto", **kw):
            seen[key].append(implementation)
            return fn(*args, implementation=implementation, **kw)
        monkeypatch.setattr(module, name, spy)

    wrap(attention_layer, "dot_product_attention", "attention")
    wrap(jet_block, "gated_delta_rule", "gdr")
    wrap(jet_block, "dynamic_causal_conv", "conv")
    return seen
