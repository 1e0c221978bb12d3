"""The PostNAS once-for-all super-network (Jet-Nemotron paper, section 3.1).

Every layer holds the teacher's full-attention path (copied; trainable or frozen) *and* a
linear-attention path (JetBlock by default, or any zoo block by name); embeddings, norms and
MLPs are the teacher's and stay frozen. The forward takes a per-layer choice vector

    choice: int [L]   0 = linear path, 1 = full attention, 2 = sliding-window attention
                      (the teacher's attention weights with the SWA window)

(a bool `use_attn` [L] works too: True -> 1). `choice` is an ordinary traced array, so one
jitted train/eval step serves every sampled sub-network: each layer computes the paths the
super-network allows and selects with `jnp.where` (the MLP and norms are shared).

`extract_subnet(supernet, layer_types)` returns a plain `JetNemotronForCausalLM` holding the
chosen paths' weights; its forward equals the super-network's forward with the matching
choice vector (tested at float32 atol 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jet_jax.config import ModelConfig
from jet_jax.layers.attention import Attention
from jet_jax.layers.decoder import make_mixer
from jet_jax.layers.mlp import MLP
from jet_jax.layers.norms import RMSNorm
from jet_jax.model import (JetNemotronForCausalLM, constrain_residual, default_positions,
                           embed_lookup, make_lm_head, make_token_embedding, output_logits)
from jet_jax.sharding import sharded_init

LINEAR, ATTN, SWA = 0, 1, 2


def zoo_registry() -> dict[str, type]:
    """name -> class of the zoo blocks (`jet_jax.layers.zoo.MIXERS`)."""
    from jet_jax.layers.zoo import MIXERS
    return dict(MIXERS)


def linear_block_names() -> tuple[str, ...]:
    """Every linear-attention block the super-network can hold: "jet" then the zoo."""
    return ("jet",) + tuple(zoo_registry())


def build_linear_mixer(cfg: ModelConfig, block: str, *, rngs: nnx.Rngs, dtype=jnp.float32,
                       param_dtype=jnp.float32) -> nnx.Module:
    """The linear-attention mixer `block` exactly as `JetNemotronForCausalLM` would build it.

    Zoo blocks get num_heads / head_dim from `cfg.jet` overridden by `cfg.zoo_kwargs(block)`
    (the same rule as `jet_jax.layers.decoder.make_mixer`).
    """
    if block in ("attn", "swa"):
        raise ValueError(f"linear path must be a linear-attention block, got {block!r}")
    try:
        return make_mixer(cfg, block, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    except ImportError:  # decoder's zoo import not wired yet: same construction, local registry
        reg = zoo_registry()
        if block not in reg:
            raise ValueError(f"unknown linear block {block!r}; valid: {linear_block_names()}") from None
        kw = dict(num_heads=cfg.jet.num_heads, head_dim=cfg.jet.head_dim)
        kw.update(cfg.zoo_kwargs(block))
        return reg[block](cfg.hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype, **kw)


class _WindowedView:
    """`Attention.__call__` reads only attributes of `self`; this view swaps in a window so
    the SWA path reuses the full-attention weights without duplicating the attention code."""

    def __init__(self, attn: Attention, window: int):
        self._attn = attn
        self.window = window

    def __getattr__(self, name):
        return getattr(self._attn, name)


class SuperLayer(nnx.Module):
    """Pre-norm decoder layer with both mixers: x + Mixer_c(RMSNorm(x)), x + MLP(RMSNorm(x))."""

    def __init__(self, cfg: ModelConfig, block: str, *, enable_swa: bool, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32, attention_implementation: str = "auto"):
        norm = dict(eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.enable_swa = enable_swa
        self.window = cfg.window_size
        self.input_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.attn = Attention(cfg, window=None, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                              implementation=attention_implementation)
        self.linear = build_linear_mixer(cfg, block, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **norm)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, init_std=cfg.initializer_range,
                       rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def mix(self, h, choice, *, positions, segment_ids):
        """h: [B, T, D] (normed), choice: int scalar (traced) -> [B, T, D]."""
        y_lin, _ = self.linear(h, segment_ids=segment_ids)
        y_att, _ = self.attn(h, positions=positions, segment_ids=segment_ids)
        y = jnp.where(choice == ATTN, y_att, y_lin)
        if self.enable_swa:
            y_swa, _ = Attention.__call__(_WindowedView(self.attn, self.window), h,
                                          positions=positions, segment_ids=segment_ids)
            y = jnp.where(choice == SWA, y_swa, y)
        return y

    def __call__(self, x, choice, *, positions, segment_ids=None):
        """x: [B, T, D], choice: int scalar -> [B, T, D]."""
        x = x + self.mix(self.input_layernorm(x), choice, positions=positions,
                         segment_ids=segment_ids)
        return x + self.mlp(self.post_attention_layernorm(x))


class SuperModel(nnx.Module):
    def __init__(self, config: ModelConfig, block: str, *, enable_swa: bool, rngs: nnx.Rngs,
                 dtype, param_dtype, attention_implementation: str = "auto"):
        self.embed_tokens = make_token_embedding(config, rngs=rngs, dtype=dtype,
                                                 param_dtype=param_dtype)
        self.layers = nnx.List([
            SuperLayer(config, block, enable_swa=enable_swa, rngs=rngs, dtype=dtype,
                       param_dtype=param_dtype, attention_implementation=attention_implementation)
            for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype,
                            param_dtype=param_dtype)


class SuperNetwork(nnx.Module):
    """`supernet(input_ids [B, T], choice [L], segment_ids=None, positions=None)` -> logits
    [B, T, V] float32; with `return_hidden_states`, (logits, [h_0 .. h_L] each [B, T, D]).

    `config` is the teacher's config (all `attn`) carrying the linear block's settings
    (`jet`, `zoo`, `window_size`); `block` names the linear path. `attention_implementation`:
    the attention kernel of every path and of the sub-networks `extract_subnet` builds.
    """

    def __init__(self, config: ModelConfig, block: str = "jet", *, enable_swa: bool = False,
                 rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32,
                 attention_implementation: str = "auto", remat: bool = False):
        if block not in linear_block_names():
            raise ValueError(f"unknown linear block {block!r}; valid: {linear_block_names()}")
        self.config = config
        self.block = block
        self.enable_swa = enable_swa
        self.attention_implementation = attention_implementation
        self.remat = remat  # recompute each layer in the backward pass
        # Same parameter paths as JetNemotronForCausalLM ("model/embed_tokens", "model/layers/i/
        # mlp", ...), so jet_jax_train.optimizer's default freezing regexes apply unchanged.
        self.model = SuperModel(config, block, enable_swa=enable_swa, rngs=rngs, dtype=dtype,
                                param_dtype=param_dtype,
                                attention_implementation=attention_implementation)
        if not config.tie_word_embeddings:
            self.lm_head = make_lm_head(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        return output_logits(self, h)

    def __call__(self, input_ids: jax.Array, choice: jax.Array,
                 segment_ids: jax.Array | None = None, positions: jax.Array | None = None, *,
                 return_hidden_states: bool = False, head: bool = True):
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {input_ids.shape}")
        choice = jnp.asarray(choice)
        if choice.shape != (self.num_layers,):
            raise ValueError(f"choice must have shape ({self.num_layers},), got {choice.shape}")
        choice = choice.astype(jnp.int32)
        if positions is None:
            positions = default_positions(input_ids, segment_ids)
        h = constrain_residual(embed_lookup(self.model.embed_tokens, input_ids))
        hidden = [h]

        def run_layer(layer, h, c, positions, segment_ids):
            return constrain_residual(layer(h, c, positions=positions, segment_ids=segment_ids))

        if self.remat:
            run_layer = nnx.remat(run_layer)
        for i, layer in enumerate(self.model.layers):
            h = run_layer(layer, h, choice[i], positions, segment_ids)
            hidden.append(h)
        h = self.model.norm(h)
        logits = output_logits(self, h) if head else h
        return (logits, hidden) if return_hidden_states else logits

    # ---- construction from a teacher ----
    @classmethod
    def from_teacher(cls, teacher: JetNemotronForCausalLM, block: str = "jet", *,
                     enable_swa: bool = False, seed: int = 0, jet=None,
                     zoo: dict[str, dict] | None = None, window_size: int | None = None,
                     dtype=None, param_dtype=jnp.float32,
                     attention_implementation: str | None = None, mesh=None) -> "SuperNetwork":
        """Copy the teacher's embeddings, norms, MLPs and attention; init the linear paths.

        jet: a `JetBlockConfig` for the JetBlock paths (default: the teacher config's);
        zoo: {block: {num_heads, head_dim, expand_v}} overrides for zoo blocks;
        window_size: SWA window (default: the teacher config's);
        dtype: compute dtype, default the teacher's; param_dtype: the super-network's own
        parameters (the teacher's are copied into it);
        attention_implementation: default the teacher's attention kernel;
        mesh: build it sharded over this mesh by its logical axes (no device holds it whole;
        the teacher's arrays keep their own layout, which is the same for a teacher loaded
        with this mesh).
        """
        tcfg = teacher.config
        if not all(t == "attn" for t in tcfg.layer_types):
            raise ValueError(f"the teacher must be all full attention, got {tcfg.layer_types}")
        changes = {}
        if jet is not None:
            changes["jet"] = jet
        if zoo is not None:
            changes["zoo"] = tuple((k, tuple(sorted(v.items()))) for k, v in sorted(zoo.items()))
        if window_size is not None:
            changes["window_size"] = int(window_size)
        cfg = tcfg.replace(**changes) if changes else tcfg
        if attention_implementation is None:
            attention_implementation = teacher.model.layers[0].self_attn.implementation
        if dtype is None:
            dtype = teacher.model.embed_tokens.dtype or jnp.float32
        def make():
            return cls(cfg, block, enable_swa=enable_swa, rngs=nnx.Rngs(seed), dtype=dtype,
                       param_dtype=param_dtype, attention_implementation=attention_implementation)
        sup = make() if mesh is None else sharded_init(make, mesh)

        def copy(dst, src):
            # Into the super-network's own dtype: a teacher held in bf16 gives float32 copies
            # (same-dtype arrays are shared, not copied).
            nnx.update(dst, jax.tree.map(lambda x: x.astype(jnp.dtype(param_dtype)),
                                         nnx.state(src, nnx.Param)))

        tm, sm = teacher.model, sup.model
        copy(sm.embed_tokens, tm.embed_tokens)
        copy(sm.norm, tm.norm)
        if not cfg.tie_word_embeddings:
            copy(sup.lm_head, teacher.lm_head)
        for sl, tl in zip(sm.layers, tm.layers):
            for name in ("input_layernorm", "post_attention_layernorm", "mlp"):
                copy(getattr(sl, name), getattr(tl, name))
            copy(sl.attn, tl.self_attn)
        return sup


# ---- choices <-> layer types ----
def as_choice(choice_or_use_attn, num_layers: int | None = None) -> np.ndarray:
    """bool use_attn [L] or int choice [L] -> int32 choice [L] (validated)."""
    c = np.asarray(choice_or_use_attn)
    c = c.astype(np.int32)
    if c.ndim != 1 or (num_layers is not None and c.shape[0] != num_layers):
        raise ValueError(f"choice must be a vector of {num_layers} entries, got shape {c.shape}")
    if ((c < 0) | (c > SWA)).any():
        raise ValueError(f"choice entries must be 0 (linear), 1 (attn) or 2 (swa), got {c.tolist()}")
    return c


def layer_types_from_choice(choice, block: str) -> tuple[str, ...]:
    """int choice [L] -> layer_types, e.g. (0, 1, 2) -> ("jet", "attn", "swa")."""
    names = (block, "attn", "swa")
    return tuple(names[int(c)] for c in as_choice(choice))


def choice_from_layer_types(layer_types: Sequence[str], block: str) -> np.ndarray:
    """layer_types -> int32 choice [L]; raises on a type this super-network cannot express."""
    code = {block: LINEAR, "attn": ATTN, "swa": SWA}
    bad = [(i, t) for i, t in enumerate(layer_types) if t not in code]
    if bad:
        raise ValueError(f"layer types {bad} are not expressible by a super-network with linear "
                         f"block {block!r} (valid: {block!r}, 'attn', 'swa')")
    return np.array([code[t] for t in layer_types], np.int32)


def subnet_config(supernet: SuperNetwork, layer_types: Sequence[str]) -> ModelConfig:
    """The `ModelConfig` of the sub-network with these layer types (validated)."""
    c = choice_from_layer_types(layer_types, supernet.block)
    if (c == SWA).any() and not supernet.enable_swa:
        raise ValueError("this super-network was built without SWA paths (enable_swa=False)")
    return supernet.config.replace(layer_types=tuple(layer_types))


def extract_subnet(supernet: SuperNetwork, layer_types: Sequence[str], *,
                   dtype=None, param_dtype=None) -> JetNemotronForCausalLM:
    """A standalone `JetNemotronForCausalLM` holding the chosen paths' weights (copied refs).

    Its forward equals `supernet(ids, choice_from_layer_types(layer_types, supernet.block))`.
    Zoo blocks are registered layer types, so the sub-network's config names them exactly.
    """
    layer_types = tuple(layer_types)
    cfg = subnet_config(supernet, layer_types)
    emb = supernet.model.embed_tokens
    dtype = emb.dtype if dtype is None else dtype
    param_dtype = emb.param_dtype if param_dtype is None else param_dtype
    model = nnx.eval_shape(lambda: JetNemotronForCausalLM(
        cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype,
        attention_implementation=supernet.attention_implementation))
    m = model.model
    nnx.update(m.embed_tokens, nnx.state(supernet.model.embed_tokens))
    nnx.update(m.norm, nnx.state(supernet.model.norm))
    if not cfg.tie_word_embeddings:
        nnx.update(model.lm_head, nnx.state(supernet.lm_head))
    for t, ml, sl in zip(layer_types, m.layers, supernet.model.layers):
        for name in ("input_layernorm", "post_attention_layernorm", "mlp"):
            nnx.update(getattr(ml, name), nnx.state(getattr(sl, name)))
        if t in ("attn", "swa"):
            nnx.update(ml.self_attn, nnx.state(sl.attn))
        else:
            nnx.update(ml.self_attn, nnx.state(sl.linear))
    leftover = [p for p, v in nnx.to_flat_state(nnx.state(model))
                if isinstance(v.get_value() if hasattr(v, "get_value") else v, jax.ShapeDtypeStruct)]
    if leftover:
        raise RuntimeError(f"extract_subnet left parameters uninitialised: {leftover[:5]}")
    return model


def frozen_patterns(base: Sequence[str], train_attention: bool = False) -> tuple[str, ...]:
    """jet_jax_train.optimizer freezing regexes for a super-network: `base` (embeddings, MLPs, norms by
    default) plus the attention paths unless `train_attention`."""
    return tuple(base) + (() if train_attention else (r"/attn/",))


def count_params(module: nnx.Module, filt=nnx.Param) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, filt))))
