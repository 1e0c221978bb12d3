"""Our model loaded from a tiny random transformers Qwen2 must give transformers' logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jet_jax.convert import from_hf
from tests.hf_fixtures import tiny_qwen2

CASES = {
    "untied_gqa3": dict(tied=False),
    "tied": dict(tied=True, seed=1),
    "gqa6to1": dict(hidden=48, heads=6, kv=1, inter=64, seed=2),
    "odd_sizes": dict(vocab=97, hidden=30, heads=5, kv=5, inter=41, layers=3, seed=3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(tmp_path, name):
    hf = tiny_qwen2(tmp_path, **CASES[name])
    model = from_hf(tmp_path)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, hf.config.vocab_size, size=(2, 19))
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(model(jnp.asarray(ids)))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_packed_documents_match_separate_hf_runs(tmp_path):
    """Two documents packed in one row == transformers on each document alone."""
    hf = tiny_qwen2(tmp_path, seed=4)
    model = from_hf(tmp_path)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 101, size=7), rng.integers(0, 101, size=12)
    packed = np.concatenate([a, b])[None]
    seg = np.array([[1] * 7 + [2] * 12])
    ours = np.asarray(model(jnp.asarray(packed), segment_ids=jnp.asarray(seg)))[0]
    with torch.no_grad():
        ra = hf(torch.tensor(a[None])).logits[0].numpy()
        rb = hf(torch.tensor(b[None])).logits[0].numpy()
    np.testing.assert_allclose(ours, np.concatenate([ra, rb]), atol=1e-4, rtol=0)


def test_loss_gradients_match_transformers(tmp_path):
    """Next-token CE gradients w.r.t. every parameter equal torch autograd through transformers
    (mapped back to HF names with the same key table the converter uses)."""
    from flax import nnx

    from jet_jax.convert.hf import model_to_hf_tensors

    hf = tiny_qwen2(tmp_path, layers=2, heads=4, kv=2, hidden=32, inter=40, vocab=50, seed=5)
    model = from_hf(tmp_path)
    ids = np.random.default_rng(2).integers(0, 50, size=(2, 21))
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
