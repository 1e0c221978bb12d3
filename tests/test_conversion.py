"""HF Jet-Nemotron <-> JAX: bitwise round trip, official key names/shapes, clear errors."""

import json

import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from jet_jax_configs.presets import JET_NEMOTRON_2B, JET_NEMOTRON_4B, TINY_JET
from jet_jax.config import hybrid_layer_types
from jet_jax.convert import CheckpointMismatchError, abstract_model, from_hf, key_table, read_hf_tensors, to_hf
from tests.hf_fixtures import random_jet_checkpoint


def _reference_keys(cfg):
    """Key names and shapes written out independently from the released checkpoints' key list."""
    D, F, j = cfg.hidden_size, cfg.intermediate_size, cfg.jet
    H, dk, dv, W = j.num_heads, j.head_dim, j.head_v_dim, j.conv_size
    K, V, G = H * dk, H * dv, H * dv // j.dconv_generator_reduction
    hd, nh, nkv = D // cfg.num_attention_heads, cfg.num_attention_heads, cfg.num_key_value_heads
    keys = {"model.embed_tokens.weight": (cfg.vocab_size, D), "model.norm.weight": (D,)}
    for i, t in enumerate(cfg.layer_types):
        p = f"model.layers.{i}."
        keys.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                     p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                     p + "mlp.down_proj.weight": (D, F)})
        a = p + "self_attn."
        if t == "jet":
            keys.update({a + "q_proj.weight": (K, D), a + "k_proj.weight": (K, D), a + "v_proj.weight": (V, D),
                         a + "b_proj.weight": (H, D), a + "a_proj.weight": (H, D), a + "A_log": (H,),
                         a + "dt_bias": (H,),
                         a + "dynamic_conv1d.kernel_generator.w1.weight": (G, D),
                         a + "dynamic_conv1d.kernel_generator.w2.weight": (V * W, G),
                         a + "dynamic_conv1d.kernel_generator.w2.bias": (V * W,),
                         a + "g_proj.weight": (V, D), a + "o_norm.weight": (dv,), a + "o_proj.weight": (D, V)})
        else:
            keys.update({a + "q_proj.weight": (nh * hd, D), a + "q_proj.bias": (nh * hd,),
                         a + "k_proj.weight": (nkv * hd, D), a + "k_proj.bias": (nkv * hd,),
                         a + "v_proj.weight": (nkv * hd, D), a + "v_proj.bias": (nkv * hd,),
                         a + "o_proj.weight": (D, nh * hd)})
    if not cfg.tie_word_embeddings:
        keys["lm_head.weight"] = (cfg.vocab_size, D)
    return keys


@pytest.mark.parametrize("cfg", [JET_NEMOTRON_2B, JET_NEMOTRON_4B], ids=["2B", "4B"])
def test_key_table_matches_reference_doc_on_abstract_shapes(cfg):
    table = {s.hf_key: s.hf_shape for s in key_table(cfg)}
    assert table == _reference_keys(cfg)
    # And the abstract model (no memory) holds exactly these parameters, transposed for linears.
    flat = dict(nnx.to_flat_state(nnx.state(abstract_model(cfg), nnx.Param)))
    assert len(flat) == len(table)
    for s in key_table(cfg):
        shape = tuple(flat[s.path].get_value().shape)
        assert (shape[::-1] if s.layout == "linear" else shape) == s.hf_shape, s.hf_key
    assert cfg.jet.head_v_dim == 256


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_hf_jax_hf_round_trip_is_bitwise(tmp_path, tied, dtype):
    cfg = TINY_JET.replace(tie_word_embeddings=tied)
    src = random_jet_checkpoint(tmp_path / "src", cfg, dtype=dtype, max_shard_bytes=200_000)
    assert (tmp_path / "src" / "model.safetensors.index.json").exists()  # sharded input
    model = from_hf(tmp_path / "src")
    out = to_hf(model, tmp_path / "out", dtype=ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)
    back = read_hf_tensors(out)
    assert set(back) == set(src)
    for k in src:
        assert back[k].dtype == src[k].dtype
        assert np.array_equal(back[k].view(np.uint8), src[k].view(np.uint8)), k
    assert json.loads((out / "config.json").read_text())["layer_types"] == list(cfg.layer_types)


def test_missing_unexpected_and_misshaped_tensors(tmp_path):
    cfg = TINY_JET
    tensors = random_jet_checkpoint(tmp_path / "ok", cfg)
    from safetensors.numpy import save_file

    def write(name, t):
        d = tmp_path / name
        d.mkdir()
        cfg.save_json(d / "config.json")
        save_file(t, str(d / "model.safetensors"))
        return d

    t = dict(tensors)
    t.pop("model.layers.0.self_attn.A_log")
    with pytest.raises(CheckpointMismatchError, match=r"missing tensor 'model.layers.0.self_attn.A_log'"):
        from_hf(write("missing", t))
    t = dict(tensors, **{"model.layers.0.self_attn.extra": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointMismatchError, match=r"unexpected tensor 'model.layers.0.self_attn.extra'"):
        from_hf(write("unexpected", t))
    t = dict(tensors)
    t["model.layers.1.self_attn.q_proj.weight"] = np.zeros((64, 63), np.float32)
    with pytest.raises(CheckpointMismatchError,
                       match=r"shape mismatch for 'model.layers.1.self_attn.q_proj.weight': "
                             r"checkpoint has \(64, 63\), config expects \(64, 64\)"):
        from_hf(write("shape", t))


def test_export_refuses_to_overwrite_and_rejects_zoo_layers(tmp_path):
    random_jet_checkpoint(tmp_path / "src", TINY_JET)
    model = from_hf(tmp_path / "src")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        to_hf(model, tmp_path / "src")
    assert (tmp_path / "src" / "model.safetensors").exists()  # untouched
    with pytest.raises(ValueError, match="no official"):
        key_table(TINY_JET.replace(layer_types=hybrid_layer_types(4, attn=(1,), default="gla")))
