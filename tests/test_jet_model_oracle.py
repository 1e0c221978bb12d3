"""The whole hybrid model (jet + attn + swa) against an independent torch build of the spec."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jet_jax_configs.presets import TINY_JET
from jet_jax.convert.hf import model_to_hf_tensors
from jet_jax.model import JetNemotronForCausalLM
from tests.torch_jet_reference import torch_jet_nemotron


def _randomise(model, seed):
    """Non-trivial values everywhere (the JetBlock's generator starts at zero)."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [0.1 * jax.random.normal(k, x.shape, x.dtype) + (1.0 if x.ndim == 1 else 0.0)
              for k, x in zip(keys, leaves)]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))


@pytest.mark.parametrize("implementation", ["recurrent", "chunked"])
def test_hybrid_logits_match_torch_reference(implementation):
    cfg = TINY_JET.replace(tie_word_embeddings=False)
    model = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), gdr_implementation=implementation)
    _randomise(model, 1)
    ref = torch_jet_nemotron(cfg)
    tensors = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in model_to_hf_tensors(model, jnp.float32).items()}
    ref.load_state_dict(tensors, strict=True)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 50))  # > window 32
    with torch.no_grad():
        expected = ref(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), expected, atol=2e-4, rtol=1e-4)


def test_packed_documents_equal_separate_runs():
    cfg = TINY_JET
    model = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), gdr_implementation="chunked")
    _randomise(model, 2)
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, cfg.vocab_size, size=n) for n in (40, 9, 30)]
    packed = np.concatenate(docs)[None]
    seg = np.concatenate([np.full(len(d), i + 1) for i, d in enumerate(docs)])[None]
    out = np.asarray(model(jnp.asarray(packed), segment_ids=jnp.asarray(seg)))[0]
    alone = np.concatenate([np.asarray(model(jnp.asarray(d[None])))[0] for d in docs])
    np.testing.assert_allclose(out, alone, atol=1e-4, rtol=1e-4)
