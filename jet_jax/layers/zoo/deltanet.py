"""DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length") as a PostNAS candidate block: Gated DeltaNet without the decay.

    q, k, v = silu(conv4(x W{q,k,v})); q, k l2-normalised; beta = sigmoid(x Wb)
    S <- S + beta_t k_t (v_t - S^T k_t)^T;  o_t = S^T (dk^-0.5 q_t)
    y = o_proj( RMSNorm_head(o) * w * silu(x Wg) )

The delta-rule core (recurrent reference and chunked WY form) is the one in
`gated_deltanet.py` called with g = None. The output gate is kept so the only difference from
Gated DeltaNet is the decay (FLA's DeltaNet layer defaults to no gate: plain RMSNorm).
"""

from __future__ import annotations

from jet_jax.layers.zoo.gated_deltanet import GatedDeltaNet


class DeltaNet(GatedDeltaNet):
    """x: [B, T, D] -> [B, T, D]. Cache: conv_q/conv_k [B, W-1, K], conv_v [B, W-1, V],
    state [B, H, dk, dv] f32. Same constructor as `GatedDeltaNet`; no a_proj/A_log/dt_bias."""

    gated = False
