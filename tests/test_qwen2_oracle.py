"""Our model loaded from a tiny random transformers Qwen2 must give transformers' logits."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jet_jax.convert import from_hf
from tests.hf_fixtures import assert_loss_gradients_match_torch, tiny_qwen2

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
    hf = tiny_qwen2(tmp_path, layers=2, heads=4, kv=2, hidden=32, inter=40, vocab=50, seed=5)
    model = from_hf(tmp_path)
    assert_loss_gradients_match_torch(hf, model, np.random.default_rng(2).integers(0, 50, size=(2, 21)))
