"""Checkpoint conversion: HF safetensors directories <-> JAX models."""

from jet_jax.convert.hf import CheckpointMismatchError, abstract_model, from_hf, read_hf_tensors, to_hf
from jet_jax.convert.key_table import KeySpec, key_table

__all__ = ["CheckpointMismatchError", "KeySpec", "abstract_model", "from_hf", "key_table",
           "read_hf_tensors", "to_hf"]
