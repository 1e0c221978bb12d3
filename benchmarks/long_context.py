"""Long-context inference, before vs after, side by side in one run (random weights, CPU-sized).

"before" = every layer unrolled and the dense attention reference (`attention_implementation
="xla"`); "after" = runs of same-type layers scanned over parameters stacked once
(`jet_jax.model.stack_layers`) and `attention_implementation="auto"` (query/key-block
"chunked" attention for long sequences). Tables:

  1. compile time (lower + compile on abstract shapes, nothing allocated) of the
     Jet-Nemotron-2B preset's prefill chunk (2048 tokens, cache for 4096) and decode step, in
     bf16 and f32, also for the code at git revision --baseline (default 4265ea6, the
     revision the long-context issue measured), compiled in the same run; 1b. the same at
     2x and 4x the preset's depth (its layer pattern repeated), bf16; 1c. the floor: the
     smallest program holding one layer of each type the preset has (unrolled), which no
     arrangement of the 2B preset's layers can compile faster than; 1d. where the 'after'
     compile time goes: fusion and dot instructions of the optimized program (XLA:CPU
     generates code for each fusion, identical ones shared, and for each matrix-vector dot,
     as in a batch-1 decode), and the compile time with LLVM's optimizations off
     (`xla_backend_optimization_level=0`), side by side; 1e. the cost of the layer order:
     the preset as it is (its attention layers split the jet layers into three runs, so three
     loop bodies) against the same layers with every jet layer in one run (a different
     network; it shows what the order costs, nothing runs it); 1f. what the floor is made
     of: the prefill and decode compile of a model of one layer of each type alone, and the
     prefill compile of the ops alone at the 2B prefill shapes (chunked gated delta rule,
     chunked attention with and without the sliding window, the dense reference for scale);
     1g. fused input projections (`stack_layers(fuse_projections=...)`): compile time of the
     2B programs and the decode program's instruction counts without and with, side by side,
     and the decode step and prefill chunk times at the 2B widths with 8 layers;
  2. the compiled decode step's temporary memory as a fraction of its cache (all-attention
     model, 4 layers, batch 8, 8192 positions, float32; cache donated); 2b. the 2B preset's
     decode step: temporaries in bf16 and f32, and the bf16 step time (random weights);
  3. one-sequence prefill tokens/s of the CPU student vs its teacher (jet_jax.commands.bench
     configs) at each context;
  4. peak memory (XLA memory_analysis: arguments + outputs - aliases + temporaries) of a
     32K-token prefill in one chunk;
  5. training: per-device peak memory of the distillation train step (compiled on abstract
     shapes, never run; `jet_jax_train.plan.xla_step_memory`) beside `jet-jax plan`'s
     estimate, with dense "xla" and with "chunked" attention (`model.attention_implementation`),
     for the CPU student and its teacher at each --train-tokens length per device;
  6. training compile time: lower + compile of the distillation train step (abstract shapes,
     512 tokens, f32, one device) with every layer unrolled vs `scan_layers`, at the CPU
     student's widths with its own layer pattern repeated to 8, 16 and 32 layers and with
     the Jet-Nemotron-2B preset's 28-layer pattern (long runs of JetBlocks).

    PYTHONPATH=. python benchmarks/long_context.py [--contexts 4096,16384] [--skip-2b] [--baseline REV]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jet_jax.commands.bench import CPU_STUDENT, CPU_TEACHER
from jet_jax.config import ModelConfig
from jet_jax.generation import PaddedBatch, prefill_step, decode_step, prefill
from jet_jax.model import JetNemotronForCausalLM, stack_layers

MODES = {"before": dict(scan=False, attention="xla"), "after": dict(scan=True, attention="auto")}


def build(cfg, mode, dtype=jnp.float32, abstract=False, fuse_projections=True):
    m = MODES[mode]

    def make():
        model = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype,
                                       attention_implementation=m["attention"])
        return stack_layers(model, fuse_projections=fuse_projections) if m["scan"] else model
    return nnx.eval_shape(make) if abstract else make()


def _i32(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.int32)


def _prefill_lowered(model, chunk, max_len, dtype):
    graphdef, state = nnx.split(model)
    cache = jax.eval_shape(lambda: model.init_cache(1, max_len, dtype))
    return prefill_step.lower(graphdef, state, _i32(1, chunk), _i32(1, chunk), _i32(1, chunk), cache,
                                jax.ShapeDtypeStruct((1,), bool))


def _lowerings(model, chunk=2048, context=4096, dtype=jnp.bfloat16) -> dict:
    """{"prefill": lowers the `chunk`-token prefill step (cache for `context`), "decode": lowers
    the batch-1 decode step}, as thunks: each call lowers again (abstract shapes)."""
    graphdef, state = nnx.split(model)
    cache = jax.eval_shape(lambda: model.init_cache(1, context, dtype))
    return {"prefill": lambda: _prefill_lowered(model, chunk, context, dtype),
            "decode": lambda: decode_step.lower(graphdef, state, _i32(1), _i32(1), cache)}


def _best_compile_times(variants: dict, repeats: int) -> dict:
    """{label: [prefill s, decode s]}: lower + compile of each variant's programs (`variants`:
    label -> a thunk returning `_lowerings(...)`), best of `repeats`, variants alternating and
    jax caches cleared before each compile, so a neighbour's load spike or a cache hit does not
    decide a ratio."""
    out = {label: [float("inf"), float("inf")] for label in variants}
    for _ in range(repeats):
        for label, programs in variants.items():
            for k, lower in enumerate(programs().values()):
                jax.clear_caches()
                t0 = time.perf_counter()
                lower().compile()
                out[label][k] = min(out[label][k], time.perf_counter() - t0)
    return out


def compile_times(cfg, chunk=2048, context=4096, dtype=jnp.bfloat16, repeats=3):
    """{mode: [prefill s, decode s]} of lower + compile, best of `repeats`."""
    return _best_compile_times(
        {mode: (lambda mode=mode: _lowerings(build(cfg, mode, dtype, abstract=True), chunk,
                                             context, dtype)) for mode in MODES}, repeats)


def layer_order_compile_times(cfg, dtype, repeats=3) -> dict:
    """{"preset": [prefill s, decode s], "grouped": ...} of the 'after' code (lower + compile,
    best of `repeats`, the two orders alternating): `cfg` as it is, and the same layers with
    every linear ('jet') layer moved before the attention layers, so they form one run."""
    types = cfg.layer_types
    grouped = tuple(t for t in types if t == "jet") + tuple(t for t in types if t != "jet")
    cfgs = {"preset": cfg, "grouped": cfg.replace(layer_types=grouped)}
    return _best_compile_times(
        {label: (lambda c=c: _lowerings(build(c, "after", dtype, abstract=True), dtype=dtype))
         for label, c in cfgs.items()}, repeats)


# Run inside a checkout of an older revision: its own prefill/decode steps, unrolled layers
# (the code before this benchmark's changes knows no other mode); prints one JSON line.
_BASELINE_SCRIPT = r"""
import json, sys, time
import jax, jax.numpy as jnp
from flax import nnx
import jet_jax.generation as gen
from jet_jax.model import JetNemotronForCausalLM
try:
    from jet_jax_configs.presets import get_preset
except ImportError:
    from configs.presets import get_preset
prefill = getattr(gen, "prefill_step", None) or gen._prefill_chunk
cfg = get_preset("jet-nemotron-2b")
out = {}
for name in sys.argv[1].split(","):
    dt = jnp.dtype(name)
    model = nnx.eval_shape(lambda: JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), dtype=dt, param_dtype=dt))
    gd, st = nnx.split(model)
    cache = jax.eval_shape(lambda: model.init_cache(1, 4096, dt))
    i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
    best = [float("inf")] * 2
    for _ in range(int(sys.argv[2])):
        jax.clear_caches(); t0 = time.perf_counter()
        prefill.lower(gd, st, i32(1, 2048), i32(1, 2048), i32(1, 2048), cache,
                      jax.ShapeDtypeStruct((1,), bool)).compile()
        t1 = time.perf_counter(); jax.clear_caches(); t2 = time.perf_counter()
        gen.decode_step.lower(gd, st, i32(1), i32(1), cache).compile()
        best = [min(best[0], t1 - t0), min(best[1], time.perf_counter() - t2)]
    out[name] = best
print(json.dumps(out))
"""


def compile_anatomy(cfg, dtype=jnp.bfloat16, repeats=2) -> dict:
    """{program: (compile s, fusions, dots, compile s at LLVM -O0)} of the 'after' prefill chunk
    (2048 tokens, cache 4096) and decode step (batch 1), best of `repeats`."""
    out = {}
    for name, lower in _lowerings(build(cfg, "after", dtype, abstract=True), dtype=dtype).items():
        best = {}
        for opts in ({}, {"xla_backend_optimization_level": 0}):
            for _ in range(repeats):
                jax.clear_caches()
                t0 = time.perf_counter()
                compiled = lower().compile(opts)
                best[len(opts)] = min(best.get(len(opts), float("inf")), time.perf_counter() - t0)
        hlo = compiled.as_text()
        out[name] = (best[0], hlo.count(" fusion("), hlo.count(" dot("), best[1])
    return out


def fusion_times(cfg, repeats=3, run_layers=("jet",) * 4 + ("attn",) + ("jet",) * 2 + ("swa",),
                 steps=5) -> dict:
    """Fused input projections (`stack_layers(fuse_projections=...)`), 'after' code, side by
    side: {(dtype, fused): (prefill compile s, decode compile s, fusions, dots)} for `cfg`
    (lower + compile, best of `repeats`, the two alternating; instruction counts of the
    decode program), and {(dtype, fused): (decode step s at batch 1, at batch 8, prefill chunk
    s)} of `cfg`'s widths with `run_layers` (random weights; medians of `steps`; a 4096-token
    cache, a 2048-token prefill chunk)."""
    compiled, run = {}, {}
    for name in ("bfloat16", "float32"):
        dt = jnp.dtype(name)
        ct = _best_compile_times({fused: (lambda fused=fused: _lowerings(
            build(cfg, "after", dt, abstract=True, fuse_projections=fused), dtype=dt))
            for fused in (False, True)}, repeats)
        for fused, (tp, td) in ct.items():
            hlo = _lowerings(build(cfg, "after", dt, abstract=True, fuse_projections=fused),
                             dtype=dt)["decode"]().compile().as_text()
            compiled[name, fused] = (tp, td, hlo.count(" fusion("), hlo.count(" dot("))
        small = cfg.replace(num_hidden_layers=len(run_layers), layer_types=tuple(run_layers))
        unrolled = JetNemotronForCausalLM(small, rngs=nnx.Rngs(0), dtype=dt, param_dtype=dt)
        for fused in (False, True):
            model = stack_layers(unrolled, fuse_projections=fused)
            graphdef, state = nnx.split(model)
            row = []
            for batch in (1, 8):
                cache = model.init_cache(batch, 4096, dt)
                step = decode_step.lower(graphdef, state, _i32(batch), _i32(batch), cache).compile()
                row.append(median_decode_step_s(step, state, batch, cache, steps))
                del cache, step
            chunk = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, 2048)), jnp.int32)
            args = (chunk, jnp.ones((1, 2048), jnp.int32), jnp.arange(2048, dtype=jnp.int32)[None])
            start = jnp.ones((1,), bool)
            step = prefill_step.lower(graphdef, state, *args, model.init_cache(1, 4096, dt), start).compile()
            ts = []
            for _ in range(2):
                cache = jax.block_until_ready(model.init_cache(1, 4096, dt))
                t0 = time.perf_counter()
                jax.block_until_ready(step(state, *args, cache, start))
                ts.append(time.perf_counter() - t0)
            run[name, fused] = (*row, min(ts))
            del model, state, step, cache
        del unrolled
    return compiled, run


def floor_anatomy(cfg, dtype=jnp.bfloat16, chunk=2048, context=4096, repeats=2) -> dict:
    """{row label: [prefill s, decode s] or [compile s, None]}: lower + compile (best of
    `repeats`) of a one-layer model of each layer type of `cfg` and of all of them together
    ('after' code), then of the prefill's ops alone at `cfg`'s shapes (batch 1, `chunk` query
    tokens, a `context`-token cache for attention)."""
    from jet_jax.ops.attention import dot_product_attention
    from jet_jax.ops.gated_delta_rule import gated_delta_rule
    types = tuple(dict.fromkeys(cfg.layer_types))
    models = {f"model: {t} only": (t,) for t in types}
    models[f"model: {' + '.join(types)}"] = types
    out = _best_compile_times(
        {label: (lambda lt=lt: _lowerings(build(cfg.replace(num_hidden_layers=len(lt), layer_types=lt),
                                                 "after", dtype, abstract=True), chunk, context, dtype))
         for label, lt in models.items()}, repeats)
    sd = jax.ShapeDtypeStruct
    h, dk = cfg.jet.num_heads, cfg.jet.head_dim
    dv = int(dk * cfg.jet.expand_v)
    gdr = (lambda q, k, v, g, b: gated_delta_rule(q, k, v, g, b, output_final_state=True,
                                                  implementation="chunked"),
           (sd((1, chunk, h, dk), dtype), sd((1, chunk, h, dk), dtype), sd((1, chunk, h, dv), dtype),
            sd((1, chunk, h), jnp.float32), sd((1, chunk, h), dtype)))
    hd = cfg.hidden_size // cfg.num_attention_heads
    att_args = (sd((1, chunk, cfg.num_attention_heads, hd), dtype),
                sd((1, context, cfg.num_key_value_heads, hd), dtype),
                sd((1, context, cfg.num_key_value_heads, hd), dtype),
                sd((1, chunk), jnp.int32), sd((1, context), jnp.int32))

    def attention(impl, window):
        return (lambda q, k, v, qp, kp: dot_product_attention(
            q, k, v, q_positions=qp, kv_positions=kp, window=window, implementation=impl), att_args)
    ops = {"op: gated delta rule, chunked": gdr,
           "op: attention, chunked": attention("chunked", None),
           f"op: attention, chunked, window {cfg.window_size}": attention("chunked", cfg.window_size),
           "op: attention, dense reference": attention("xla", None)}
    for label, (fn, args) in ops.items():
        best = float("inf")
        for _ in range(repeats):
            jax.clear_caches()
            t0 = time.perf_counter()
            jax.jit(fn).lower(*args).compile()
            best = min(best, time.perf_counter() - t0)
        out[label] = [best, None]
    return out


def baseline_compile_times(rev: str, dtypes=("bfloat16",), repeats=3) -> dict:
    """compile_times of git revision `rev` (a temporary worktree, a child process with its
    own imports): {dtype name: [prefill s, decode s]}."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        subprocess.run(["git", "worktree", "add", "--detach", "-q", tree, rev], check=True)
        try:
            env = dict(os.environ, PYTHONPATH=tree)
            res = subprocess.run([sys.executable, "-c", _BASELINE_SCRIPT, ",".join(dtypes), str(repeats)],
                                 cwd=tree, env=env, capture_output=True, text=True, check=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], check=False)
    return json.loads(res.stdout.strip().splitlines()[-1])


def bytes_needed(compiled) -> int:
    ma = compiled.memory_analysis()
    return int(ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
               + ma.temp_size_in_bytes)


def decode_temp_and_cache(cfg, mode, batch, positions, dtype=jnp.float32) -> tuple[int, int]:
    """(temporaries, cache bytes) of the compiled decode step (abstract shapes, cache donated)."""
    model = build(cfg, mode, dtype, abstract=True)
    graphdef, state = nnx.split(model)
    cache = jax.eval_shape(lambda: model.init_cache(batch, positions, dtype))
    ma = decode_step.lower(graphdef, state, _i32(batch), _i32(batch), cache).compile().memory_analysis()
    return ma.temp_size_in_bytes, sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))


def median_decode_step_s(step, state, batch, cache, steps) -> float:
    """Median seconds of `steps` calls of a compiled `decode_step` (after one untimed call)."""
    tok = jnp.zeros((batch,), jnp.int32)
    logits, cache = step(state, tok, tok, cache)
    ts = []
    for i in range(steps):
        t0 = time.perf_counter()
        logits, cache = step(state, tok, tok + i + 1, cache)
        jax.block_until_ready(logits)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def decode_temp_fraction(batch=8, positions=8192):
    cfg = ModelConfig(vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1 << 20,
                      tie_word_embeddings=True)
    return {mode: decode_temp_and_cache(cfg, mode, batch, positions) for mode in MODES}


def decode_2b(batch=8, context=4096, steps=3):
    """The Jet-Nemotron-2B preset's decode step: {(dtype, mode): (temporaries, cache bytes)}
    (abstract compile) and {(dtype, mode): median step seconds} with random weights (one
    model per dtype, run unrolled and through `stack_layers`)."""
    from jet_jax_configs.presets import get_preset
    cfg = get_preset("jet-nemotron-2b")
    temps = {(name, mode): decode_temp_and_cache(cfg, mode, batch, context, jnp.dtype(name))
             for name in ("bfloat16", "float32") for mode in MODES}
    times = {}
    for name in ("bfloat16", "float32"):
        dt = jnp.dtype(name)
        unrolled = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), dtype=dt, param_dtype=dt)
        for mode in MODES:
            model = unrolled if mode == "before" else stack_layers(unrolled)
            graphdef, state = nnx.split(model)
            cache = model.init_cache(batch, context, dt)
            step = decode_step.lower(graphdef, state, _i32(batch), _i32(batch), cache).compile()
            times[name, mode] = median_decode_step_s(step, state, batch, cache, steps)
            del model, state, cache, step
        del unrolled
    return temps, times


def prefill_tok_s(model, context, chunk, dtype=jnp.float32, seed=0):
    graphdef, state = nnx.split(model)
    c = min(chunk, context)
    ids = np.random.default_rng(seed).integers(0, 256, (1, context)).astype(np.int32)
    batch = PaddedBatch(ids, np.ones_like(ids), np.arange(context, dtype=np.int32)[None],
                        np.array([context], np.int32))
    warm = model.init_cache(1, context, dtype)  # compile on a throwaway cache
    jax.block_until_ready(prefill_step(graphdef, state, jnp.asarray(ids[:, :c]), jnp.ones((1, c), jnp.int32),
                                         jnp.arange(c, dtype=jnp.int32)[None], warm, jnp.ones((1,), bool)))
    del warm
    cache = jax.block_until_ready(model.init_cache(1, context, dtype))
    t0 = time.perf_counter()
    jax.block_until_ready(prefill(model, batch, cache, chunk_size=c, graphdef=graphdef, state=state))
    return context / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", type=lambda s: [int(x) for x in s.split(",")], default=[4096, 16384])
    p.add_argument("--prefill-chunk", type=int, default=2048)
    p.add_argument("--peak-tokens", type=int, default=32768)
    p.add_argument("--train-tokens", type=lambda s: [int(x) for x in s.split(",")],
                   default=[2048, 4096, 8192], help="table 5: tokens per device")
    p.add_argument("--skip-2b", action="store_true", help="skip the Jet-Nemotron-2B tables (1, 2b)")
    p.add_argument("--only", type=lambda s: set(s.split(",")), default=None,
                   help="comma-separated tables to run, of 1 (with 1b, 1c), 1d, 1e, 1f, 1g, 2, 2b, 3, 4, 5, 6 (default: all)")
    p.add_argument("--baseline", default="4265ea6",
                   help="git revision compiled as 'base' in table 1 ('' to skip)")
    p.add_argument("--before-max-context", type=int, default=None,
                   help="time the 'before' prefill only up to this context (dense attention "
                        "is quadratic: 16K takes tens of minutes on two shared cores)")
    args = p.parse_args(argv)
    want = lambda table: args.only is None or table in args.only
    print(f"backend {jax.default_backend()}, jax {jax.__version__}; before = unrolled + dense "
          f"'xla' attention, after = stacked-layer scan + 'auto' attention", flush=True)

    if not args.skip_2b and want("1"):
        from jet_jax_configs.presets import get_preset
        dtypes = ("bfloat16", "float32")
        base = baseline_compile_times(args.baseline, dtypes) if args.baseline else {}
        print("\n1. compile time, Jet-Nemotron-2B preset (lower + compile, abstract shapes; best of 3; "
              f"prefill chunk 2048 with a 4096 cache, decode step; base = revision {args.baseline}, "
              "unrolled, its own code)")
        print(f"{'dtype':9} {'code':14} {'prefill (s)':>12} {'decode (s)':>11} "
              f"{'prefill/base':>13} {'decode/base':>12}")
        for name in dtypes:
            ct = compile_times(get_preset("jet-nemotron-2b"), dtype=jnp.dtype(name))
            rows = ([("base " + args.baseline, base[name])] if base else []) + list(ct.items())
            for label, (tp, td) in rows:
                ratio = (f"{tp / base[name][0]:>13.2f} {td / base[name][1]:>12.2f}" if base else "")
                print(f"{name:9} {label:14} {tp:>12.2f} {td:>11.2f} {ratio}", flush=True)

        # Compile time against depth: the preset's layer pattern repeated (28 -> 56 -> 112
        # layers). Unrolled code grows with every layer; a scan compiles each body once.
        cfg = get_preset("jet-nemotron-2b")
        print("\n1b. compile time against depth (the 2B preset's layer pattern repeated; bf16; "
              "one compile each)")
        print(f"{'layers':>7} {'code':8} {'prefill (s)':>12} {'decode (s)':>11}")
        for rep in (1, 2, 4):
            deep = cfg.replace(num_hidden_layers=cfg.num_hidden_layers * rep,
                               layer_types=cfg.layer_types * rep)
            for mode, (tp, td) in compile_times(deep, repeats=1).items():
                print(f"{deep.num_hidden_layers:>7} {mode:8} {tp:>12.2f} {td:>11.2f}", flush=True)

        # The floor: one layer of each type (jet, attn, swa), unrolled (each layer compiled once).
        types = tuple(dict.fromkeys(cfg.layer_types))
        floor = cfg.replace(num_hidden_layers=len(types), layer_types=types)
        print(f"\n1c. floor: one layer of each type {types} (the 'after' code: no run to scan), "
              "best of 3")
        print(f"{'dtype':9} {'prefill (s)':>12} {'decode (s)':>11}")
        for name in dtypes:
            tp, td = compile_times(floor, dtype=jnp.dtype(name))["after"]
            print(f"{name:9} {tp:>12.2f} {td:>11.2f}", flush=True)

    if not args.skip_2b and want("1d"):
        from jet_jax_configs.presets import get_preset
        print("\n1d. where the 'after' compile time goes (2B preset, bf16; best of 2): fusion and "
              "dot instructions of the optimized program, compile time with LLVM optimizations off")
        print(f"{'program':8} {'compile (s)':>12} {'fusions':>8} {'dots':>5} {'-O0 (s)':>8} {'-O0/default':>12}")
        for name, (t, fusions, dots, t0) in compile_anatomy(get_preset("jet-nemotron-2b")).items():
            print(f"{name:8} {t:>12.2f} {fusions:>8} {dots:>5} {t0:>8.2f} {t0 / t:>12.2f}", flush=True)

    if not args.skip_2b and want("1f"):
        from jet_jax_configs.presets import get_preset
        print("\n1f. what the floor is made of (2B preset shapes, bf16, 'after' code, best of 2): "
              "one-layer models, then the prefill's ops alone (prefill chunk 2048, cache 4096)")
        print(f"{'program':42} {'prefill (s)':>12} {'decode (s)':>11}")
        for label, (tp, td) in floor_anatomy(get_preset("jet-nemotron-2b")).items():
            dec = "" if td is None else f"{td:.2f}"
            print(f"{label:42} {tp:>12.2f} {dec:>11}", flush=True)

    if not args.skip_2b and want("1g"):
        from jet_jax_configs.presets import get_preset
        compiled, run = fusion_times(get_preset("jet-nemotron-2b"))
        print("\n1g. fused input projections (stack_layers(fuse_projections=False / True)), 2B "
              "preset: lower + compile (best of 3, alternating) and the decode program's fusion "
              "and dot instructions")
        print(f"{'dtype':9} {'fused':6} {'prefill (s)':>12} {'decode (s)':>11} {'fusions':>8} {'dots':>5}")
        for (name, fused), (tp, td, nf, nd) in compiled.items():
            print(f"{name:9} {str(fused):6} {tp:>12.2f} {td:>11.2f} {nf:>8} {nd:>5}", flush=True)
        print("\n    run time at the 2B widths, 8 layers (jet x4, attn, jet x2, swa), random weights: "
              "decode step (4096-token cache, median of 5), 2048-token prefill chunk (best of 2)")
        print(f"{'dtype':9} {'fused':6} {'decode b1 (s)':>14} {'decode b8 (s)':>14} {'prefill (s)':>12}")
        for (name, fused), (d1, d8, pf) in run.items():
            print(f"{name:9} {str(fused):6} {d1:>14.3f} {d8:>14.3f} {pf:>12.2f}", flush=True)

    if not args.skip_2b and want("1e"):
        from jet_jax_configs.presets import get_preset
        print("\n1e. the cost of the layer order ('after' code, best of 3, alternating): the 2B "
              "preset as it is (its attention layers split the jet layers into 3 runs, 3 loops) vs "
              "the same layers with every jet layer moved into one run (1 loop; a different "
              "network, a diagnostic only)")
        print(f"{'dtype':9} {'order':9} {'prefill (s)':>12} {'decode (s)':>11}")
        for name in ("bfloat16", "float32"):
            for label, (tp, td) in layer_order_compile_times(get_preset("jet-nemotron-2b"),
                                                               jnp.dtype(name)).items():
                print(f"{name:9} {label:9} {tp:>12.2f} {td:>11.2f}", flush=True)

    dt = decode_temp_fraction() if want("2") else {}
    if dt:
        print("\n2. decode step temporaries vs cache (4 attn layers, batch 8, 8192 positions, f32)")
    for mode, (temp, cache) in dt.items():
        print(f"{mode:8} temp {temp / 2**20:8.1f} MiB  cache {cache / 2**20:8.1f} MiB  "
              f"{100 * temp / cache:5.1f}%", flush=True)

    if not args.skip_2b and want("2b"):
        temps, times = decode_2b()
        print("\n2b. Jet-Nemotron-2B decode step (batch 8, 4096 positions, cache donated): "
              "temporaries (compiled) and median step time (random weights)")
        print(f"{'dtype':9} {'mode':8} {'temp (MiB)':>11} {'cache (MiB)':>12} {'step (s)':>9}")
        for (name, mode), (temp, cache) in temps.items():
            print(f"{name:9} {mode:8} {temp / 2**20:>11,.0f} {cache / 2**20:>12,.0f} "
                  f"{times[name, mode]:>9.2f}", flush=True)

    if want("3"):
        print(f"\n3. one-sequence prefill tokens/s (chunk {args.prefill_chunk}, f32)")
        print(f"{'context':>8} {'mode':8} {'student':>10} {'teacher':>10} {'student/teacher':>16}")
    for ctx in args.contexts if want("3") else ():
        for mode in MODES:
            if mode == "before" and args.before_max_context and ctx > args.before_max_context:
                print(f"{ctx:>8} {mode:8} {'skipped (--before-max-context)':>38}", flush=True)
                continue
            s = prefill_tok_s(build(CPU_STUDENT, mode), ctx, args.prefill_chunk)
            t = prefill_tok_s(build(CPU_TEACHER, mode), ctx, args.prefill_chunk)
            print(f"{ctx:>8} {mode:8} {s:>10,.0f} {t:>10,.0f} {s / t:>16.2f}", flush=True)

    n = args.peak_tokens
    if want("4"):
        print(f"\n4. peak memory of a {n}-token prefill in one chunk (memory_analysis, f32)")
        for name, cfg in (("student", CPU_STUDENT), ("teacher", CPU_TEACHER)):
            row = [f"{name:8}"]
            for mode in MODES:
                row.append(f"{mode} {bytes_needed(_prefill_lowered(build(cfg, mode, abstract=True), n, n, jnp.float32).compile()) / 2**30:7.2f} GiB")
            print("  ".join(row), flush=True)

    if want("5"):
        mesh = (1, jax.device_count(), 1)
        print(f"\n5. distillation train step, peak memory per device (MiB; f32, batch 1 per device, "
              f"mesh {mesh}, AdamW, MLP frozen): XLA memory_analysis vs jet-jax plan")
        print(f"{'tokens':>7} {'attention':9} {'XLA':>9} {'plan':>9} {'plan/XLA':>9}")
        for tokens in args.train_tokens:
            for att in ("xla", "chunked"):
                xla, plan = train_step_memory(CPU_STUDENT, CPU_TEACHER, mesh, tokens, att)
                print(f"{tokens:>7} {att:9} {xla / 2**20:>9,.0f} {plan / 2**20:>9,.0f} "
                      f"{plan / xla:>9.2f}", flush=True)

    if want("6"):
        from jet_jax_configs.presets import get_preset
        print("\n6. distillation train step compile time (s; lower + compile, 512 tokens, f32, "
              "CPU student widths, teacher = all attention)")
        print(f"{'pattern':24} {'layers':>6} {'unrolled':>9} {'scanned':>8} {'scanned/unrolled':>17} "
              f"{'peak MiB unrolled':>18} {'scanned':>8}")
        shapes = [(f"CPU student x{r}", CPU_STUDENT.layer_types * r) for r in (1, 2, 4)]
        shapes.append(("Jet-Nemotron-2B", get_preset("jet-nemotron-2b").layer_types))
        for label, types in shapes:
            s_cfg = CPU_STUDENT.replace(num_hidden_layers=len(types), layer_types=tuple(types))
            t_cfg = CPU_TEACHER.replace(num_hidden_layers=len(types), layer_types=("attn",) * len(types))
            (unrolled, m_unrolled), (scanned, m_scanned) = (
                train_step_compile(s_cfg, t_cfg, scan) for scan in (False, True))
            print(f"{label:24} {len(types):>6} {unrolled:>9.1f} {scanned:>8.1f} "
                  f"{scanned / unrolled:>17.2f} {m_unrolled / 2**20:>18,.0f} "
                  f"{m_scanned / 2**20:>8,.0f}", flush=True)


def train_step_compile(student, teacher, scan_layers, tokens=512):
    """(lower + compile seconds, peak bytes) of the distillation step on one device (abstract
    shapes; peak = arguments + outputs - aliases + temporaries)."""
    from jet_jax.convert.hf import abstract_model
    from jet_jax_train.config import LossSection, OptimizerSection
    from jet_jax_train.distributed import mesh_from_config
    from jet_jax_train.flat_model import FlatModel
    from jet_jax_train.train_step import BATCH_KEYS, DistillStep, batch_sharding

    mesh = mesh_from_config((1, 1, 1), devices=jax.devices()[:1])
    s_flat = FlatModel(abstract_model(student, scan_layers=scan_layers))
    t_flat = FlatModel(abstract_model(teacher, scan_layers=scan_layers))
    ds = DistillStep(s_flat, t_flat, OptimizerSection(), LossSection(), mesh, total_steps=100)
    teacher_params = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=ds.teacher_shardings[k])
                      for k, v in t_flat.abstract_params().items()}
    batch = {k: jax.ShapeDtypeStruct((1, tokens), jnp.float32 if k == "loss_mask" else jnp.int32,
                                     sharding=batch_sharding(mesh)) for k in BATCH_KEYS}
    jax.clear_caches()
    t0 = time.perf_counter()
    compiled = ds._step.lower(ds.abstract_state(), teacher_params, batch).compile()
    return time.perf_counter() - t0, bytes_needed(compiled)


def train_step_memory(student, teacher, mesh, tokens, attention):
    """(XLA peak, plan total) bytes per device of the distillation step with `attention`."""
    from jet_jax_train.plan import plan_memory, xla_step_memory
    xla = xla_step_memory(student, teacher, mesh, batch_per_device=1, seq_len=tokens,
                          dtype="float32", attention_implementation=attention)["peak"]
    plan = plan_memory(student, mesh, batch_per_device=1, seq_len=tokens, param_dtype="f32",
                       dtype="f32", teacher=teacher, teacher_dtype="f32", frozen_mlp=True,
                       attention_implementation=attention)["bytes"]["total"]
    return xla, plan


if __name__ == "__main__":
    main()
