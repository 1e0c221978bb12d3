"""The JetBlock's kernel generator trains from its own init, in every construction path.

The reference init (w1 = w2 = 0, b2 random) is a saddle: w1's gradient is proportional to w2
and w2's to silu(w1 x), both exactly 0, so the dynamic convolution stays static forever. The
layer's init (mirrored hidden units, jet_jax/layers/jet_block.py) keeps the block's output at
init equal to the reference's while every generator weight gets a nonzero gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jet_jax_configs.presets import TINY_QWEN2
from jet_jax.config import JetBlockConfig
from jet_jax.layers.jet_block import JetBlock
from jet_jax.model import JetNemotronForCausalLM
from jet_jax_train.config import OptimizerSection
from jet_jax_train.postnas.sampling import ChoiceSampler, SamplingConfig
from jet_jax_train.postnas.supernet import SuperNetwork
from jet_jax_train.postnas.trainer import SupernetTrainConfig, train_supernet

CFG = TINY_QWEN2.replace(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         num_key_value_heads=1, num_hidden_layers=2, layer_types=("jet", "attn"),
                         jet=JetBlockConfig(num_heads=2, head_dim=8, expand_v=2.0,
                                            dconv_generator_reduction=4))
GEN = ("dynamic_conv1d", "kernel_generator")


def _batch(b=2, t=12, seed=0):
    ids = jax.random.randint(jax.random.key(seed), (b, t + 1), 0, 256)
    return ids[:, :-1], ids[:, 1:]


def test_fresh_model_generator_weights_all_get_gradient():
    model = JetNemotronForCausalLM(CFG, rngs=nnx.Rngs(0))  # the public constructor
    graphdef, params = nnx.split(model, nnx.Param)
    ids, targets = _batch()

    def loss(p):
        logits = nnx.merge(graphdef, p)(ids)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

    grads = nnx.to_pure_dict(jax.grad(loss)(params))
    gen = grads["model"]["layers"][0]["self_attn"]["dynamic_conv1d"]["kernel_generator"]
    for name, g in (("w1", gen["w1"]["kernel"]), ("w2", gen["w2"]["kernel"]),
                    ("b2", gen["w2"]["bias"])):
        g = np.asarray(g)
        assert np.all(g != 0), f"{name}: {np.mean(g == 0):.0%} of the gradient is exactly 0"
        assert np.all(np.isfinite(g))


def test_generator_init_keeps_the_static_conv_output():
    """Output at init == the reference init's (w1 = w2 = 0, same b2 and other weights)."""
    block = JetBlock(CFG, rngs=nnx.Rngs(3), gdr_implementation="recurrent")
    x = jax.random.normal(jax.random.key(1), (2, 10, CFG.hidden_size))
    y, _ = block(x)
    gen = block.dynamic_conv1d.kernel_generator
    assert np.all(np.asarray(gen.w1.kernel[...]) != 0) and np.all(np.asarray(gen.w2.kernel[...]) != 0)
    gen.w1.kernel[...] = jnp.zeros_like(gen.w1.kernel[...])
    gen.w2.kernel[...] = jnp.zeros_like(gen.w2.kernel[...])
    y_ref, _ = block(x)
    np.testing.assert_allclose(y, y_ref, atol=1e-6, rtol=0)
    assert float(jnp.abs(y_ref).max()) > 1e-3  # the comparison is not between two zeros


def test_odd_generator_width_still_cancels_and_trains():
    from jet_jax.layers.jet_block import KernelGenerator
    gen = KernelGenerator(16, 3, 12, init_std=0.02, rngs=nnx.Rngs(0), dtype=jnp.float32,
                          param_dtype=jnp.float32)
    x = jax.random.normal(jax.random.key(2), (4, 16))
    np.testing.assert_allclose(gen(x), gen.w2.bias[...] + 0 * x[:, :1], atol=1e-7)
    g = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(gen)
    assert np.all(np.asarray(g.w1.kernel[...]) != 0) and np.all(np.asarray(g.w2.kernel[...]) != 0)


def test_supernet_jetblock_conv_weights_move_after_one_step():
    teacher = JetNemotronForCausalLM(CFG.replace(layer_types=("attn", "attn")), rngs=nnx.Rngs(0))
    sup = SuperNetwork.from_teacher(teacher, "jet", seed=1)
    before = {"/".join(map(str, p)): np.asarray(v.get_value())
              for p, v in nnx.to_flat_state(nnx.state(sup, nnx.Param))}
    ids, targets = _batch(seed=4)
    batch = {"input_ids": np.asarray(ids), "targets": np.asarray(targets),
             "segment_ids": np.ones(ids.shape, np.int32),
             "positions": np.broadcast_to(np.arange(ids.shape[1], dtype=np.int32), ids.shape).copy(),
             "loss_mask": np.ones(ids.shape, np.float32)}
    data = iter([batch])
    cfg = SupernetTrainConfig(steps=1, optimizer=OptimizerSection(lr=1e-2, warmup_steps=0),
                              log_every=1)
    sampler = ChoiceSampler(2, SamplingConfig(budget=0, seed=0))  # both layers linear
    trained, _ = train_supernet(sup, teacher, data, sampler, cfg)
    after = {"/".join(map(str, p)): np.asarray(v.get_value())
             for p, v in nnx.to_flat_state(nnx.state(trained, nnx.Param))}
    gen_keys = [k for k in before if "/linear/" in k and "kernel_generator" in k]
    assert len(gen_keys) == 2 * 3, gen_keys  # w1, w2, b2 in each of the 2 layers
    for k in gen_keys:
        moved = np.abs(after[k] - before[k])
        assert np.all(moved > 0), f"{k}: {np.mean(moved == 0):.0%} of the entries did not move"
