"""SwiGLU MLP: down(silu(gate(x)) * up(x)), no biases."""

import jax
import jax.numpy as jnp
from flax import nnx

from jet_jax.layers.fused_linear import project_inputs
from jet_jax.sharding import partitioned


class MLP(nnx.Module):
    """x: [B, T, D] -> [B, T, D]."""

    INPUT_PROJECTIONS = ("gate_proj", "up_proj")  # see jet_jax.layers.fused_linear

    def __init__(self, hidden_size: int, intermediate_size: int, *, init_std: float,
                 rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        init = nnx.initializers.normal(init_std)
        common = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = nnx.Linear(hidden_size, intermediate_size,
                                    kernel_init=partitioned(init, "embed", "mlp"), **common)
        self.up_proj = nnx.Linear(hidden_size, intermediate_size,
                                  kernel_init=partitioned(init, "embed", "mlp"), **common)
        self.down_proj = nnx.Linear(intermediate_size, hidden_size,
                                    kernel_init=partitioned(init, "mlp", "embed"), **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = project_inputs(self, x)
        return self.down_proj(jax.nn.silu(gate) * up)
