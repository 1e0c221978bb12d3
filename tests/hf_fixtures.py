"""Tiny random HF models built in-process (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

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


def _randomize_norms_and_biases(model) -> None:
    with torch.no_grad():  # random biases and norms, so every tensor is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))


def tiny_llama(path, *, vocab=101, hidden=32, inter=40, layers=2, heads=4, kv=2, tied=False,
               head_dim=None, rope_scaling=None, seed=0, dtype=torch.float32, init_std=0.02) -> LlamaForCausalLM:
    """Save a random LlamaForCausalLM to `path` with save_pretrained and return it (eval mode).
    `rope_scaling`: None (default RoPE) or a dict with `rope_type` linear / llama3."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(initializer_range=init_std, vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      head_dim=head_dim, tie_word_embeddings=tied, rope_theta=10000.0 + seed,
                      rope_scaling=rope_scaling,  # the spelling transformers 4 and 5 both read
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    _randomize_norms_and_biases(model)
    model.save_pretrained(path)
    return model


def tiny_qwen3(path, *, vocab=101, hidden=32, inter=40, layers=2, heads=4, kv=2, tied=False,
               head_dim=8, seed=0, dtype=torch.float32, init_std=0.02) -> Qwen3ForCausalLM:
    """Save a random Qwen3ForCausalLM (per-head q/k RMSNorm, explicit head_dim) to `path`."""
    torch.manual_seed(seed)
    cfg = Qwen3Config(initializer_range=init_std, vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                      head_dim=head_dim, tie_word_embeddings=tied,
                      rope_theta=10000.0 + seed,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    model = Qwen3ForCausalLM(cfg).to(dtype).eval()
    _randomize_norms_and_biases(model)
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


def assert_loss_gradients_match_torch(hf, model, ids) -> None:
    """The mean next-token CE of `model` (jet-jax) on ids [B, T] and its gradient with respect to
    every parameter equal transformers' loss and torch autograd on `hf` (loss rtol 1e-5,
    gradients within 1e-4 of the largest entry of each tensor), compared under HF names."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jet_jax.convert.hf import model_to_hf_tensors

    hf.zero_grad()
    ref_loss = hf(torch.tensor(ids), labels=torch.tensor(ids)).loss
    ref_loss.backward()
    ref = {n: p.grad.numpy() for n, p in hf.named_parameters()}

    def loss_fn(m):
        logp = jax.nn.log_softmax(m(jnp.asarray(ids))[:, :-1], axis=-1)
        return -jnp.take_along_axis(logp, jnp.asarray(ids)[:, 1:, None], axis=-1).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    np.testing.assert_allclose(float(loss), ref_loss.item(), rtol=1e-5)
    nnx.update(model, grads)  # the model now holds its gradients: reuse the key table
    ours = model_to_hf_tensors(model, dtype=jnp.float32)
    assert set(ours) == set(ref), set(ours) ^ set(ref)
    for name, g in ref.items():
        scale = max(np.abs(g).max(), 1e-6)
        np.testing.assert_allclose(ours[name], g, atol=1e-4 * scale, rtol=0, err_msg=name)


def hf_greedy(hf, prompt, n_new: int) -> list[int]:
    """transformers' greedy `generate` of exactly `n_new` tokens after `prompt` (no EOS stop)."""
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new,
                          eos_token_id=None, pad_token_id=0)
    assert ref.shape[1] == len(prompt) + n_new
    return ref[0].tolist()
