"""The `--dtype` choice of the inference commands (`jet-jax generate`, `jet-jax eval`)."""

from __future__ import annotations

CHOICES = ("auto", "float32", "bfloat16")
HELP = ("parameter/compute dtype; auto: as stored, except float32 on CPU (XLA:CPU computes a "
        "bf16 matmul by converting its weights to float32 on every call: the 2B bf16 decode "
        "step takes 7x the float32 time)")


def param_dtype(choice: str):
    """`load_model`'s param_dtype for a `--dtype` choice: None keeps the stored dtype."""
    import jax
    import jax.numpy as jnp

    if choice == "auto":
        return jnp.dtype(jnp.float32) if jax.default_backend() == "cpu" else None
    return jnp.dtype(choice)
