"""JetNemotronForCausalLM: embeddings, decoder layers of any `layer_types`, final norm, LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jet_jax.config import ModelConfig
from jet_jax.layers.decoder import DecoderLayer
from jet_jax.layers.fused_linear import fuse_inputs, unfuse_inputs

ATTENTION_TYPES = ("attn", "swa")  # layers whose decode cache is a KV buffer
from jet_jax.layers.norms import RMSNorm
from jet_jax.layers.rope import positions_from_segments
from jet_jax.sharding import constrain, current_step_mesh, partitioned


def make_token_embedding(cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype) -> nnx.Embed:
    """The [vocab, hidden] input embedding (also the output head when tied)."""
    return nnx.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
        embedding_init=partitioned(nnx.initializers.normal(cfg.initializer_range), "vocab", "embed"),
        rngs=rngs)


def embed_lookup(embed: nnx.Embed, input_ids: jax.Array) -> jax.Array:
    """input_ids [B, T] -> [B, T, D] rows of `embed`'s table.

    Under `step_mesh` the table is first gathered over its `embed` (fsdp) axis, the usual
    FSDP weight gather, so the lookup comes out sharded like its ids (over the batch).
    Looked up straight from the (vocab, embed)-sharded table, the rows came out sharded over
    D, and XLA resharded them to the batch by replicating the whole [B, T, D] on every
    device ("involuntary full rematerialization", in the forward and the backward)."""
    if current_step_mesh() is None:
        return embed(input_ids)
    table = constrain(embed.embedding[...], "activation_vocab", "activation_embed")
    return jnp.take(table.astype(embed.dtype or table.dtype), input_ids, axis=0)


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
    return constrain(logits.astype(jnp.float32), "activation_batch", "activation_length",
                     "activation_vocab")


def constrain_residual(h: jax.Array) -> jax.Array:
    """The residual stream [B, T, D] stays batch-sharded (under `step_mesh`)."""
    return constrain(h, "activation_batch", "activation_length", "activation_embed")


def layer_runs(layer_types, scan: bool) -> list[tuple[int, int]]:
    """[start, stop) index ranges of the layers run together: maximal runs of consecutive
    same-type layers when scanning (each run is one `lax.scan`), else one layer each."""
    runs = []
    for i, t in enumerate(layer_types):
        if scan and runs and layer_types[runs[-1][0]] == t:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def stack_trees(trees):
    """Stack same-structure pytrees along a new leading axis (layer states, layer caches)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class JetNemotronModel(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype,
                 gdr_implementation: str, conv_implementation: str,
                 attention_implementation: str = "auto"):
        self.embed_tokens = make_token_embedding(cfg, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.layers = nnx.List([
            DecoderLayer(cfg, t, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                         gdr_implementation=gdr_implementation, conv_implementation=conv_implementation,
                         attention_implementation=attention_implementation)
            for t in cfg.layer_types])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)


class JetNemotronForCausalLM(nnx.Module):
    """Call as `model(input_ids [B, T], segment_ids=None)` -> logits [B, T, vocab] (float32).

    `segment_ids` [B, T] marks packed documents: attention, convolutions and recurrent states
    never cross a document boundary, and RoPE positions restart per document unless
    `positions` is given.

    `scan_layers=True` runs each maximal run of consecutive same-type layers as one
    `lax.scan` over their stacked parameters (stacked inside the traced function), so compile
    time stops growing with depth. Parameters stay stored per layer ("model/layers/i/..."):
    checkpoints, HF conversion and the PostNAS super-network see the same tree either way.
    Only the decode cache's layout follows the setting (one entry per stacked layer type,
    its layers stacked on a leading axis; see `cache_entries`). `attention_implementation`: see
    jet_jax.ops.attention.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, gdr_implementation: str = "auto",
                 conv_implementation: str = "auto", remat: bool = False,
                 scan_layers: bool = False, attention_implementation: str = "auto"):
        self.config = config
        self.remat = remat
        self.scan_layers = scan_layers
        self.layers_stacked = False  # True after `stack_layers` (per-type stacks in model.layer_stacks)
        self.model = JetNemotronModel(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                                      gdr_implementation=gdr_implementation,
                                      conv_implementation=conv_implementation,
                                      attention_implementation=attention_implementation)
        if not config.tie_word_embeddings:
            self.lm_head = make_lm_head(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def layer_runs(self) -> list[tuple[int, int]]:
        return layer_runs(self.config.layer_types, self.scan_layers)

    def cache_runs(self) -> list[tuple[int, int]]:
        """The runs a cached (prefill/decode) call uses: `layer_runs()` with attention runs
        split into single layers, so every KV buffer stays its own
        donated array that the step updates in place (slicing a layer out of a stacked KV
        buffer inside a scan copies it: 38% of the cache as temporaries, measured)."""
        out = []
        for a, z in self.layer_runs():
            if self.config.layer_types[a] in ATTENTION_TYPES:
                out.extend((i, i + 1) for i in range(a, z))
            else:
                out.append((a, z))
        return out

    def cache_entries(self) -> list[tuple[str, tuple[int, ...]]]:
        """The entries of `init_cache`'s list as (layer type, the layers it holds): one per
        layer, except that with `scan_layers` the layers of each type in `stacked_types()`
        share one entry, their states stacked on a leading axis in layer order. Every run of
        that type then indexes rows of that one entry (as of its parameter stack), so all
        runs of a type have the same loop body (XLA still compiles each loop on its own);
        attention layers keep one KV buffer each."""
        lt = self.config.layer_types
        types = self.stacked_types()
        out = []
        for i, t in enumerate(lt):
            if t not in types:
                out.append((t, (i,)))
            elif lt.index(t) == i:  # first layer of a stacked type: the type's entry
                out.append((t, tuple(j for j, u in enumerate(lt) if u == t)))
        return out

    def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> list[dict]:
        """One cache per entry of `cache_entries()`: KV buffer (`attn`), ring buffer (`swa`),
        O(1) state (linear); an entry of several layers stacks their caches on a leading axis."""
        out = []
        for _, layers in self.cache_entries():
            per_layer = [self._layer(i, False).self_attn.init_cache(batch_size, max_length, dtype)
                         for i in layers]
            out.append(per_layer[0] if len(layers) == 1 else stack_trees(per_layer))
        return out

    def stacked_types(self) -> tuple[str, ...]:
        """Layer types whose parameters `stack_layers` stacks, one [n_type, ...] stack per type:
        the types of multi-layer `cache_runs()` (linear layers; attention layers stay single)."""
        lt = self.config.layer_types
        return tuple(dict.fromkeys(lt[a] for a, z in self.cache_runs() if z - a > 1))

    def _type_index(self, i: int) -> int:
        """Row of layer i in its type's stack: how many layers of the same type precede it."""
        lt = self.config.layer_types
        return lt[:i].count(lt[i])

    def param_float_dtype(self):
        """The 16-bit float dtype of the parameters (None if they have none): what
        `float_bits` stacks hold as bits on CPU."""
        return _sixteen_bit_float(nnx.state(self.model.norm))

    def _layer(self, i: int, slice_params: bool = True) -> DecoderLayer:
        """Layer i as a module (sliced out of its type's stack after `stack_layers`; with
        `slice_params=False` the stack module itself, enough to describe the layer's cache)."""
        if not self.layers_stacked:
            return self.model.layers[i]
        lt = self.config.layer_types
        types = self.stacked_types()
        if lt[i] not in types:
            return self.model.layers[[j for j, t in enumerate(lt) if t not in types].index(i)]
        mod = self.model.layer_stacks[types.index(lt[i])]
        if not slice_params:
            return mod
        graphdef, state = nnx.split(mod)
        row = self._type_index(i)
        return nnx.merge(graphdef, floats_from_bits(jax.tree.map(lambda x: x[row], state),
                                                    self.param_float_dtype()))

    def cache_bytes(self, batch_size: int, context: int, dtype_bytes: int = 2) -> int:
        return sum(self._layer(i, False).self_attn.cache_bytes(batch_size, context, dtype_bytes)
                   for i in range(self.config.num_hidden_layers))

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        return output_logits(self, h)

    def __call__(self, input_ids: jax.Array, segment_ids: jax.Array | None = None,
                 positions: jax.Array | None = None, *, cache: list[dict] | None = None,
                 return_hidden_states: bool = False, last_only: bool = False, head: bool = True):
        """input_ids: [B, T] int.

        Returns logits [B, T, V]; with `cache`, (logits, new_cache); with
        `return_hidden_states`, (logits, [h_0 .. h_L] each [B, T, D], the embeddings then the
        output of every layer). `last_only`: logits of the last position only, [B, 1, V], so a
        long prefill never materialises [B, T, V]. `head=False`: the final normed hidden
        states [B, T, D] in place of the logits (for chunked losses that apply
        `logits_from_hidden` a few positions at a time).
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, time], got shape {input_ids.shape}")
        if segment_ids is not None and segment_ids.shape != input_ids.shape:
            raise ValueError(f"segment_ids shape {segment_ids.shape} != input_ids shape {input_ids.shape}")
        # A stacked model runs the cache runs (attention layers stay single).
        runs = self.layer_runs() if cache is None and not self.layers_stacked else self.cache_runs()
        entries = self.cache_entries()
        if cache is not None and len(cache) != len(entries):
            raise ValueError(f"cache has {len(cache)} entries, model expects {len(entries)} "
                             f"(scan_layers={self.scan_layers}); build it with model.init_cache")
        if positions is None:
            if cache is not None:
                raise ValueError("positions are required when decoding with a cache")
            positions = default_positions(input_ids, segment_ids)
        h = constrain_residual(embed_lookup(self.model.embed_tokens, input_ids))
        hidden = [h]
        entry_of = {i: k for k, (_, layers) in enumerate(entries) for i in layers}
        new_cache = None if cache is None else list(cache)
        # Inference (a cache, or stacked parameters): every run of a stacked type scans rows
        # of its type's parameter stack and cache entry. Training scans each run's own
        # parameters as scan inputs (their gradients come out stacked, not accumulated).
        type_scanned = self.stacked_types() if cache is not None or self.layers_stacked else ()
        stacks = {}

        def run_layer(layer, h, positions, segment_ids, layer_cache):
            h, c = layer(h, positions=positions, segment_ids=segment_ids, cache=layer_cache)
            return constrain_residual(h), c

        if self.remat and cache is None:
            run_layer = nnx.remat(run_layer)
        for a, z in runs:
            t = self.config.layer_types[a]
            k = entry_of[a]
            entry = None if cache is None else new_cache[k]
            if t in type_scanned:
                if t not in stacks:
                    stacks[t] = self._type_stack(t)
                h, c, hs = self._scan_run(a, z, h, positions, segment_ids, entry,
                                          return_hidden_states, stacks[t])
            elif z - a == 1:
                h, c = run_layer(self._layer(a), h, positions, segment_ids, entry)
                hs = [h]
            else:
                h, c, hs = self._scan_run(a, z, h, positions, segment_ids, entry,
                                          return_hidden_states)
            if cache is not None:
                new_cache[k] = c
            if return_hidden_states:
                hidden.extend(hs)
        h = constrain_residual(self.model.norm(h[:, -1:] if last_only else h))
        logits = self.logits_from_hidden(h) if head else h
        if cache is not None:
            return logits, new_cache
        if return_hidden_states:
            return logits, hidden
        return logits

    def _type_stack(self, t: str):
        """(graphdef, parameters [n_type, ...]) of all layers of type t: the stack built by
        `stack_layers`, else stacked here (a copy inside the traced program). On CPU its
        16-bit floats are held as bits (`float_bits`)."""
        if self.layers_stacked:
            return nnx.split(self.model.layer_stacks[self.stacked_types().index(t)])
        layers = [self.model.layers[i] for i, u in enumerate(self.config.layer_types) if u == t]
        return nnx.split(layers[0])[0], _stacked_params(layers)

    def _scan_run(self, a, z, h, positions, segment_ids, cache, return_hidden, type_stack=None):
        """Layers a..z-1 (one run of same-type layers) as one lax.scan.

        With `type_stack` (inference): the scan runs over rows first..first+n-1 of the type's
        parameter stack and of its cache entry `cache` (all layers of the type), so every
        run of a type has the same loop body (XLA compiles each loop on its own). The cache
        travels in the carry and each row is written back with a dynamic update, so a
        donated cache is updated in place. Without (training): the run's own parameters, stacked here, are
        the scan's inputs (so their gradients are its stacked outputs), `cache` is None."""
        n = z - a
        if type_stack is not None:
            graphdef, stack = type_stack
            xs = self._type_index(a) + jnp.arange(n)
            fetch = lambda r: (floats_from_bits(jax.tree.map(
                lambda x: jax.lax.dynamic_index_in_dim(x, r, 0, keepdims=False), stack),
                self.param_float_dtype()), r)
        else:
            layers = [self.model.layers[i] for i in range(a, z)]
            graphdef, _ = nnx.split(layers[0])
            xs = (stack_trees([nnx.state(layer) for layer in layers]), jnp.arange(n))
            fetch = lambda x: x

        def body(carry, x):
            h, cache = carry
            state, i = fetch(x)
            layer = nnx.merge(graphdef, state)
            layer_cache = None if cache is None else jax.tree.map(
                lambda c: jax.lax.dynamic_index_in_dim(c, i, 0, keepdims=False), cache)
            h, new = layer(h, positions=positions, segment_ids=segment_ids, cache=layer_cache)
            h = constrain_residual(h)
            if cache is not None:
                new = _written_after(new, h)
                cache = jax.tree.map(lambda c, u: jax.lax.dynamic_update_index_in_dim(c, u, i, 0),
                                     cache, new)
            return (h, cache), (h if return_hidden else None)

        if self.remat and cache is None:
            body = jax.checkpoint(body)
        (h, cache), hs = jax.lax.scan(body, (h, cache), xs)
        return h, cache, ([hs[i] for i in range(n)] if return_hidden else [])


_SIXTEEN_BIT_FLOATS = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _sixteen_bit_float(tree):
    for x in jax.tree.leaves(tree):
        if jnp.dtype(x.dtype) in _SIXTEEN_BIT_FLOATS:
            return jnp.dtype(x.dtype)
    return None


def float_bits(stack):
    """On CPU: the stacked parameters with their 16-bit floats held as uint16 bits (same
    shape). XLA:CPU slices a bf16 array by converting the whole of it to float32; inside
    the layer scan it hoists that convert of every stack out of the loop, so every step
    converted every stacked weight (the 2B decode step in bf16: 7.7 GB of temporaries).
    Integers are sliced as they are. Other backends: unchanged."""
    if jax.default_backend() != "cpu":
        return stack
    return jax.tree.map(lambda x: jax.lax.bitcast_convert_type(x, jnp.uint16)
                        if jnp.dtype(x.dtype) in _SIXTEEN_BIT_FLOATS else x, stack)


def _stacked_params(layers):
    """The layers' states stacked [n, ...], 16-bit floats as bits on CPU (`float_bits`); leaf
    by leaf, so the eager copy is a transient of one leaf's stack, not of all."""
    return jax.tree.map(lambda *xs: jnp.stack([float_bits(x) for x in xs]),
                        *[nnx.state(layer) for layer in layers])


def floats_from_bits(tree, dtype):
    """Inverse of `float_bits` on one layer's slice: uint16 leaves viewed as `dtype`."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.bitcast_convert_type(x, dtype)
                        if x.dtype == jnp.uint16 else x, tree)


def _written_after(rows, h: jax.Array):
    """`rows` (a layer's new cache rows, batch first) made data-dependent on its output
    h [B, T, D] (adds 0 * h[b, -1, 0] to batch row b: no cross-device traffic under a batch
    sharding), so their in-place write into the stacked cache is ordered after every read
    of the old rows, all of which feed h. Without it XLA cannot order a fused read of
    the old row before the in-place write, and copies the whole stacked array twice per
    layer (measured on CPU: the 2B decode step copied its [24, B, 3072, 4] conv states; at
    batch 1024 in bf16 that is 29 GB of copying per step). An optimization barrier does not
    order them on XLA:CPU. A non-finite h makes the rows NaN, as the next layer's input
    already is."""
    tie = 0 * h[:, -1, 0]

    def tied(r):
        if not jnp.issubdtype(r.dtype, jnp.floating) or r.ndim == 0 or r.shape[0] != tie.shape[0]:
            return r
        return r + tie.astype(r.dtype).reshape((-1,) + (1,) * (r.ndim - 1))
    return jax.tree.map(tied, rows)


def stack_layers(model: JetNemotronForCausalLM, fuse_projections: bool = True) -> JetNemotronForCausalLM:
    """A scanning view of `model` (`model` unchanged; arrays shared except the stacks and the
    fused projections, which are copies) for inference.

    The layers of each type in `stacked_types()` (linear types with a multi-layer run) are
    stacked once here into one [n_type, ...] module (`model.model.layer_stacks`; a copy, with
    16-bit floats held as bits on CPU, see `float_bits`), so jitted steps no longer stack
    them and every run of a type scans rows of the same stack; the other layers (attention:
    their KV buffers are updated in place) stay single in `model.model.layers`. Training,
    checkpoints and HF conversion use the per-layer tree (`unstack_layers` goes back).

    With `fuse_projections` (default), every layer's projections of one input are fused into
    one matrix (`jet_jax.layers.fused_linear`: q/k/v, the JetBlock's six input projections
    and its kernel generator's first layer, the MLP's gate/up), so a decode step runs one
    product per layer input."""
    if model.layers_stacked:
        return model
    fuse = fuse_inputs if fuse_projections else (lambda m: m)
    out = nnx.merge(*nnx.split(model))  # new module objects over the same arrays
    out.scan_layers = True
    lt = out.config.layer_types
    types = out.stacked_types()
    stacks = []
    for t in types:
        layers = [out.model.layers[i] for i in range(len(lt)) if lt[i] == t]
        stacks.append(fuse(nnx.merge(nnx.split(layers[0])[0], _stacked_params(layers))))
    out.model.layer_stacks = nnx.List(stacks)
    out.model.layers = nnx.List([fuse(out.model.layers[i]) for i in range(len(lt))
                                 if lt[i] not in types])
    out.layers_stacked = True
    return out


def unstack_layers(model: JetNemotronForCausalLM) -> JetNemotronForCausalLM:
    """Inverse of `stack_layers`: the per-layer model ("model/layers/i/..." parameters)."""
    if not model.layers_stacked:
        return model
    out = nnx.merge(*nnx.split(model))
    layers = [unfuse_inputs(out._layer(i)) for i in range(out.config.num_hidden_layers)]
    out.model.layers = nnx.List(layers)
    del out.model.layer_stacks
    out.layers_stacked = False
    return out
