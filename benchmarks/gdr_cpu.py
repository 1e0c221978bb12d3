"""CPU benchmark of gated_delta_rule.

1. fwd+bwd, B=1 T=4096 H=4 Dk=128 Dv=256 float32: recurrent vs chunked.
2. forward only, same shape: transformers' torch_chunk_gated_delta_rule vs our chunked.
3. peak memory of chunked fwd+bwd at T=32768 H=12 Dk=96 Dv=256 (Jet-Nemotron-2B heads):
   XLA's compiled memory_analysis and the peak RSS of a subprocess that runs it.
4. the decode step, reference ("recurrent") vs "fused" (the state read once for S^T k and
   S^T q), side by side at Jet-Nemotron-2B heads for several batch sizes: the op alone
   (state donated) and inside a stacked layer scan (state rows updated in place, as the
   stacked decode runs). Medians of alternating runs.

Times are the best of `--reps` runs after a warm-up (compilation excluded).
Usage: python benchmarks/gdr_cpu.py [--reps 3] [--skip-memory] [--skip-speed] [--run-memory]
       [--skip-step]
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np


def _inputs(B, T, H, Dk, Dv, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s).astype(np.float32)
    g = -np.abs(f(B, T, H)) * 0.1
    beta = 1 / (1 + np.exp(-f(B, T, H)))
    return f(B, T, H, Dk), f(B, T, H, Dk), f(B, T, H, Dv), g.astype(np.float32), beta.astype(np.float32)


def _best(fn, reps):
    fn()  # warm-up / compile
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_speed(reps):
    import jax
    import jax.numpy as jnp

    from jet_jax.ops import gated_delta_rule

    B, T, H, Dk, Dv = 1, 4096, 4, 128, 256
    arrays = [jnp.asarray(a) for a in _inputs(B, T, H, Dk, Dv)]
    rows = []

    def fwd_bwd(impl):
        loss = lambda *a: gated_delta_rule(*a, implementation=impl)[0].sum()
        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
        return lambda: jax.block_until_ready(f(*arrays))

    t_rec = _best(fwd_bwd("recurrent"), max(1, reps // 2))
    t_chk = _best(fwd_bwd("chunked"), reps)
    rows.append((f"fwd+bwd B={B} T={T} H={H} Dk={Dk} Dv={Dv}", "jax recurrent (scan over tokens)", t_rec, ""))
    rows.append(("", "jax chunked", t_chk, f"{t_rec / t_chk:.1f}x faster than recurrent"))

    fw = jax.jit(lambda *a: gated_delta_rule(*a, implementation="chunked")[0])
    t_ours = _best(lambda: jax.block_until_ready(fw(*arrays)), reps)

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers.models.qwen3_next import modeling_qwen3_next as m
    hf_chunk = inspect.unwrap(m.torch_chunk_gated_delta_rule)  # pure torch, not FLA's Triton route
    tq, tk, tv, tg, tb = (torch.from_numpy(np.asarray(a)) for a in arrays)

    def run_torch():
        with torch.no_grad():
            hf_chunk(tq, tk, tv, tg, tb, use_qk_l2norm_in_kernel=True)

    t_torch = _best(run_torch, reps)
    rows.append((f"forward  B={B} T={T} H={H} Dk={Dk} Dv={Dv}", "transformers torch_chunk_gated_delta_rule", t_torch, ""))
    rows.append(("", "jax chunked", t_ours, f"{t_torch / t_ours:.2f}x vs torch"))
    return rows


def _median_alternating(fns: dict, rounds: int) -> dict:
    """{name: median seconds} of the zero-argument callables, one call of each per round
    (after one untimed call each), so a load change hits every entry alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def bench_step(batches=(1, 8, 64, 256), rounds=31, layers=4):
    """The decode step at Jet-Nemotron-2B heads (H=12, Dk=96, Dv=256), f32 state, reference
    ("recurrent") vs "fused": alone (state donated) and inside a stacked layer scan (a
    `lax.scan` over `layers` rows of a donated [layers, B, H, Dk, Dv] state, each row sliced,
    stepped and written back in place, as `stack_layers` decodes; seconds per layer).
    Returns [(batch, state MiB per layer, {(where, impl): seconds})]."""
    import jax
    import jax.numpy as jnp

    from jet_jax.ops import gated_delta_rule_step

    H, Dk, Dv = 12, 96, 256

    def alone(impl):
        return jax.jit(lambda s, *a: gated_delta_rule_step(*a, s, implementation=impl)[::-1],
                       donate_argnums=0)

    def stacked(impl):
        def run(stack, *a):
            def body(stack, i):
                row = jax.lax.dynamic_index_in_dim(stack, i, 0, keepdims=False)
                o, row = gated_delta_rule_step(*a, row, implementation=impl)
                return jax.lax.dynamic_update_index_in_dim(stack, row, i, 0), o
            return jax.lax.scan(body, stack, jnp.arange(layers))
        return jax.jit(run, donate_argnums=0)

    rows = []
    for B in batches:
        rng = np.random.default_rng(B)
        f = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))
        x = (f(B, H, Dk), f(B, H, Dk), f(B, H, Dv), -jnp.abs(f(B, H)) * 0.1, jax.nn.sigmoid(f(B, H)))
        fns, states = {}, {}
        for where, make, shape in (("alone", alone, (B, H, Dk, Dv)), ("stacked", stacked, (layers, B, H, Dk, Dv))):
            for impl in ("recurrent", "fused"):
                key = (where, impl)
                states[key] = f(*shape) * 0.1

                def call(key=key, fn=make(impl)):
                    states[key], _ = fn(states[key], *x)
                    jax.block_until_ready(states[key])
                fns[key] = call
        t = _median_alternating(fns, rounds)
        t = {k: v / (layers if k[0] == "stacked" else 1) for k, v in t.items()}
        rows.append((B, B * H * Dk * Dv * 4 / 2**20, t))
    return rows


def print_step_table(rows, out=print):
    out("decode step, H=12 Dk=96 Dv=256, f32 state donated; ms per layer, median of alternating runs")
    out(f"{'batch':>6} {'state MiB':>10} {'alone: recurrent':>17} {'fused':>8} {'ratio':>6} "
        f"{'stacked scan: recurrent':>24} {'fused':>8} {'ratio':>6}")
    for B, mib, t in rows:
        cells = []
        for where in ("alone", "stacked"):
            r, fz = t[where, "recurrent"], t[where, "fused"]
            cells.append((1e3 * r, 1e3 * fz, r / fz))
        (a1, a2, a3), (b1, b2, b3) = cells
        out(f"{B:>6} {mib:>10.1f} {a1:>17.3f} {a2:>8.3f} {a3:>6.2f} {b1:>24.3f} {b2:>8.3f} {b3:>6.2f}")
    out("ratio = recurrent / fused (above 1: fused is faster)")


_MEM_CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp
from jet_jax.ops import gated_delta_rule
B, T, H, Dk, Dv = 1, int(sys.argv[1]), 12, 96, 256
shapes = [(B, T, H, Dk), (B, T, H, Dk), (B, T, H, Dv), (B, T, H), (B, T, H)]
loss = lambda *a: gated_delta_rule(*a, implementation="chunked")[0].sum()
f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
ma = f.lower(*specs).compile().memory_analysis()
out = dict(temp=ma.temp_size_in_bytes, args=ma.argument_size_in_bytes, outputs=ma.output_size_in_bytes)
if sys.argv[2] == "run":
    key = jax.random.split(jax.random.PRNGKey(0), 5)
    a = [jax.random.normal(kk, s) for kk, s in zip(key, shapes)]
    a[3] = -jnp.abs(a[3]) * 0.1
    a[4] = jax.nn.sigmoid(a[4])
    jax.block_until_ready(a)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    jax.block_until_ready(f(*a))
    out.update(seconds=time.perf_counter() - t0, peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               rss_before=base * 1024)
print(json.dumps(out))
"""


def bench_memory(T, run):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run(
        [sys.executable, "-c", _MEM_CHILD, str(T), "run" if run else "compile"],
        capture_output=True, text=True, env=env, check=True,
    )
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--run-memory", action="store_true", help="also run T=32768 and report the peak RSS (slow)")
    ap.add_argument("--skip-step", action="store_true", help="skip the decode-step table")
    args = ap.parse_args()
    GiB = 2**30
    if not args.skip_step:
        print_step_table(bench_step())
        print()
    if not args.skip_speed:
        print(f"{'case':<45} {'implementation':<44} {'seconds':>9}  note")
        for case, impl, sec, note in bench_speed(args.reps):
            print(f"{case:<45} {impl:<44} {sec:>9.4f}  {note}")
    if not args.skip_memory:
        print("\nchunked fwd+bwd memory, B=1 H=12 Dk=96 Dv=256 float32 (target < 4 GiB)")
        print(f"{'T':>7} {'XLA temp':>10} {'XLA args+out':>13} {'XLA total':>10} {'peak RSS':>10} {'run s':>7}")
        for T, run in ((8192, False), (32768, args.run_memory)):
            r = bench_memory(T, run)
            total = r["temp"] + r["args"] + r["outputs"]
            rss = f"{r['peak_rss'] / GiB:.2f} GiB" if "peak_rss" in r else "-"
            sec = f"{r['seconds']:.1f}" if "seconds" in r else "-"
            print(f"{T:>7} {r['temp'] / GiB:>6.2f} GiB {(r['args'] + r['outputs']) / GiB:>9.2f} GiB "
                  f"{total / GiB:>6.2f} GiB {rss:>10} {sec:>7}")


if __name__ == "__main__":
    main()
