"""Throughput harness: prefill and decode tokens/s of a student and its teacher vs context.

For each model and context length: prefill throughput (one sequence of `context` tokens,
chunked, into the cache), then decode throughput at the largest batch whose cache (plus
parameters) fits the memory budget: the cache is filled to `context` by the prefill and
replicated across the batch, then `decode_steps` jitted greedy decode steps are timed
(block_until_ready; compilation and a warm-up run excluded). Also reports the decode cache
bytes per sequence (`model.cache_bytes`). Random weights; prints a table and writes a PNG.

`benchmarks/throughput.py` and `jet-jax bench` both run `main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import math
import sys
import time

from jet_jax.commands import kernel_choice
from jet_jax.config import JetBlockConfig, ModelConfig, hybrid_layer_types

# CPU defaults: small enough to run in about a minute on two cores, big enough that the
# teacher's KV-cache reads dominate its decode step at the longer contexts. Same ratio of
# attention layers as Jet-Nemotron-2B (2 attn + 2 swa of 28 -> 1 + 1 of 8).
CPU_TEACHER = ModelConfig(
    vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=8,
    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1 << 20,
    tie_word_embeddings=True, bos_token_id=256, eos_token_id=257)
CPU_STUDENT = CPU_TEACHER.replace(
    layer_types=hybrid_layer_types(8, attn=(3,), swa=(5,)), window_size=256,
    jet=JetBlockConfig(num_heads=4, head_dim=32, expand_v=2.0, conv_size=4,
                       dconv_generator_reduction=8))

CPU_DEFAULTS = dict(contexts=(256, 512, 1024, 2048), budget_gib=0.25, max_batch=16,
                    decode_steps=8, repeats=2, prefill_chunk=512, dtype="float32")
GPU_DEFAULTS = dict(contexts=(1024, 2048, 4096, 8192, 16384, 32768, 65536), budget_gib=50.0,
                    max_batch=1024, decode_steps=16, repeats=3, prefill_chunk=2048,
                    dtype="bfloat16")


@dataclasses.dataclass
class Row:
    model: str
    context: int
    batch: int
    prefill_tok_s: float
    decode_tok_s: float
    decode_ms_per_step: float
    cache_bytes_per_seq: int


def _model_configs(student: str | None, teacher: str | None, on_gpu: bool):
    from jet_jax.presets import get_preset
    if student is None and teacher is None:
        if on_gpu:
            return get_preset("jet-nemotron-2b"), get_preset("qwen2.5-1.5b")
        return CPU_STUDENT, CPU_TEACHER
    s = CPU_STUDENT if student is None else get_preset(student)
    t = teacher_of(s) if teacher is None else get_preset(teacher)
    return s, t


def teacher_of(student: ModelConfig) -> ModelConfig:
    """The all-attention config a student was derived from (same shapes, every layer attn)."""
    return student.replace(layer_types=("attn",) * student.num_hidden_layers)


def param_bytes(model) -> int:
    import jax
    from flax import nnx
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def jet_only(student: ModelConfig) -> ModelConfig:
    """The student with every layer a JetBlock: isolates the O(1) decode state."""
    return student.replace(layer_types=("jet",) * student.num_hidden_layers)


def fit_batch_formula(model, max_len: int, budget_bytes: float, dtype_bytes: int, max_batch: int) -> int:
    """Largest batch whose cache (+ parameters + per-row logits) fits `budget_bytes`, by
    formula (ignores the step's temporaries; `fit_batch` measures them)."""
    per_seq = model.cache_bytes(1, max_len, dtype_bytes) + 4 * model.config.vocab_size
    free = budget_bytes - param_bytes(model)
    return max(1, min(max_batch, int(free // per_seq)))


def _abstract_cache(model, batch: int, max_len: int, cache_dtype):
    import jax
    return jax.eval_shape(lambda: model.init_cache(batch, max_len, cache_dtype))


def decode_step_bytes(model, batch: int, max_len: int, cache_dtype, decode_steps: int = 1) -> int | None:
    """Device bytes the compiled decode loop (`_decode_n`, cache donated) needs at `batch`:
    arguments + outputs - donated aliases + temporaries, from XLA's memory_analysis()
    (compiled on abstract shapes, nothing allocated). None where the backend gives none."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)
    i32 = jax.ShapeDtypeStruct((batch,), jnp.int32)
    compiled = _decode_jit().lower(graphdef, state, i32, i32,
                                   _abstract_cache(model, batch, max_len, cache_dtype),
                                   n=decode_steps).compile()
    ma = compiled.memory_analysis()
    if ma is None:
        return None
    return int(ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
               + ma.temp_size_in_bytes)


def fit_batch(model, max_len: int, budget_bytes: float, cache_dtype, max_batch: int,
              decode_steps: int = 1) -> int:
    """Largest batch (<= max_batch) whose compiled decode step fits `budget_bytes`.

    Reads the compiled step's memory_analysis() at batch 2 and 4 (bytes are affine in the
    batch from 2 on), solves for the budget, then checks the answer by compiling it (and shrinks if
    XLA needs more there). Falls back to `fit_batch_formula` without memory analysis."""
    import jax.numpy as jnp

    need = lambda b: decode_step_bytes(model, b, max_len, cache_dtype, decode_steps)
    m2 = need(2)
    if m2 is None:
        return fit_batch_formula(model, max_len, budget_bytes, jnp.dtype(cache_dtype).itemsize,
                                 max_batch)
    # Batch 1 compiles to a different program (size-1 dims fold away): fit on 2 and 4.
    per_row = max((need(4) - m2) / 2, 1.0)
    b = max(1, min(max_batch, int((budget_bytes - (m2 - 2 * per_row)) // per_row)))
    for _ in range(8):
        used = need(b)
        if b == 1 or used <= budget_bytes:
            break
        b = max(1, min(b - 1, int(b * budget_bytes / used)))
    return b


@functools.cache
def _decode_jit():
    import jax
    return jax.jit(_decode_n, static_argnames=("graphdef", "n"), donate_argnames=("cache",))


def _decode_n(graphdef, state, tokens, positions, cache, n):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jet_jax.generation import feed_tokens
    model = nnx.merge(graphdef, state)

    def body(_, carry):
        tok, pos, cache = carry
        logits, cache = feed_tokens(model, tok, pos, cache)
        return jnp.argmax(logits, -1).astype(jnp.int32), pos + 1, cache

    return jax.lax.fori_loop(0, n, body, (tokens, positions, cache))


def _tile(cache, batch, like):
    """Repeat a batch-1 cache `batch` times along each leaf's batch axis (the axis where
    `like`, the abstract batch-`batch` cache, differs; stacked run caches have it second)."""
    import jax
    import jax.numpy as jnp

    def one(x, ref):
        diff = [i for i, (a, b) in enumerate(zip(x.shape, ref.shape)) if a != b]
        return jnp.repeat(x, batch, axis=diff[0]) if diff else x
    return jax.tree.map(one, cache, like)


def measure(model, name: str, context: int, *, budget_bytes: float, max_batch: int,
            decode_steps: int, prefill_chunk: int, cache_dtype, repeats: int = 1,
            seed: int = 0) -> Row:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jet_jax.generation import PaddedBatch, prefill_step, prefill

    dtype_bytes = jnp.dtype(cache_dtype).itemsize
    graphdef, state = nnx.split(model)
    max_len = context + (1 + repeats) * decode_steps
    chunk = min(prefill_chunk, context)
    if context % chunk:
        raise ValueError(f"context {context} is not a multiple of the prefill chunk {chunk}")
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(model.config.vocab_size, 256), (1, context)).astype(np.int32)
    batch = PaddedBatch(ids, np.ones_like(ids), np.arange(context, dtype=np.int32)[None],
                        np.array([context], np.int32))

    # Prefill: compile + warm up on one chunk with a throwaway cache, then time the whole
    # prompt (best of `repeats`; the last run's cache is the one decoded from).
    warm = model.init_cache(1, max_len, cache_dtype)
    out = prefill_step(graphdef, state, jnp.asarray(ids[:, :chunk]), jnp.ones((1, chunk), jnp.int32),
                         jnp.arange(chunk, dtype=jnp.int32)[None], warm, jnp.ones((1,), bool))
    jax.block_until_ready(out)
    del warm, out
    prefill_s = math.inf  # best of `repeats`
    for _ in range(repeats):
        cache = model.init_cache(1, max_len, cache_dtype)
        jax.block_until_ready(cache)
        t0 = time.perf_counter()
        logits, cache = prefill(model, batch, cache, chunk_size=chunk, graphdef=graphdef,
                                state=state)
        jax.block_until_ready((logits, cache))
        prefill_s = min(prefill_s, time.perf_counter() - t0)

    # Decode at the largest batch that fits: replicate the filled cache across rows.
    b = fit_batch(model, max_len, budget_bytes, cache_dtype, max_batch, decode_steps)
    cache = _tile(cache, b, _abstract_cache(model, b, max_len, cache_dtype))
    tok = jnp.repeat(jnp.argmax(logits, -1).astype(jnp.int32), b)
    pos = jnp.full((b,), context, jnp.int32)
    step = _decode_jit()
    tok, pos, cache = jax.block_until_ready(step(graphdef, state, tok, pos, cache, n=decode_steps))
    decode_s = math.inf  # best of `repeats` runs of `decode_steps` steps (each continues the
    for _ in range(repeats):  # stream, so the context grows by decode_steps per run)
        t0 = time.perf_counter()
        tok, pos, cache = jax.block_until_ready(step(graphdef, state, tok, pos, cache, n=decode_steps))
        decode_s = min(decode_s, time.perf_counter() - t0)
    return Row(name, context, b, context / prefill_s, b * decode_steps / decode_s,
               1e3 * decode_s / decode_steps, model.cache_bytes(1, context, dtype_bytes))


def format_table(rows: list[Row]) -> str:
    head = (f"{'model':<10} {'context':>8} {'batch':>6} {'prefill tok/s':>14} "
            f"{'decode tok/s':>13} {'step ms':>9} {'ms/tok/seq':>11} {'cache/seq':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.model:<10} {r.context:>8} {r.batch:>6} {r.prefill_tok_s:>14,.0f} "
                     f"{r.decode_tok_s:>13,.1f} {r.decode_ms_per_step:>9.2f} "
                     f"{r.decode_ms_per_step / r.batch:>11.3f} {_human(r.cache_bytes_per_seq):>11}")
    return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def plot(rows: list[Row], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in dict.fromkeys(r.model for r in rows):
        rs = [r for r in rows if r.model == name]
        ctx = [r.context for r in rs]
        axes[0].plot(ctx, [r.decode_tok_s for r in rs], "o-", label=name)
        axes[1].plot(ctx, [r.prefill_tok_s for r in rs], "o-", label=name)
        axes[2].plot(ctx, [r.cache_bytes_per_seq / 2 ** 20 for r in rs], "o-", label=name)
    titles = ("decode tokens/s (largest batch in budget)", "prefill tokens/s (1 sequence)",
              "decode cache per sequence (MiB)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--student", default=None,
                        help="student preset (default: jet-nemotron-2b on GPU, a small CPU config)")
    parser.add_argument("--teacher", default=None,
                        help="teacher preset (default: the student with every layer attn; "
                             "qwen2.5-1.5b on GPU)")
    parser.add_argument("--contexts", type=lambda s: tuple(int(x) for x in s.split(",")),
                        default=None, help="comma-separated context lengths")
    parser.add_argument("--budget-gib", type=float, default=None,
                        help="memory budget for parameters + decode cache")
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--decode-steps", type=int, default=None, help="timed decode steps")
    parser.add_argument("--repeats", type=int, default=None, help="timed decode runs (best kept)")
    parser.add_argument("--prefill-chunk", type=int, default=None)
    parser.add_argument("--no-jet-only", dest="jet_only", action="store_false",
                        help="skip the all-JetBlock variant of the student")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="parameter, compute and cache dtype")
    parser.add_argument("--output-dir", default="bench-results",
                        help="directory for the plot and the JSON rows (created)")
    parser.add_argument("--plot", default="throughput.png",
                        help="PNG file name under --output-dir ('' = none)")
    parser.add_argument("--json", default="throughput.json",
                        help="JSON file name under --output-dir ('' = none)")
    parser.add_argument("--unrolled", action="store_true",
                        help="run every layer unrolled (default: runs of same-type layers as one "
                             "lax.scan over stacked parameters)")
    kernel_choice.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jet_jax.model import JetNemotronForCausalLM, stack_layers

    on_gpu = jax.default_backend() in ("gpu", "cuda", "rocm", "tpu")
    d = dict(GPU_DEFAULTS if on_gpu else CPU_DEFAULTS)
    for k in d:
        if getattr(args, k, None) is not None:
            d[k] = getattr(args, k)
    student_cfg, teacher_cfg = _model_configs(args.student, args.teacher, on_gpu)
    dt = jnp.dtype(d["dtype"])
    print(f"backend {jax.default_backend()}, dtype {dt.name}, budget {d['budget_gib']} GiB, "
          f"max batch {d['max_batch']}, {d['decode_steps']} decode steps")
    print(kernel_choice.describe(args))
    print(f"student: {student_cfg.describe()}")
    print(f"teacher: {teacher_cfg.describe()}")
    if args.jet_only:
        print("jet-only: the student with every layer a JetBlock (O(1) decode state)")
    print(format_table([]))
    models = [("student", student_cfg), ("teacher", teacher_cfg)]
    if args.jet_only:
        models.insert(1, ("jet-only", jet_only(student_cfg)))
    rows = []
    for name, cfg in models:
        model = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), dtype=dt, param_dtype=dt,
                                       **kernel_choice.model_kwargs(args))
        if not args.unrolled:
            model = stack_layers(model)
        for ctx in d["contexts"]:
            row = measure(model, name, ctx, budget_bytes=d["budget_gib"] * 2 ** 30,
                          max_batch=d["max_batch"], decode_steps=d["decode_steps"],
                          prefill_chunk=d["prefill_chunk"], cache_dtype=dt,
                          repeats=d["repeats"])
            rows.append(row)
            print(format_table([row]).splitlines()[-1], flush=True)  # each row once, as measured
        del model
    by = {(r.model, r.context): r for r in rows}
    print("\nstudent / teacher:")
    for ctx in d["contexts"]:
        s, t = by[("student", ctx)], by[("teacher", ctx)]
        print(f"  context {ctx:>6}: decode {s.decode_tok_s / t.decode_tok_s:6.2f}x, prefill "
              f"{s.prefill_tok_s / t.prefill_tok_s:5.2f}x, cache "
              f"{t.cache_bytes_per_seq / s.cache_bytes_per_seq:6.1f}x smaller")
    if args.plot or args.json:
        os.makedirs(args.output_dir, exist_ok=True)
    if args.plot:
        path = os.path.join(args.output_dir, args.plot)
        plot(rows, path)
        print(f"plot written to {path}")
    if args.json:
        path = os.path.join(args.output_dir, args.json)
        with open(path, "w") as f:
            json.dump([dataclasses.asdict(r) for r in rows], f, indent=2)
        print(f"rows written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="throughput", description=__doc__.splitlines()[0])
    register(parser)
    return run(parser.parse_args(sys.argv[1:] if argv is None else argv))

