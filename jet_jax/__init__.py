"""jet-jax: Jet-Nemotron in JAX/Flax NNX."""
