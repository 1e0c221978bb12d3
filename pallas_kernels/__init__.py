"""Pallas kernels for jet-jax: chunked gated delta rule and dynamic causal convolution.

Public entry points (submodules are imported lazily by the jet_jax ops):
  pallas_kernels.gdr.gated_delta_rule_pallas
  pallas_kernels.dynamic_conv.dynamic_causal_conv_pallas / dynamic_causal_conv_step
"""
