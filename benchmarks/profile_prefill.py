"""Where one-sequence prefill spends its time: a jax.profiler trace, summed per compiled op.

Builds the CPU student and teacher of `jet-jax bench` (random weights, the stacked-layer
scan view), compiles one prefill chunk, then traces the chunked prefill of one sequence
and prints, per model, the ops that take the most time (summed over the layers and chunks
they run in), with their share of the traced op time. The raw trace stays in --trace-dir
(open it in Perfetto or TensorBoard).

    PYTHONPATH=. python benchmarks/profile_prefill.py [--context 4096] [--chunk 2048] [--top 15]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jet_jax.commands.bench import CPU_STUDENT, CPU_TEACHER
from jet_jax.generation import PaddedBatch, prefill, prefill_step
from jet_jax.model import JetNemotronForCausalLM, stack_layers

# Host-side bookkeeping events of the trace: not compiled ops.
_NOT_OPS = re.compile(r"^(\$|Thunk|ThreadpoolListener|TaskDispatcher|PjRt|XlaModule|ExecuteHelper|"
                      r"TfrtCpu|Execute|jit_|pjit|end_|start_|SlinkyThreadPool|PjitFunction|"
                      r"backend_compile|CpuCompiler|CommonPjRt)")


def op_self_times(trace_dir: str) -> collections.Counter:
    """Self time (microseconds; children on the same thread subtracted, so a `while` or
    `cond` counts only its own overhead) per op instruction name of the newest trace under
    `trace_dir`, compiled ops only (host bookkeeping listed in _NOT_OPS dropped)."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}")
    events = [e for e in json.load(gzip.open(files[-1]))["traceEvents"] if e.get("ph") == "X"]
    out = collections.Counter()
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[(e["pid"], e["tid"])].append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # open events: [event, time spent in children]
        for e in evs:
            while stack and stack[-1][0]["ts"] + stack[-1][0]["dur"] <= e["ts"]:
                _close(stack.pop(), stack, out)
            stack.append([e, 0.0])
        while stack:
            _close(stack.pop(), stack, out)
    return out


def _close(entry, stack, out):
    e, children = entry
    if stack:
        stack[-1][1] += e["dur"]
    if not _NOT_OPS.match(e["name"]):
        out[e["name"]] += e["dur"] - children


def source_of(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX operation it came from: its metadata op_name (for a
    fusion without one, that of the fused computation's first instruction that has one),
    keeping the model's named scopes (mixer_<type>, mlp, attention, gated_delta_rule,
    dynamic_conv) and the primitive."""
    comp_src, inst_src, calls, comp = {}, {}, {}, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            comp = head.group(1)
            continue
        m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+) = ", line)
        if not m:
            continue
        name = m.group(1)
        op = re.search(r'op_name="([^"]*)"', line)
        if op:
            inst_src[name] = op.group(1)
            comp_src.setdefault(comp, op.group(1))
        c = re.search(r"calls=%?([\w.\-]+)", line)
        if c:
            calls[name] = c.group(1)
    out = {}
    for name in set(inst_src) | set(calls):
        full = inst_src.get(name) or comp_src.get(calls.get(name), "")
        parts = [p for p in full.split("/") if p.startswith(("mixer_", "mlp", "attention",
                                                             "gated_delta_rule", "dynamic_conv"))]
        scopes = list(dict.fromkeys(parts))
        out[name] = "/".join(scopes + [full.split("/")[-1]]) if full else name
    return out


def profile(cfg, context: int, chunk: int, trace_dir: str):
    """(wall s, Counter of self time per JAX operation) of one traced chunked prefill."""
    model = stack_layers(JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, context)).astype(np.int32)
    batch = PaddedBatch(ids, np.ones_like(ids), np.arange(context, dtype=np.int32)[None],
                        np.array([context], np.int32))
    c = min(chunk, context)
    warm = model.init_cache(1, context)  # compile outside the trace
    step_args = (graphdef, state, jnp.asarray(ids[:, :c]), jnp.ones((1, c), jnp.int32),
                 jnp.arange(c, dtype=jnp.int32)[None], warm, jnp.ones((1,), bool))
    names = source_of(prefill_step.lower(*step_args).compile().as_text())
    jax.block_until_ready(prefill_step(*step_args))
    del warm, step_args
    cache = jax.block_until_ready(model.init_cache(1, context))
    with jax.profiler.trace(trace_dir):
        t0 = time.perf_counter()
        jax.block_until_ready(prefill(model, batch, cache, chunk_size=c, graphdef=graphdef, state=state))
        wall = time.perf_counter() - t0
    by_source = collections.Counter()
    for op, us in op_self_times(trace_dir).items():
        by_source[names.get(op, op)] += us
    return wall, by_source


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--trace-dir", default="bench-results/prefill-trace")
    args = p.parse_args(argv)
    print(f"backend {jax.default_backend()}, jax {jax.__version__}; one sequence of {args.context} "
          f"tokens, chunk {args.chunk}, float32")
    for name, cfg in (("student", CPU_STUDENT), ("teacher", CPU_TEACHER)):
        wall, ops = profile(cfg, args.context, args.chunk, os.path.join(args.trace_dir, name))
        total = sum(ops.values())
        print(f"\n{name}: {args.context / wall:,.0f} tokens/s traced ({wall:.2f} s wall, "
              f"{total / 1e6:.2f} s of op self time; ops on parallel threads overlap)")
        print(f"{'JAX operation (HLO metadata)':72} {'ms':>9} {'share':>6}")
        for op, us in ops.most_common(args.top):
            print(f"{op[:72]:72} {us / 1e3:>9.1f} {100 * us / total:>5.1f}%")


if __name__ == "__main__":
    main()
