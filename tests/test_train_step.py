"""The jitted distillation step: mesh invariance, freezing, bf16/remat options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jet_jax_configs.presets import TINY_QWEN2
from jet_jax.config import JetBlockConfig, hybrid_layer_types
from jet_jax.model import JetNemotronForCausalLM
from jet_jax.sharding import make_mesh
from jet_jax_train.config import LossSection, OptimizerSection
from jet_jax_train.flat_model import FlatModel
from jet_jax_train.optimizer import FROZEN, TRAINABLE
from jet_jax_train.student import student_from_teacher
from jet_jax_train.train_step import DistillStep

JET = JetBlockConfig(num_heads=4, head_dim=16, expand_v=1.0, conv_size=4, dconv_generator_reduction=8)
LAYERS = hybrid_layer_types(4, attn=(1,), swa=(2,))
LOSS = LossSection(kl_weight=1.0, ce_weight=0.5, mse_weight=0.1)


def _batch(b=8, t=32, seed=0):
    rng = np.random.default_rng(seed)
    seg = np.ones((b, t), np.int32)
    seg[:, t // 2:] = 2  # two packed documents per row
    pos = np.concatenate([np.arange(t // 2), np.arange(t - t // 2)]).astype(np.int32)
    mask = np.ones((b, t), np.float32)
    mask[:, :3] = 0
    return {"input_ids": rng.integers(0, 256, (b, t)).astype(np.int32), "segment_ids": seg,
            "positions": np.tile(pos, (b, 1)), "targets": rng.integers(0, 256, (b, t)).astype(np.int32),
            "loss_mask": mask}


@pytest.fixture(scope="module")
def models():
    teacher = JetNemotronForCausalLM(TINY_QWEN2, rngs=nnx.Rngs(1))
    student = student_from_teacher(teacher, LAYERS, jet=JET, window_size=8, seed=0)
    return FlatModel(student), student, FlatModel(teacher), teacher


def _run(models, mesh, steps, opt=None, loss=LOSS):
    sf, student, tf, teacher = models
    ds = DistillStep(sf, tf, opt or OptimizerSection(lr=1e-2, warmup_steps=0), loss, mesh, 10)
    state = ds.init_state(sf.params(student))
    tp = ds.put_teacher(tf.params(teacher))
    metrics = []
    for i in range(steps):
        state, m = ds.step(state, tp, _batch(seed=i))
        metrics.append(jax.device_get(m))
    return ds, jax.device_get(state["params"]), metrics


def test_frozen_params_bitwise_unchanged_trainable_change(models):
    sf, student, _, _ = models
    before = {k: np.asarray(v) for k, v in sf.params(student).items()}
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    ds, after, metrics = _run(models, mesh, steps=3)
    frozen = [k for k in before if ds.labels[k] == FROZEN]
    trainable = [k for k in before if ds.labels[k] == TRAINABLE]
    assert any("embed_tokens" in k for k in frozen) and any("/mlp/" in k for k in frozen)
    assert any("layernorm" in k for k in frozen) and "model/norm/weight" in frozen
    assert all("/self_attn/" in k for k in trainable)
    for k in frozen:
        assert np.array_equal(before[k], after[k]), k
        assert before[k].tobytes() == np.asarray(after[k]).tobytes(), k
    # A_log, dt_bias etc. may move little, but every trainable tensor moves.
    changed = [k for k in trainable if not np.array_equal(before[k], after[k])]
    assert sorted(changed) == sorted(trainable)
    for m in metrics:
        assert np.isfinite(m["loss"]) and m["grad_norm"] > 0 and m["mse"] > 0
        assert m["loss"] == pytest.approx(m["kl"] + 0.5 * m["ce"] + 0.1 * m["mse"], rel=1e-5)


def test_unfreeze_all_trains_embeddings(models):
    sf, student, _, _ = models
    before = np.asarray(sf.params(student)["model/embed_tokens/embedding"])
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    ds, after, _ = _run(models, mesh, 1, opt=OptimizerSection(lr=1e-2, warmup_steps=0, unfreeze_all=True))
    assert set(ds.labels.values()) == {TRAINABLE}
    assert not np.array_equal(before, after["model/embed_tokens/embedding"])


# Every mesh the 8 fake CPU devices allow, against one device. (An intermittent hang seen here
# with 8 devices was jaxlib's CPU triangular_solve deadlocking its thread pool; the chunked
# gated delta rule no longer calls it.)
@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (4, 1, 1), (2, 2, 1), (1, 2, 2)])
def test_one_step_same_on_any_mesh(models, shape):
    assert jax.device_count() == 8, "tests/conftest.py must give 8 fake CPU devices"
    ref_mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    # Adam with the default eps=1e-8 turns a gradient entry near 0 into lr * g / (|g| + eps),
    # where a 1e-7 change of g from another reduction order moves the update by up to lr.
    # eps=1e-3 keeps the update a smooth function of g, so params can be compared tightly.
    opt = OptimizerSection(lr=1e-2, warmup_steps=0, eps=1e-3)
    _, ref_params, ref_m = _run(models, ref_mesh, 1, opt=opt)
    n = int(np.prod(shape))
    ds, params, m = _run(models, make_mesh(shape, devices=jax.devices()[:n]), 1, opt=opt)
    # The mesh really shards something (fsdp/tensor axes), not all-replicated.
    if shape[1] > 1 or shape[2] > 1:
        assert any(not s.is_fully_replicated for s in ds.param_shardings.values())
    for k in ("loss", "kl", "ce", "mse", "grad_norm"):
        np.testing.assert_allclose(m[0][k], ref_m[0][k], rtol=1e-5, err_msg=k)
    for k in ref_params:
        np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_bf16_and_remat_step_close_to_f32(models):
    sf, student, tf, teacher = models
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    _, _, ref_m = _run(models, mesh, 1)
    cfg = student.config
    s16 = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, remat=True)
    s16_flat = FlatModel(s16)
    t16 = JetNemotronForCausalLM(teacher.config, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    t16_flat = FlatModel(t16)
    ds = DistillStep(s16_flat, t16_flat, OptimizerSection(lr=1e-2, warmup_steps=0), LOSS, mesh, 10)
    state = ds.init_state(sf.params(student))  # same f32 params, bf16 compute
    assert state["params"]["model/embed_tokens/embedding"].dtype == jnp.float32
    state, m = ds.step(state, ds.put_teacher(tf.params(teacher)), _batch(seed=0))
    m = jax.device_get(m)
    assert np.isfinite(m["loss"])
    np.testing.assert_allclose(m["ce"], ref_m[0]["ce"], rtol=2e-2)
