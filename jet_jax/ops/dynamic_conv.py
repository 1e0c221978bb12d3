"""Dynamic causal depthwise convolution (JetBlock's value convolution).

Each token t and channel c has its own kernel of W taps; tap W-1 multiplies the
current token:

    y[t, c] = act( sum_{w=0..W-1} kernels[t, c, w] * x[t - (W-1) + w, c] )

History before the first token (or before a document start, with `segment_ids`) is
zero, or comes from `conv_state` [B, C, W]: the last W inputs of a previous call
(the decode cache layout, index W-1 = newest).

`implementation="reference"` is the shifted-sum form below; "pallas" defers to
`pallas_kernels.dynamic_conv` (a TPU kernel); "auto" runs it only on a backend where
`pallas_kernels.verified` records it as verified on a device (none yet), else the reference.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jet_jax.ops.backend import select_pallas
from jet_jax.ops.shard_map_kernel import call_per_shard
from jet_jax.ops.segments import document_index

__all__ = ["dynamic_causal_conv", "dynamic_causal_conv_step", "IMPLEMENTATIONS"]

IMPLEMENTATIONS = ("auto", "reference", "pallas")
_ACTIVATIONS = (None, "silu")


def _validate(x, kernels, segment_ids, conv_state, activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"dynamic_causal_conv: unknown activation {activation!r}; expected one of {_ACTIVATIONS}")
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"dynamic_causal_conv: x must be [B, T, C], got shape {getattr(x, 'shape', None)}")
    B, T, C = x.shape
    if getattr(kernels, "ndim", None) != 4 or kernels.shape[:3] != (B, T, C):
        raise ValueError(
            f"dynamic_causal_conv: kernels must be [B, T, C, W] = [{B}, {T}, {C}, W], "
            f"got shape {getattr(kernels, 'shape', None)}"
        )
    W = kernels.shape[3]
    if W < 1:
        raise ValueError("dynamic_causal_conv: kernel width W must be >= 1")
    for name, a in (("x", x), ("kernels", kernels)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise ValueError(f"dynamic_causal_conv: {name} must be floating point, got dtype {a.dtype}")
    if segment_ids is not None:
        if getattr(segment_ids, "shape", None) != (B, T):
            raise ValueError(
                f"dynamic_causal_conv: segment_ids must be [B, T] = {(B, T)}, got shape {getattr(segment_ids, 'shape', None)}"
            )
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(f"dynamic_causal_conv: segment_ids must be integer, got dtype {segment_ids.dtype}")
    if conv_state is not None and getattr(conv_state, "shape", None) != (B, C, W):
        raise ValueError(
            f"dynamic_causal_conv: conv_state must be [B, C, W] = {(B, C, W)}, got shape {getattr(conv_state, 'shape', None)}"
        )
    return B, T, C, W


def _reference(x, kernels, segment_ids, conv_state, output_final_state, activation):
    """Shifted sums in float32. x: [B, T, C]; kernels: [B, T, C, W]; conv_state: [B, C, W]."""
    B, T, C = x.shape
    W = kernels.shape[-1]
    xf = x.astype(jnp.float32)
    kf = kernels.astype(jnp.float32)
    if conv_state is None:
        hist = jnp.zeros((B, W, C), jnp.float32)
    else:
        hist = jnp.swapaxes(conv_state.astype(jnp.float32), 1, 2)  # [B, W, C], row W-1 newest
    xh = jnp.concatenate([hist, xf], axis=1)  # [B, W + T, C]; token t sits at row W + t
    if segment_ids is not None:
        doc = document_index(segment_ids)
        # history belongs to document 0, i.e. only to the first document of the row
        doch = jnp.concatenate([jnp.zeros((B, W), jnp.int32), doc], axis=1)
    y = jnp.zeros((B, T, C), jnp.float32)
    for w in range(W):
        src = xh[:, w + 1 : w + 1 + T]  # x[t - (W-1) + w]
        if segment_ids is not None:
            src = jnp.where((doch[:, w + 1 : w + 1 + T] == doc)[..., None], src, 0.0)
        y = y + kf[..., w] * src
    if activation == "silu":
        y = jax.nn.silu(y)
    y = y.astype(x.dtype)
    if not output_final_state:
        return y
    last = xh[:, -W:]  # the last W inputs, zero (or old history) where fewer
    if segment_ids is not None:
        # a continuation only ever extends the last document
        last = jnp.where((doch[:, -W:] == doc[:, -1:])[..., None], last, 0.0)
    return y, jnp.swapaxes(last, 1, 2).astype(x.dtype if conv_state is None else conv_state.dtype)


@jax.named_scope("dynamic_conv")  # labels its compiled ops in profiles
def dynamic_causal_conv(
    x,
    kernels,
    *,
    segment_ids=None,
    conv_state=None,
    output_final_state=False,
    activation=None,
    implementation="auto",
):
    """Per-token, per-channel causal convolution.

    Args:
      x: [B, T, C]; kernels: [B, T, C, W] (tap W-1 = current token).
      segment_ids: [B, T] int; no history crosses a change of id.
      conv_state: [B, C, W] last W inputs of a previous call (first document only).
      output_final_state: also return the last W inputs [B, C, W] (zero where fewer,
        and zero for inputs of earlier documents when segment_ids is given).
      activation: None or "silu".
      implementation: "auto" | "reference" | "pallas".
    Returns:
      y: [B, T, C] in x's dtype, or (y, final_conv_state).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"dynamic_causal_conv: unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}"
        )
    _validate(x, kernels, segment_ids, conv_state, activation)
    if implementation in ("auto", "pallas"):
        # "auto": only where the kernel is recorded as verified (see jet_jax.ops.backend)
        fn = select_pallas("dynamic_causal_conv", "pallas_kernels.dynamic_conv", "dynamic_causal_conv_pallas",
                           implementation)
        if fn is not None:
            # per device under a mesh (batch over data/fsdp, channels over tensor): no gather
            kernel = lambda x, kernels, seg, state: fn(
                x, kernels, segment_ids=seg, conv_state=state,
                output_final_state=output_final_state, activation=activation,
            )
            btc, bcw = ("batch", None, "heads"), ("batch", "heads", None)
            return call_per_shard(
                kernel, (x, kernels, segment_ids, conv_state),
                (btc, ("batch", None, "heads", None), ("batch", None), bcw),
                (btc, bcw) if output_final_state else btc,
            )
    return _reference(x, kernels, segment_ids, conv_state, output_final_state, activation)


def dynamic_causal_conv_step(x_t, kernel_t, conv_state, activation=None):
    """One decoding step: the full op with T = 1.

    Args:
      x_t: [B, C]; kernel_t: [B, C, W]; conv_state: [B, C, W] (last W inputs).
    Returns:
      y_t: [B, C], new_state: [B, C, W] (shifted left, x_t at index W-1).
    """
    if getattr(x_t, "ndim", None) != 2:
        raise ValueError(f"dynamic_causal_conv_step: x_t must be [B, C], got shape {getattr(x_t, 'shape', None)}")
    if getattr(kernel_t, "ndim", None) != 3:
        raise ValueError(
            f"dynamic_causal_conv_step: kernel_t must be [B, C, W], got shape {getattr(kernel_t, 'shape', None)}"
        )
    if conv_state is None:
        raise ValueError("dynamic_causal_conv_step: conv_state [B, C, W] is required (zeros for a fresh sequence)")
    y, state = dynamic_causal_conv(
        x_t[:, None], kernel_t[:, None], conv_state=conv_state, output_final_state=True,
        activation=activation, implementation="reference",
    )
    return y[:, 0], state
