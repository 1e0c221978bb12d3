"""jet-jax: Jet-Nemotron (hybrid GDN/attention LLM from PostNAS) in JAX / Flax NNX."""

from jet_jax.config import JetBlockConfig, ModelConfig, hybrid_layer_types
from jet_jax.model import JetNemotronForCausalLM
from jet_jax.ops.dynamic_conv import dynamic_causal_conv
from jet_jax.ops.gated_delta_rule import gated_delta_rule

__all__ = ["JetBlockConfig", "JetNemotronForCausalLM", "ModelConfig", "dynamic_causal_conv",
           "gated_delta_rule", "hybrid_layer_types"]
__version__ = "0.1.0"
