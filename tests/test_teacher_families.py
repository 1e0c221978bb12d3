"""Llama and Qwen3 teachers (and Qwen2 where the rule is shared) against transformers:
logits, CE gradients, greedy generation, HF -> JAX -> HF round trip, export dtype rules and
the fields that are refused. Tiny random models saved with save_pretrained; float32."""

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from jet_jax.config import ModelConfig
from jet_jax.convert import from_hf, read_hf_tensors, to_hf
from tests.hf_fixtures import (assert_loss_gradients_match_torch, hf_greedy, tiny_llama, tiny_qwen2,
                               tiny_qwen3)

LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
CASES = {
    "llama_untied_gqa": (tiny_llama, dict()),
    "llama_tied_mha": (tiny_llama, dict(tied=True, kv=4, seed=1)),
    "llama_head_dim": (tiny_llama, dict(head_dim=12, heads=4, kv=1, seed=2)),
    "llama_linear": (tiny_llama, dict(rope_scaling={"rope_type": "linear", "factor": 2.5}, seed=3)),
    "llama_llama3": (tiny_llama, dict(rope_scaling=LLAMA3, head_dim=16, seed=4)),
    "qwen3_untied": (tiny_qwen3, dict()),
    "qwen3_tied_gqa_head_dim": (tiny_qwen3, dict(tied=True, heads=6, kv=2, head_dim=10, seed=5)),
}


def _ids(vocab, shape, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(tmp_path, name):
    make, kw = CASES[name]
    hf = make(tmp_path, **kw)
    model = from_hf(tmp_path)
    assert model.config.family == hf.config.model_type
    ids = _ids(hf.config.vocab_size, (2, 40))  # 40 > original_max_position_embeddings of llama3
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(model(jnp.asarray(ids)))
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama_llama3", "qwen3_tied_gqa_head_dim"])
def test_loss_gradients_match_torch_autograd(tmp_path, name):
    make, kw = CASES[name]
    hf = make(tmp_path, **kw)
    model = from_hf(tmp_path)
    assert_loss_gradients_match_torch(hf, model, _ids(hf.config.vocab_size, (2, 21), seed=1))


@pytest.mark.parametrize("name", ["llama_llama3", "qwen3_untied"])
def test_greedy_generation_matches_transformers(tmp_path, name):
    from jet_jax.generation import generate

    make, kw = CASES[name]
    hf = make(tmp_path, **kw)
    model = from_hf(tmp_path)
    prompts = [_ids(hf.config.vocab_size, (n,), seed=n).tolist() for n in (5, 30)]
    n_new = 12
    ours = generate(model, prompts, max_new_tokens=n_new)
    for prompt, new in zip(prompts, ours):
        assert prompt + new == hf_greedy(hf, prompt, n_new)


# Fields of the source config.json the model understands: a round trip keeps them all.
UNDERSTOOD = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
              "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id",
              "rope_parameters", "rope_scaling", "rope_theta", "attention_bias", "hidden_act", "mlp_bias",
              "initializer_range")


@pytest.mark.parametrize("name", ["llama_tied_mha", "llama_llama3", "qwen3_tied_gqa_head_dim", "qwen2"])
def test_round_trip_bitwise_and_transformers_loads_export(tmp_path, name):
    make, kw = CASES[name] if name in CASES else (tiny_qwen2, dict(tied=True))
    hf = make(tmp_path / "src", **kw)
    model = from_hf(tmp_path / "src")
    out = to_hf(model, tmp_path / "out")
    src, back = read_hf_tensors(tmp_path / "src"), read_hf_tensors(out)
    if hf.config.tie_word_embeddings:
        src.pop("lm_head.weight", None)
    assert set(back) == set(src)
    for key in src:
        assert back[key].dtype == src[key].dtype == np.float32
        assert back[key].tobytes() == src[key].tobytes(), key
    src_cfg = json.loads((tmp_path / "src" / "config.json").read_text())
    out_cfg = json.loads((out / "config.json").read_text())
    for field in UNDERSTOOD:
        if field in src_cfg:
            assert out_cfg.get(field) == src_cfg[field], field
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(hf)
    ids = torch.tensor(_ids(hf.config.vocab_size, (1, 37)))
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(ids).logits.numpy(), hf(ids).logits.numpy())


def test_export_dtype_rules(tmp_path):
    tiny_qwen3(tmp_path / "src")
    f32 = from_hf(tmp_path / "src")
    # default: the parameter dtype (float32 here), and config.json says so
    out = to_hf(f32, tmp_path / "f32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == cfg["dtype"] == "float32"
    assert {t.dtype for t in read_hf_tensors(out).values()} == {np.dtype(np.float32)}
    # explicit dtype= casts, and config.json follows the tensors
    out = to_hf(f32, tmp_path / "bf16", dtype=jnp.bfloat16)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == cfg["dtype"] == "bfloat16"
    assert {t.dtype for t in read_hf_tensors(out).values()} == {np.dtype(ml_dtypes.bfloat16)}
    # a bfloat16 model exports bfloat16 by default; dtype=float32 is declared as float32
    bf16 = from_hf(tmp_path / "src", param_dtype=jnp.bfloat16)
    out = to_hf(bf16, tmp_path / "bf16_default")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {t.dtype for t in read_hf_tensors(out).values()} == {np.dtype(ml_dtypes.bfloat16)}
    out = to_hf(bf16, tmp_path / "bf16_as_f32", dtype=np.float32)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    assert {t.dtype for t in read_hf_tensors(out).values()} == {np.dtype(np.float32)}
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.float32


@pytest.mark.parametrize("model_type, change, message", [
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}},
     "unsupported rope_scaling type 'yarn'"),
    ("llama", {"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "unsupported rope_scaling type 'dynamic'"),
    ("llama", {"attention_bias": True}, "attention_bias=true is not supported for llama"),
    ("qwen3", {"attention_bias": True}, "attention_bias=true is not supported for qwen3"),
    ("llama", {"mlp_bias": True}, "mlp_bias=true is not supported"),
    ("qwen2", {"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}},
     "rope_scaling of type 'llama3' is missing"),
    ("qwen3", {"layer_types": ["full_attention", "sliding_attention"]}, "sliding_attention"),
])
def test_fields_that_change_the_math_are_refused(model_type, change, message):
    base = {"model_type": model_type, "vocab_size": 11, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            # harmless fields are ignored
            "attention_dropout": 0.0, "pretraining_tp": 1, "use_cache": True, "some_new_field": 3}
    ModelConfig.from_hf_dict(base)
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf_dict({**base, **change})


def test_qwen2_export_declares_its_dtype_too(tmp_path):
    tiny_qwen2(tmp_path / "src")
    out = to_hf(from_hf(tmp_path / "src"), tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen3], ids=["llama", "qwen3"])
def test_student_keeps_family_attention_and_starts_jet_from_it(tmp_path, make):
    from jet_jax.config import JetBlockConfig, hybrid_layer_types
    from jet_jax_train.flat_model import FlatModel
    from jet_jax_train.student import student_from_teacher

    make(tmp_path / "t", layers=3, heads=4, kv=2, head_dim=8, hidden=32)
    teacher = from_hf(tmp_path / "t")
    layers = hybrid_layer_types(3, attn=(0,), swa=(2,))
    jet = JetBlockConfig(num_heads=4, head_dim=8, expand_v=1.0, conv_size=4, dconv_generator_reduction=4)
    student, sources = student_from_teacher(teacher, layers, jet=jet, window_size=4,
                                            return_sources=True)
    t = {k: np.asarray(v) for k, v in FlatModel(teacher).params(teacher).items()}
    s = {k: np.asarray(v) for k, v in FlatModel(student).params(student).items()}
    assert student.config.family == teacher.config.family
    kept = [k for k in s if "/layers/0/" in k or "/layers/2/" in k]
    norms = [k for k in kept if "q_norm" in k or "k_norm" in k]
    assert len(norms) == (4 if teacher.config.qk_norm else 0)
    assert not any(k.endswith("bias") for k in kept if "self_attn" in k)
    for k in kept:
        np.testing.assert_array_equal(s[k], t[k], err_msg=k)
    jet_q = "model/layers/1/self_attn/q_proj/kernel"
    np.testing.assert_array_equal(s[jet_q], t[jet_q])
    assert sources["model/layers/1/self_attn/k_proj/kernel"].startswith("teacher k_proj")
    # The student's HF form names the family, and reloads as the same config.
    out = to_hf(student, tmp_path / "s")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "jet_nemotron" and cfg.get("attention_family", "qwen2") == teacher.config.family
    back = from_hf(out)
    assert back.config == student.config
    ids = jnp.asarray(_ids(101, (1, 9)))
    np.testing.assert_array_equal(np.asarray(back(ids)), np.asarray(student(ids)))


@pytest.mark.parametrize("name", ["llama_llama3", "llama_head_dim", "qwen3_tied_gqa_head_dim"])
def test_config_round_trip_and_param_count(tmp_path, name):
    from jet_jax.config import count_params

    make, kw = CASES[name]
    hf = make(tmp_path, **kw)
    cfg = ModelConfig.from_json_file(tmp_path / "config.json")
    assert ModelConfig.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict()))) == cfg
    assert hash(cfg) == hash(ModelConfig.from_hf_dict(cfg.to_hf_dict()))  # static in jitted graphs
    assert count_params(cfg) == sum(p.numel() for p in hf.parameters())
