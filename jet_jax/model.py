"""JetNemotronForCausalLM: embeddings, decoder layers of any `layer_types`, final norm, LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jet_jax.config import ModelConfig
from jet_jax.layers.decoder import DecoderLayer
from jet_jax.layers.norms import RMSNorm
from jet_jax.layers.rope import positions_from_segments
from jet_jax.sharding import partitioned


def make_token_embedding(cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype) -> nnx.Embed:
    """The [vocab, hidden] input embedding (also the output head when tied)."""
    return nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=partitioned(nnx.initializers.normal(cfg.initializer_range), "vocab", "embed"),
        rngs=rngs)


def make_lm_head(cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype) -> nnx.Linear:
    """The untied output head, kernel [hidden, vocab]."""
    return nnx.Linear(
        cfg.hidden_size, cfg.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
        rngs=rngs, kernel_init=partitioned(nnx.initializers.normal(cfg.initializer_range), "embed", "vocab"))


def default_positions(input_ids: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """[B, T] positions: restarting at every document of `segment_ids`, else 0..T-1."""
    if segment_ids is not None:
        return positions_from_segments(segment_ids)
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)


def output_logits(model, h: jax.Array) -> jax.Array:
    """float32 logits of final hidden states h [.., D] for any module with `config`,
    `model.embed_tokens` and (untied) `lm_head`: this model and the PostNAS super-network."""
    if model.config.tie_word_embeddings:
        logits = model.model.embed_tokens.attend(h)
    else:
        logits = model.lm_head(h)
    return logits.astype(jnp.float32)


class JetNemotronModel(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype,
                 gdr_implementation: str, conv_implementation: str):
        self.embed_tokens = make_token_embedding(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.layers = nnx.List([
            DecoderLayer(cfg, t, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                         gdr_implementation=gdr_implementation, conv_implementation=conv_implementation)
            for t in cfg.layer_types])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)


class JetNemotronForCausalLM(nnx.Module):
    """Call as `model(input_ids [B, T], segment_ids=None)` -> logits [B, T, vocab] (float32).

    `segment_ids` [B, T] marks packed documents: attention, convolutions and recurrent states
    never cross a document boundary, and RoPE positions restart per document unless
    `positions` is given.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, gdr_implementation: str = "auto",
                 conv_implementation: str = "auto", remat: bool = False):
        self.config = config
        self.remat = remat
        self.model = JetNemotronModel(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                                      gdr_implementation=gdr_implementation,
                                      conv_implementation=conv_implementation)
        if not config.tie_word_embeddings:
            self.lm_head = make_lm_head(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> list[dict]:
        """One cache per layer: KV buffer (`attn`), ring buffer (`swa`), O(1) state (linear)."""
        return [layer.self_attn.init_cache(batch_size, max_length, dtype) for layer in self.model.layers]

    def cache_bytes(self, batch_size: int, context: int, dtype_bytes: int = 2) -> int:
        return sum(layer.self_attn.cache_bytes(batch_size, context, dtype_bytes)
                   for layer in self.model.layers)

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        return output_logits(self, h)

    def __call__(self, input_ids: jax.Array, segment_ids: jax.Array | None = None,
                 positions: jax.Array | None = None, *, cache: list[dict] | None = None,
                 return_hidden_states: bool = False, last_only: bool = False):
        """input_ids: [B, T] int.

        Returns logits [B, T, V]; with `cache`, (logits, new_cache); with
        `return_hidden_states`, (logits, [h_0 .. h_L] each [B, T, D], the embeddings then the
        output of every layer). `last_only`: logits of the last position only, [B, 1, V], so a
        long prefill never materialises [B, T, V].
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {input_ids.shape}")
        if segment_ids is not None and segment_ids.shape != input_ids.shape:
            raise ValueError(f"segment_ids shape {segment_ids.shape} != input_ids shape {input_ids.shape}")
        if cache is not None and len(cache) != len(self.model.layers):
            raise ValueError(f"cache has {len(cache)} layers, model has {len(self.model.layers)}")
        if positions is None:
            if cache is not None:
                raise ValueError("positions are required when decoding with a cache")
            positions = default_positions(input_ids, segment_ids)
        h = self.model.embed_tokens(input_ids)
        hidden = [h]
        new_cache = []

        def run_layer(layer, h, positions, segment_ids, layer_cache):
            return layer(h, positions=positions, segment_ids=segment_ids, cache=layer_cache)

        if self.remat and cache is None:
            run_layer = nnx.remat(run_layer)
        for i, layer in enumerate(self.model.layers):
            h, c = run_layer(layer, h, positions, segment_ids, None if cache is None else cache[i])
            new_cache.append(c)
            if return_hidden_states:
                hidden.append(h)
        logits = self.logits_from_hidden(self.model.norm(h[:, -1:] if last_only else h))
        if cache is not None:
            return logits, new_cache
        if return_hidden_states:
            return logits, hidden
        return logits
