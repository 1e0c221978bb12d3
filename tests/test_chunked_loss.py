"""Chunked KL/CE (logits from hidden states a few positions at a time) == the plain losses,
values and gradients; the distill step with `logits_chunk` == without."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jet_jax_configs.presets import TINY_QWEN2
from jet_jax.config import JetBlockConfig, hybrid_layer_types
from jet_jax.model import JetNemotronForCausalLM
from jet_jax.sharding import make_mesh
from jet_jax_train.config import LossSection, OptimizerSection
from jet_jax_train.flat_model import FlatModel
from jet_jax_train.losses import chunked_kl_and_ce, cross_entropy, kl_to_teacher
from jet_jax_train.student import student_from_teacher
from jet_jax_train.train_step import DistillStep

B, T, D, V = 2, 13, 8, 37  # T is not a multiple of the chunk


def test_chunked_kl_ce_values_and_gradients_equal_plain():
    ks = jax.random.split(jax.random.key(0), 6)
    hs, ht = jax.random.normal(ks[0], (B, T, D)), jax.random.normal(ks[1], (B, T, D))
    ws, wt = jax.random.normal(ks[2], (D, V)), jax.random.normal(ks[3], (D, V))
    targets = jax.random.randint(ks[4], (B, T), 0, V)
    mask = (jax.random.uniform(ks[5], (B, T)) > 0.3).astype(jnp.float32)
    tau = 2.0

    def plain(hs, ws):
        s, t = hs @ ws, ht @ wt
        return kl_to_teacher(s, t, mask, tau) + 0.5 * cross_entropy(s, targets, mask), \
            (kl_to_teacher(s, t, mask, tau), cross_entropy(s, targets, mask))

    def chunked(hs, ws):
        kl, ce = chunked_kl_and_ce(hs, ht, lambda h: h @ ws, lambda h: h @ wt, targets, mask,
                                   temperature=tau, chunk=4)
        return kl + 0.5 * ce, (kl, ce)

    (vp, (klp, cep)), gp = jax.value_and_grad(plain, argnums=(0, 1), has_aux=True)(hs, ws)
    (vc, (klc, cec)), gc = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True))(hs, ws)
    np.testing.assert_allclose([vc, klc, cec], [vp, klp, cep], rtol=1e-5)
    for a, b in zip(gc, gp):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_chunked_loss_never_builds_whole_logits():
    hs = jnp.zeros((B, 64, D))
    txt = jax.jit(lambda h: chunked_kl_and_ce(
        h, h, lambda x: x @ jnp.ones((D, V)), lambda x: x @ jnp.ones((D, V)),
        jnp.zeros((B, 64), jnp.int32), jnp.ones((B, 64)), chunk=16)).lower(hs).as_text()
    assert f"{B}x64x{V}xf32" not in txt and f"{B}x16x{V}xf32" in txt


def _batch(b=4, t=24, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((b, t), np.float32)
    mask[:, :3] = 0
    return {"input_ids": rng.integers(0, 256, (b, t)).astype(np.int32),
            "segment_ids": np.ones((b, t), np.int32),
            "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
            "targets": rng.integers(0, 256, (b, t)).astype(np.int32), "loss_mask": mask}


def test_distill_step_with_logits_chunk_equals_whole_logits():
    teacher = JetNemotronForCausalLM(TINY_QWEN2, rngs=nnx.Rngs(1))
    student = student_from_teacher(teacher, hybrid_layer_types(4, attn=(1,), swa=(2,)),
                                   jet=JetBlockConfig(num_heads=4, head_dim=16, expand_v=1.0,
                                                      conv_size=4, dconv_generator_reduction=8),
                                   window_size=8, seed=0)
    sf, tf = FlatModel(student), FlatModel(teacher)
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    loss = LossSection(kl_weight=1.0, ce_weight=0.5, mse_weight=0.0)
    opt = OptimizerSection(lr=1e-2, warmup_steps=0, eps=1e-3)
    out = []
    for chunk in (0, 7):
        ds = DistillStep(sf, tf, opt, loss, mesh, 10, logits_chunk=chunk)
        state = ds.init_state(sf.params(student))
        tp = ds.put_teacher(tf.params(teacher))
        state, m = ds.step(state, tp, _batch())
        out.append((jax.device_get(m), jax.device_get(state["params"]),
                    jax.device_get(ds.eval(state["params"], tp, _batch(seed=1)))))
    (m0, p0, e0), (m1, p1, e1) = out
    for k in ("loss", "kl", "ce", "grad_norm"):
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, err_msg=k)
    for k in ("kl", "ce", "teacher_ce"):
        np.testing.assert_allclose(e1[k], e0[k], rtol=1e-5, err_msg=k)
    for k in p0:
        np.testing.assert_allclose(p1[k], p0[k], rtol=1e-5, atol=1e-7, err_msg=k)
