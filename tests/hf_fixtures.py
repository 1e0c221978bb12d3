"""Tiny random HF models built in-process (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from jet_jax.config import ModelConfig
from jet_jax.convert.hf import _write_shards
from jet_jax.convert.key_table import key_table


def tiny_qwen2(path, *, vocab=101, hidden=36, inter=37, layers=2, heads=3, kv=1, tied=False,
               seed=0, dtype=torch.float32) -> Qwen2ForCausalLM:
    """Save a random Qwen2ForCausalLM to `path` with save_pretrained and return it (eval mode)."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      tie_word_embeddings=tied, rope_theta=10000.0 + seed, max_position_embeddings=512)
    model = Qwen2ForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():  # random biases and norms, so every tensor is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def random_jet_checkpoint(path, cfg: ModelConfig, *, seed=0, dtype="bfloat16",
                          max_shard_bytes=1 << 40) -> dict[str, np.ndarray]:
    """An HF Jet-Nemotron directory with random tensors of the official names and shapes."""
    import ml_dtypes
    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    tensors = {s.hf_key: (0.05 * rng.standard_normal(s.hf_shape)).astype(np_dtype) for s in key_table(cfg)}
    path.mkdir(parents=True, exist_ok=True)
    cfg.save_json(path / "config.json")
    _write_shards(tensors, path, max_shard_bytes)
    return tensors
