"""Student construction from a teacher, and training-config errors."""

import numpy as np
import pytest
from flax import nnx

from jet_jax_configs.presets import TINY_QWEN2
from jet_jax.config import JetBlockConfig, hybrid_layer_types
from jet_jax.model import JetNemotronForCausalLM
from jet_jax_train.config import ConfigError, TrainConfig, apply_overrides, load_config_file
from jet_jax_train.flat_model import FlatModel
from jet_jax_train.student import student_from_teacher

LAYERS = hybrid_layer_types(4, attn=(1,), swa=(2,))
MATCHING_JET = JetBlockConfig(num_heads=4, head_dim=16, expand_v=1.0, conv_size=4,
                              dconv_generator_reduction=8)
OTHER_JET = JetBlockConfig(num_heads=2, head_dim=16, expand_v=2.0, conv_size=4,
                           dconv_generator_reduction=8)


@pytest.fixture(scope="module")
def teacher():
    return JetNemotronForCausalLM(TINY_QWEN2, rngs=nnx.Rngs(3))


def _flat(model):
    return {k: np.asarray(v) for k, v in FlatModel(model).params(model).items()}


def test_copied_tensors_equal_teacher(teacher):
    student, sources = student_from_teacher(teacher, LAYERS, jet=MATCHING_JET, window_size=8,
                                            seed=0, return_sources=True)
    t, s = _flat(teacher), _flat(student)
    assert student.config.layer_types == LAYERS and student.config.window_size == 8
    # Everything outside the mixers, and the kept attn/swa layers, is the teacher's.
    for key in s:
        if "/self_attn/" not in key or "layers/1/" in key or "layers/2/" in key:
            np.testing.assert_array_equal(s[key], t[key], err_msg=key)
            assert sources[key].startswith("teacher")
    # JetBlock q/o copied; k/v are the teacher's KV heads repeated for each query group.
    jet = "model/layers/0/self_attn/"
    np.testing.assert_array_equal(s[jet + "q_proj/kernel"], t[jet + "q_proj/kernel"])
    np.testing.assert_array_equal(s[jet + "o_proj/kernel"], t[jet + "o_proj/kernel"])
    tk = t[jet + "k_proj/kernel"].reshape(64, 2, 16)  # 2 KV heads of 16
    sk = s[jet + "k_proj/kernel"].reshape(64, 4, 16)  # 4 query-group heads
    for h in range(4):
        np.testing.assert_array_equal(sk[:, h], tk[:, h // 2])
    tv = t[jet + "v_proj/kernel"].reshape(64, 2, 16)
    sv = s[jet + "v_proj/kernel"].reshape(64, 4, 16)
    np.testing.assert_array_equal(sv[:, 3], tv[:, 1])
    # JetBlock-only tensors use the reference init.
    assert sources[jet + "A_log"] == "init"
    # The layer's own generator init: w1 and w2 nonzero (trainable from step 1), mirrored so
    # that w2 silu(w1 x) = 0, i.e. a static depthwise conv (weights b2) at init.
    w1 = s[jet + "dynamic_conv1d/kernel_generator/w1/kernel"]
    w2 = s[jet + "dynamic_conv1d/kernel_generator/w2/kernel"]
    assert sources[jet + "dynamic_conv1d/kernel_generator/w1/kernel"] == "init"
    assert np.all(w1 != 0) and np.all(w2 != 0)
    x = np.random.default_rng(0).normal(size=(5, w1.shape[0])).astype(np.float32)
    h = x @ w1
    np.testing.assert_allclose((h / (1 + np.exp(-h))) @ w2, 0, atol=1e-6)
    a = np.exp(s[jet + "A_log"])
    assert np.all((a > 0) & (a <= 16))


def test_mismatched_jet_shapes_fall_back_to_random_init(teacher):
    student, sources = student_from_teacher(teacher, LAYERS, jet=OTHER_JET, seed=0,
                                            return_sources=True)
    jet = "model/layers/3/self_attn/"
    for name in ("q_proj/kernel", "k_proj/kernel", "v_proj/kernel", "o_proj/kernel"):
        assert sources[jet + name] == "init"
    s = _flat(student)
    assert s[jet + "v_proj/kernel"].shape == (64, 2 * 32)
    assert 0.005 < s[jet + "q_proj/kernel"].std() < 0.05  # normal(0.02), not zeros


def test_student_layer_count_mismatch_is_an_error(teacher):
    with pytest.raises(ValueError, match="layer_types has 3 entries"):
        student_from_teacher(teacher, ("jet", "attn", "jet"))


def test_config_overrides():
    cfg = apply_overrides(TrainConfig(), ["train.steps=7", "optimizer.lr=3e-4",
                                         "model.attn_layers=(1, 2)", "logging.progress=none",
                                         "data.seq_len=32", "model.remat=true"])
    assert cfg.train.steps == 7 and cfg.optimizer.lr == 3e-4
    assert cfg.model.attn_layers == (1, 2) and cfg.logging.progress == "none"
    assert cfg.data.seq_len == 32 and cfg.model.remat is True


@pytest.mark.parametrize("override, message", [
    ("optimizr.lr=1", r"unknown key 'optimizr' in the config; valid keys: \['checkpoint'"),
    ("optimizer.learning_rate=1", r"unknown key 'learning_rate' in optimizer; valid keys:"),
    ("train.steps=abc", r"train.steps: expected an integer, got 'abc'"),
    ("train.steps=1.5", r"expected an integer"),
    ("model.remat=3", r"expected true/false"),
    ("optimizer.lr=-1", r"invalid optimizer settings"),
    ("train.steps.x=1", r"'steps' is not a section"),
    ("train.steps", r"expected key=value"),
    ("data.seq_len=1", r"seq_len must be >= 2"),
    ("train.export=onnx", r"train.export must be hf, orbax or none, got 'onnx'"),
])
def test_config_override_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TrainConfig(), [override])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        load_config_file(bad)
    assert isinstance(load_config_file("configs/distill_tiny.py"), TrainConfig)


def test_big_teacher_config_for_every_teacher(monkeypatch):
    """configs/distill_big_teacher.py loads for each teacher it names: its student's attention
    layers, layer scan and chunked KL on; a TPU run may switch to Splash attention."""
    from jet_jax_configs.teachers import STUDENT_OF, STUDENTS
    from jet_jax_train.distill import check_kernels, student_layer_types

    for name in STUDENT_OF:
        monkeypatch.setenv("JET_JAX_TEACHER", name)
        cfg = load_config_file("configs/distill_big_teacher.py")
        student = STUDENTS[STUDENT_OF[name]]
        assert student_layer_types(cfg, student.num_hidden_layers) == tuple(student.layer_types)
        assert cfg.model.scan_layers and cfg.model.remat and cfg.loss.logits_chunk == 512
        check_kernels(apply_overrides(cfg, ["model.attention_implementation=splash"]), backend="tpu")
    monkeypatch.setenv("JET_JAX_TEACHER", "gpt-2")
    with pytest.raises(ConfigError, match="JET_JAX_TEACHER"):
        load_config_file("configs/distill_big_teacher.py")
