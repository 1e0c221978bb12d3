"""A model as a static graph plus a flat parameter dict {"model/layers/0/mlp/up_proj/kernel": array}.

Training keeps parameters in this form: string keys make optax labels (freezing), shardings
and Orbax checkpoints simple and stable, and `merge` rebuilds the NNX module inside jit.
"""

from __future__ import annotations

from typing import Mapping

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jet_jax.sharding import state_shardings


def path_name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


class FlatModel:
    """Static half of a split model: `params(model)` -> flat dict, `merge(params)` -> model."""

    def __init__(self, model: nnx.Module):
        self.graphdef, state = nnx.split(model)
        flat = list(nnx.to_flat_state(state))
        for path, var in flat:
            if not isinstance(var, nnx.Param):
                raise TypeError(f"{path_name(path)} is a {type(var).__name__}; only nnx.Param state "
                                "is supported in training")
        # Abstract Variables keep the metadata (logical sharding names) without the arrays.
        self._template = {path_name(p): (p, jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), var)) for p, var in flat}
        self.config = getattr(model, "config", None)

    @property
    def names(self) -> list[str]:
        return list(self._template)

    def params(self, model: nnx.Module) -> dict[str, jax.Array]:
        _, state = nnx.split(model)
        out = {path_name(p): var.get_value() for p, var in nnx.to_flat_state(state)}
        if set(out) != set(self._template):
            raise ValueError("model does not match this FlatModel's structure")
        return out

    def abstract_params(self) -> dict[str, jax.ShapeDtypeStruct]:
        return {k: var.get_value() for k, (_, var) in self._template.items()}

    def state(self, params: Mapping[str, jax.Array]) -> nnx.State:
        missing = set(self._template) - set(params)
        extra = set(params) - set(self._template)
        if missing or extra:
            raise ValueError(f"parameter dict mismatch: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(extra)[:5]}")
        return nnx.from_flat_state([(path, var.replace(params[k]))
                                    for k, (path, var) in self._template.items()])

    def merge(self, params: Mapping[str, jax.Array]) -> nnx.Module:
        return nnx.merge(self.graphdef, self.state(params))

    def shardings(self, mesh: Mesh) -> dict[str, NamedSharding]:
        """NamedSharding per parameter from its logical axis names (jet_jax.sharding rules)."""
        state = nnx.from_flat_state([(p, v) for p, v in self._template.values()])
        flat = dict(nnx.to_flat_state(state_shardings(state, mesh)))
        return {k: flat[p] for k, (p, _) in self._template.items()}
