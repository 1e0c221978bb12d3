"""Test-wide settings: 8 fake CPU devices (set before jax is imported) for the mesh tests."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
