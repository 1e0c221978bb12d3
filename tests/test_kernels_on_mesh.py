"""Pallas kernels under a (data, fsdp, tensor) mesh run per device (shard_map), not on
gathered operands: the sharded distill step's compiled HLO has no all-gather to the global
batch and none inside a kernel op, the kernels see per-device shapes, and the wrapped kernels
equal the unwrapped ones.

Kernels run in the Pallas interpreter on the 8 fake CPU devices (tests/conftest.py)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jet_jax.ops.attention as attn_op
import jet_jax.ops.shard_map_kernel as smk
import pallas_kernels.dynamic_conv as pconv
import pallas_kernels.gdr as pgdr
import jet_jax_train.train_step as train_step
from jet_jax_configs.presets import TINY_QWEN2
from jet_jax.config import JetBlockConfig, hybrid_layer_types
from jet_jax.layers.attention import Attention
from jet_jax.layers.jet_block import JetBlock
from jet_jax.model import JetNemotronForCausalLM
from jet_jax.ops.attention import dot_product_attention
from jet_jax.ops.dynamic_conv import dynamic_causal_conv
from jet_jax.ops.gated_delta_rule import gated_delta_rule
from jet_jax.sharding import make_mesh, step_mesh
from jet_jax_train.config import LossSection, OptimizerSection
from jet_jax_train.flat_model import FlatModel
from jet_jax_train.student import student_from_teacher

JET = JetBlockConfig(num_heads=4, head_dim=16, expand_v=1.0, conv_size=4, dconv_generator_reduction=8)
LAYERS = hybrid_layer_types(4, attn=(1,), swa=(2,))
LOSS = LossSection(kl_weight=1.0, ce_weight=0.5, mse_weight=0.1)
GLOBAL_B, T = 24, 32  # 24: no parameter of the tiny models has a dim of that size


def _gather_lines(hlo: str) -> list[str]:
    """Every all-gather instruction of the compiled HLO, one line each."""
    return re.findall(r"= \S+ all-gather\([^\n]*", hlo)


def _gathered_shapes(hlo: str) -> list[str]:
    return [line.split()[1] for line in _gather_lines(hlo)]


# The ops' named scopes (jax.named_scope on gated_delta_rule, dynamic_causal_conv and
# dot_product_attention) reach the HLO metadata of every instruction traced inside them,
# including the collectives the partitioner inserts to feed them.
KERNEL_SCOPES = ("gated_delta_rule", "dynamic_conv", "attention")


def _gathers_for_kernels(hlo: str) -> list[str]:
    """all-gathers whose op_name lies inside a kernel op's scope: operands gathered for it."""
    out = []
    for line in _gather_lines(hlo):
        op = re.search(r'op_name="([^"]*)"', line)
        if op and any(f"/{scope}/" in op.group(1) for scope in KERNEL_SCOPES):
            out.append(line[:160])
    return out


def _compiled_step(monkeypatch, wrap: bool):
    """Compile the 8-device distill step with Pallas GDR + conv and splash attention (the
    student's attention and sliding-window layers, on packed rows); record the kernels' shapes."""
    seen = {"gdr": [], "conv": [], "splash": []}
    gdr, conv, splash = pgdr.gated_delta_rule_pallas, pconv.dynamic_causal_conv_pallas, attn_op._splash

    def rec_gdr(q, *a, **kw):
        seen["gdr"].append(q.shape)
        return gdr(q, *a, **kw, interpret="plain")  # the generic interpreter compiles faster

    def rec_conv(x, *a, **kw):
        seen["conv"].append(x.shape)
        return conv(x, *a, **kw, interpret="plain")

    def rec_splash(q, k, v, qseg, kseg, window, scale, interpret, *a, **kw):
        seen["splash"].append(q.shape)
        return splash(q, k, v, qseg, kseg, window, scale, True, *a, **kw)  # Pallas interpreter

    monkeypatch.setattr(attn_op, "_splash", rec_splash)
    monkeypatch.setattr(pgdr, "gated_delta_rule_pallas", rec_gdr)
    monkeypatch.setattr(pconv, "dynamic_causal_conv_pallas", rec_conv)
    if not wrap:  # the control: the step as it was before the kernels ran per device
        monkeypatch.setattr(smk, "active_mesh", lambda: None)
    teacher = JetNemotronForCausalLM(TINY_QWEN2, rngs=nnx.Rngs(1))
    student = student_from_teacher(teacher, LAYERS, jet=JET, window_size=8, seed=0)
    for _, m in nnx.iter_modules(student):
        if isinstance(m, JetBlock):
            m.gdr_implementation = m.conv_implementation = "pallas"
        if isinstance(m, Attention):  # packed rows: segment ids, RoPE positions stay outside
            m.implementation = "splash"
    sf, tf = FlatModel(student), FlatModel(teacher)
    ds = train_step.DistillStep(sf, tf, OptimizerSection(lr=1e-2, warmup_steps=0), LOSS,
                                make_mesh((2, 2, 2)), 10)
    tp = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tf.params(teacher), ds.teacher_shardings)
    dtypes = {"input_ids": jnp.int32, "segment_ids": jnp.int32, "positions": jnp.int32,
              "targets": jnp.int32, "loss_mask": jnp.float32}
    batch = {k: jax.ShapeDtypeStruct((GLOBAL_B, T), d, sharding=ds.batch_shardings[k])
             for k, d in dtypes.items()}
    hlo = ds._step.lower(ds.abstract_state(), tp, batch).compile().as_text()
    return hlo, seen, JET.num_heads


# The control (kernels called on the global operands, as before) shows the assertion can fail;
# it compiles the step once more (~25 s on the shared CPU), so it is in the slow run.
@pytest.mark.parametrize("wrap", [pytest.param(True, id="per_device"),
                                  pytest.param(False, id="control_unwrapped", marks=pytest.mark.slow)])
def test_sharded_distill_step_gathers_no_activation_for_kernels(monkeypatch, wrap):
    hlo, seen, heads = _compiled_step(monkeypatch, wrap)
    full_batch = [s for s in _gathered_shapes(hlo) if re.search(rf"\[{GLOBAL_B}[,\]]", s)]
    assert seen["gdr"] and seen["conv"] and seen["splash"]
    if wrap:
        # data*fsdp = 4 shards the batch, tensor = 2 the heads / value channels.
        assert {s[0] for s in seen["gdr"]} == {GLOBAL_B // 4}, seen["gdr"]
        assert {s[2] for s in seen["gdr"]} == {heads // 2}, seen["gdr"]
        assert {s[0] for s in seen["conv"]} == {GLOBAL_B // 4}, seen["conv"]
        assert {s[2] for s in seen["conv"]} == {JET.num_heads * JET.head_dim // 2}, seen["conv"]
        attn_heads = TINY_QWEN2.num_attention_heads
        assert {(s[0], s[2]) for s in seen["splash"]} == {(GLOBAL_B // 4, attn_heads // 2)}, seen["splash"]
        assert full_batch == [], full_batch
        # Nothing at all is gathered inside a kernel op (the gathers left are the FSDP weight
        # gathers of the XLA projections and the embedding, outside the ops' scopes).
        assert _gathers_for_kernels(hlo) == [], _gathers_for_kernels(hlo)
        # The embedding lookup gathers its table, not its output: looking up rows of the
        # (vocab, embed)-sharded table directly put all-gathers in `_take` (the [B/4, T, D]
        # rows and the table; XLA replicated the whole batch to reshard them).
        take = [l for l in _gather_lines(hlo) if "_take" in l]
        assert take == [], take[:2]
    else:
        # Without shard_map the kernels get global operands, gathered to the whole batch:
        # the check above can fail.
        assert {s[0] for s in seen["gdr"]} == {GLOBAL_B}
        assert full_batch, "control: expected all-gathers to the global batch"
        assert _gathers_for_kernels(hlo), "control: expected gathers inside the kernel ops"


# ---------------------------------------------------------------- numerics of the wrapper

def _mesh():
    return make_mesh((2, 2, 2))


def _rand(key, shape, scale=1.0):
    return scale * jax.random.normal(key, shape, jnp.float32)


def test_gdr_per_device_equals_unwrapped_values_and_grads():
    B, t, H, D = 4, 24, 4, 16
    ks = jax.random.split(jax.random.key(0), 6)
    q, k, v = (_rand(ks[i], (B, t, H, D)) for i in range(3))
    g = -jax.nn.softplus(_rand(ks[3], (B, t, H)))
    beta = jax.nn.sigmoid(_rand(ks[4], (B, t, H)))
    h0 = _rand(ks[5], (B, H, D, D), 0.1)
    seg = jnp.asarray(np.repeat([[1] * 10 + [2] * 14], B, 0), jnp.int32)
    kernel = functools.partial(pgdr.gated_delta_rule_pallas, interpret="plain")

    def loss(mesh, q, k, v, g, beta, h0):
        with step_mesh(mesh):
            o, s = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                    segment_ids=seg, implementation="pallas")
        return jnp.sum(o * o) + jnp.sum(s), (o, s)

    import unittest.mock as mock
    with mock.patch.object(pgdr, "gated_delta_rule_pallas", kernel):
        args = (q, k, v, g, beta, h0)
        (_, (o_ref, s_ref)), g_ref = jax.jit(jax.value_and_grad(
            functools.partial(loss, None), argnums=range(6), has_aux=True))(*args)
        hlo = jax.jit(functools.partial(loss, _mesh())).lower(*args).as_text()
        (_, (o, s)), gr = jax.jit(jax.value_and_grad(
            functools.partial(loss, _mesh()), argnums=range(6), has_aux=True))(*args)
    assert "manual" in hlo.lower()  # the shard_map is really there
    np.testing.assert_allclose(o, o_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s, s_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(gr, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_conv_per_device_equals_unwrapped():
    B, t, C, W = 4, 20, 32, 4
    x = _rand(jax.random.key(1), (B, t, C))
    kern = _rand(jax.random.key(2), (B, t, C, W), 0.3)
    state = _rand(jax.random.key(3), (B, C, W))
    kernel = functools.partial(pconv.dynamic_causal_conv_pallas, interpret="plain")

    def run(mesh, x, kern, state):
        with step_mesh(mesh):
            return dynamic_causal_conv(x, kern, conv_state=state, output_final_state=True,
                                       activation="silu", implementation="pallas")

    import unittest.mock as mock
    with mock.patch.object(pconv, "dynamic_causal_conv_pallas", kernel):
        y_ref, s_ref = jax.jit(functools.partial(run, None))(x, kern, state)
        y, s = jax.jit(functools.partial(run, _mesh()))(x, kern, state)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s, s_ref, rtol=1e-6, atol=1e-6)


def test_splash_per_device_equals_unwrapped_gqa():
    B, t, H, KV, D = 4, 40, 4, 2, 16
    q = _rand(jax.random.key(4), (B, t, H, D))
    k, v = (_rand(jax.random.key(i), (B, t, KV, D)) for i in (5, 6))
    seg = jnp.asarray(np.repeat([[0] * 17 + [1] * 23], B, 0), jnp.int32)

    def run(mesh, q, k, v):
        with step_mesh(mesh):
            return dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, window=9,
                                         implementation="splash", splash_interpret=True)

    ref = dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, window=9,
                                implementation="xla")
    out = jax.jit(functools.partial(run, _mesh()))(q, k, v)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_no_mesh_or_trivial_mesh_calls_kernel_directly():
    calls = []
    f = lambda x: calls.append(x.shape) or x * 2
    x = jnp.ones((4, 3, 2, 5))
    names = ("batch", None, "heads", None)
    smk.call_per_shard(f, (x,), (names,), names)
    with step_mesh(make_mesh((1, 1, 1), devices=jax.devices()[:1])):
        smk.call_per_shard(f, (x,), (names,), names)
    assert calls == [(4, 3, 2, 5)] * 2
    # A dim the mesh axes do not divide is not split over them (batch 3 on data*fsdp = 4).
    with step_mesh(_mesh()):
        out = jax.jit(lambda x: smk.call_per_shard(f, (x,), (names,), names))(jnp.ones((3, 3, 2, 5)))
    assert calls[-1] == (3, 3, 1, 5) and out.shape == (3, 3, 2, 5)
