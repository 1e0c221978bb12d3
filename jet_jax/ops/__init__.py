"""Token-mixing ops: gated delta rule and dynamic causal convolution."""
from jet_jax.ops.dynamic_conv import dynamic_causal_conv, dynamic_causal_conv_step
from jet_jax.ops.gated_delta_rule import gated_delta_rule, gated_delta_rule_step

__all__ = ["dynamic_causal_conv", "dynamic_causal_conv_step", "gated_delta_rule", "gated_delta_rule_step"]
