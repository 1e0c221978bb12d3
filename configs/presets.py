"""The model presets live in the library (`jet_jax.presets`); re-exported for config files."""

from jet_jax.presets import (JET_NEMOTRON_2B, JET_NEMOTRON_4B, PRESETS, QWEN2_5_1_5B,  # noqa: F401
                             QWEN2_5_3B, TINY_JET, TINY_QWEN2, get_preset)
