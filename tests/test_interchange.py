"""PyTorch/HF interchange: HF <-> Orbax round trips are bitwise, an exported Qwen2 directory
loads in transformers with our logits, and the convert CLI never clobbers a destination."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jet_jax_configs.presets import TINY_JET
from jet_jax.checkpoint_io import (detect_format, is_hf_dir, is_orbax_dir, load_model, load_orbax,
                                   params_equal, save_orbax)
from jet_jax.cli import main
from jet_jax.config import ModelConfig
from jet_jax.convert import from_hf, read_hf_tensors, to_hf
from tests.hf_fixtures import random_jet_checkpoint, tiny_qwen2

TOKENIZER = {"tokenizer.json": '{"version": "1.0", "model": {"type": "WordLevel"}}',
             "tokenizer_config.json": '{"model_max_length": 128}'}


def _add_tokenizer(path):
    for name, text in TOKENIZER.items():
        (path / name).write_text(text)


def _assert_same_hf(a, b, same_json=True):
    ta, tb = read_hf_tensors(a), read_hf_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape, k
        assert ta[k].tobytes() == tb[k].tobytes(), k
    assert ModelConfig.from_json_file(a / "config.json") == ModelConfig.from_json_file(b / "config.json")
    if same_json:
        assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    for name, text in TOKENIZER.items():
        assert (b / name).read_text() == text


def test_jet_hf_orbax_hf_roundtrip_is_bitwise(tmp_path):
    """bf16 Jet-Nemotron checkpoint (jet + attn + swa) -> Orbax -> HF via the CLI."""
    hf, ob, back = tmp_path / "hf", tmp_path / "orbax", tmp_path / "back"
    random_jet_checkpoint(hf, TINY_JET, seed=1)
    _add_tokenizer(hf)
    assert main(["convert", "--from", str(hf), "--to", str(ob)]) == 0
    assert is_orbax_dir(ob) and not is_hf_dir(ob) and detect_format(ob) == "orbax"
    assert not list(ob.glob("*.safetensors"))
    for name in TOKENIZER:
        assert (ob / name).is_file()
    model = load_orbax(ob)
    assert model.config == TINY_JET
    assert model.model.embed_tokens.embedding[...].dtype == jnp.bfloat16
    assert main(["convert", "--from", str(ob), "--to", str(back)]) == 0
    assert detect_format(back) == "hf"
    _assert_same_hf(hf, back)


def test_qwen2_roundtrip_and_transformers_loads_export(tmp_path):
    """float32 transformers Qwen2 -> ours -> Orbax -> ours -> HF (float32): bitwise, and the
    export loads in AutoModelForCausalLM with our logits."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    src = tmp_path / "src"
    hf_model = tiny_qwen2(src, seed=2, tied=False)
    _add_tokenizer(src)
    model = from_hf(src)
    save_orbax(model, tmp_path / "ob", tokenizer_from=src)
    restored = load_model(tmp_path / "ob")
    assert params_equal(model, restored)
    to_hf(restored, tmp_path / "out", dtype=jnp.float32, tokenizer_from=tmp_path / "ob")
    _assert_same_hf(src, tmp_path / "out", same_json=False)  # transformers writes more fields

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = np.random.default_rng(0).integers(0, hf_model.config.vocab_size, (2, 11))
    with torch.no_grad():
        ref = loaded(torch.tensor(ids)).logits.numpy()
        orig = hf_model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_array_equal(ref, orig)
    np.testing.assert_allclose(np.asarray(restored(jnp.asarray(ids))), ref, atol=1e-4, rtol=0)


def test_convert_refuses_to_overwrite(tmp_path, capsys):
    hf, dst = tmp_path / "hf", tmp_path / "dst"
    random_jet_checkpoint(hf, TINY_JET, seed=3)
    dst.mkdir()
    (dst / "keep.txt").write_text("precious")
    assert main(["convert", "--from", str(hf), "--to", str(dst)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in dst.iterdir()) == ["keep.txt"]
    # An existing empty directory is fine; a second conversion onto it is refused ...
    (tmp_path / "empty").mkdir()
    assert main(["convert", "--from", str(hf), "--to", str(tmp_path / "empty")]) == 0
    assert main(["convert", "--from", str(hf), "--to", str(tmp_path / "empty")]) == 1
    # ... unless --overwrite.
    assert main(["convert", "--from", str(hf), "--to", str(dst), "--overwrite"]) == 0
    assert is_orbax_dir(dst) and not (dst / "keep.txt").exists()
    # Not a model directory at all.
    assert main(["convert", "--from", str(tmp_path / "nothing"), "--to", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "neither an HF model directory" in err and "training run" not in err
    # A training checkpoint step: the error says where a finished run leaves its model.
    step = tmp_path / "run" / "checkpoints" / "4"
    step.mkdir(parents=True)
    (step / "_CHECKPOINT_METADATA").write_text("{}")
    for src in (step, step.parent, step.parent.parent):
        assert main(["convert", "--from", str(src), "--to", str(tmp_path / "x")]) == 1
        assert "a finished `jet-jax distill` writes its student to <output_dir>/hf" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_orbax_dtype_override_and_hf_dtype(tmp_path):
    hf = tmp_path / "hf"
    tensors = random_jet_checkpoint(hf, TINY_JET, seed=4)
    assert main(["convert", "--from", str(hf), "--to", str(tmp_path / "ob"), "--dtype", "float32"]) == 0
    model = load_orbax(tmp_path / "ob")
    assert model.model.embed_tokens.embedding[...].dtype == jnp.float32
    emb = np.asarray(model.model.embed_tokens.embedding[...])
    np.testing.assert_array_equal(emb, tensors["model.embed_tokens.weight"].astype(np.float32))
    # Orbax -> HF keeps float32 (the stored dtype) by default.
    assert main(["convert", "--from", str(tmp_path / "ob"), "--to", str(tmp_path / "hf32")]) == 0
    assert read_hf_tensors(tmp_path / "hf32")["model.norm.weight"].dtype == np.float32
