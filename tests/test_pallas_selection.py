"""`implementation="auto"` runs a Pallas kernel only where pallas_kernels.verified lists it."""
import pytest

jax = pytest.importorskip("jax")
jnp = jax.numpy

from jet_jax.ops import backend as sel  # noqa: E402
from jet_jax.ops.dynamic_conv import dynamic_causal_conv  # noqa: E402
from jet_jax.ops.gated_delta_rule import gated_delta_rule  # noqa: E402
from pallas_kernels import verified  # noqa: E402

KERNELS = ("gated_delta_rule", "dynamic_causal_conv")


def _poison(monkeypatch, names):
    """Make importing any Pallas kernel module fail loudly, so 'auto' selecting one is seen."""
    import importlib
    real = importlib.import_module

    def guarded(name, *a, **k):
        if name in names:
            raise AssertionError(f"auto selected unverified kernel module {name}")
        return real(name, *a, **k)

    monkeypatch.setattr(sel.importlib, "import_module", guarded)


@pytest.mark.parametrize("platform", ["gpu", "cuda", "rocm", "tpu", "cpu"])
def test_auto_never_selects_an_unverified_kernel(monkeypatch, platform):
    monkeypatch.setattr(jax, "default_backend", lambda: platform)
    for op in KERNELS:
        assert verified.verification(op, platform) is None      # the table is empty today
        assert not sel.auto_uses_pallas(op)
        assert sel.select_pallas(op, "pallas_kernels.gdr", "gated_delta_rule_pallas", "auto") is None
    _poison(monkeypatch, {"pallas_kernels.gdr", "pallas_kernels.dynamic_conv"})
    x = jnp.ones((1, 5, 2, 4))
    o, _ = gated_delta_rule(x, x, x, -jnp.ones((1, 5, 2)), jnp.ones((1, 5, 2)) * 0.5)   # runs XLA
    assert o.shape == (1, 5, 2, 4)
    y = dynamic_causal_conv(jnp.ones((1, 5, 3)), jnp.ones((1, 5, 3, 4)))
    assert y.shape == (1, 5, 3)


def test_auto_selects_a_kernel_once_it_is_listed(monkeypatch):
    entry = verified.Verification("gated_delta_rule", "gpu", "NVIDIA H200", "2026-01-01", "0" * 7, 1e-5, "x")
    monkeypatch.setattr(verified, "VERIFIED", (entry,))
    monkeypatch.setattr(jax, "default_backend", lambda: "cuda")
    assert sel.auto_uses_pallas("gated_delta_rule")
    assert not sel.auto_uses_pallas("gated_delta_rule", "tpu")
    assert not sel.auto_uses_pallas("dynamic_causal_conv")
    fn = sel.select_pallas("gated_delta_rule", "pallas_kernels.gdr", "gated_delta_rule_pallas", "auto")
    assert fn is not None and fn.__name__ == "gated_delta_rule_pallas"
