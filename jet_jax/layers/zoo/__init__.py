"""PostNAS linear-attention candidates (Jet-Nemotron section 3, step 2), one `LinearMixer` each.

`get_mixer(name)` -> class; all share the constructor and call convention of
`base.LinearMixer`: `cls(hidden_size, num_heads=, head_dim=, expand_v=, rngs=, ...)`,
`y, new_cache = mixer(x, segment_ids=None, cache=None)`.
"""

from __future__ import annotations

from jet_jax.layers.zoo.base import LinearMixer
from jet_jax.layers.zoo.deltanet import DeltaNet
from jet_jax.layers.zoo.gated_deltanet import GatedDeltaNet
from jet_jax.layers.zoo.gla import GatedLinearAttention
from jet_jax.layers.zoo.mamba2 import Mamba2
from jet_jax.layers.zoo.retnet import RetNet

MIXERS: dict[str, type[LinearMixer]] = {
    "gdn": GatedDeltaNet,
    "deltanet": DeltaNet,
    "gla": GatedLinearAttention,
    "mamba2": Mamba2,
    "retnet": RetNet,
}


def get_mixer(name: str) -> type[LinearMixer]:
    """The mixer class registered under `name`; KeyError naming the valid names otherwise."""
    try:
        return MIXERS[name]
    except KeyError:
        raise KeyError(f"unknown linear mixer {name!r}; valid names: {sorted(MIXERS)}") from None


__all__ = ["LinearMixer", "MIXERS", "get_mixer", "GatedDeltaNet", "DeltaNet",
           "GatedLinearAttention", "Mamba2", "RetNet"]
