"""Device suite: gated delta rule correctness and kernel table vs FLA, attention, throughput; one call.

Sized for one `run` of at most ~7 minutes on an H100/H200. Writes every table to one
markdown file (--out; default $OUT/gpu_suite.md when $OUT is set, else ./gpu_suite.md)
and prints them as it goes. A failing row prints why; the rest still run.

  (a) correctness on the device: every implementation (recurrent, chunked XLA, pallas =
      pallas_kernels.gdr_gpu) against the float32 recurrent reference computed on the same
      device at HIGHEST matmul precision: output, final state and all six gradients, as
      max|err|/max|ref|; cases with packed documents (segment ids), T not a multiple of 64,
      Dk != Dv, an initial state; f32 and bf16 inputs; the Pallas kernels with IEEE f32
      ("highest"), with tf32 dots and with bf16 dot operands, and with the optional Pallas chunk-local backward
      kernel (run past the shared-memory model, to learn whether it compiles). A kernel may be added to
      pallas_kernels/verified.py for this backend only after its rows here PASS; the suite
      prints the entry to paste (device, date, commit, max error, this command).
  (b) kernel table at the model's shapes (bf16 inputs, f32 state): chunked XLA (recompute
      groups of 8 chunks, the default, and one group: `remat_chunks=None`), pallas and
      FLA `chunk_gated_delta_rule` (torch, Triton; bf16 operands in its dots), forward and forward+backward, with the
      ratio to FLA. FLA 0.6.0's backward refuses to run on Hopper with triton < 3.7.1
      (FLA issue #640): that row prints the refusal.
  (c) throughput rows: `benchmarks/throughput.py` (= `jet-jax bench`: prefill/decode of the
      Jet-Nemotron-2B student vs the Qwen2.5-1.5B teacher at 4K, 16K and 64K; rows print as
      measured) run as a subprocess with --throughput-args, cut off after
      --throughput-timeout seconds.
  (d) attention on the device: every implementation that can run there ("chunked" XLA,
      "cudnn" on a GPU) against the dense "xla" reference computed at HIGHEST precision,
      output and the q/k/v gradients, with GQA, a sliding window, T not a multiple of the
      blocks, and (chunked) packed documents; f32 and bf16. An implementation may be added
      to `VERIFIED` in jet_jax/ops/attention.py for this backend only after its rows here
      PASS; the suite prints the line.
  (e) the layer scan on the device: the Jet-Nemotron-2B preset (bf16, random weights)
      `stack_layers` (with and without fused input projections) vs unrolled: lower+compile
      time of the decode step (the issue measured
      18.6 s unrolled on an H200) and, stacked, of a 2048-token prefill chunk (63.7 s
      unrolled), and the decode step time at batch 64 (does slicing each layer's weights out
      of a stack cost time here?). Runs before (c) and leaves it its time.
  (f) the gated-delta-rule decode step, reference vs "fused" (the state read once for its
      two products), alone and inside a stacked layer scan (state rows updated in place, as
      the stacked decode runs), f32 state at the 2B heads, batch 64 to 1024
      (benchmarks/gdr_cpu.py table 4). On the 2-core CPU "fused" is faster alone and slower
      in the stacked scan, so "auto" runs the reference step; this measures the GPU.

The exact device call for the next session (FLA is not on the GPU image; it travels as
the pure-Python fla-core wheel, see /work/.library/device/README.md). Once, here, in the
repository root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 -d .whl fla-core==0.6.0

then `run` with carry [".whl"], timeout_s 480, and the command:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; \
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --out $OUT/gpu_suite.md

On CPU (`--cpu`): tiny shapes, the Pallas kernels in interpret mode, FLA and the
throughput rows skipped -- a check that the script runs, not a measurement.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import shlex
import subprocess
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import kernels as kb  # noqa: E402

NAMES = ("o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dh0")
TOL = {"float32": {"recurrent": 1e-5, "chunked": 2e-3, "pallas": 1e-4, "pallas-tf32": 2e-3, "pallas-bf16-dots": 3e-2,
                   "pallas-local-bwd": 1e-4},
       "bfloat16": {"recurrent": 2e-2, "chunked": 2e-2, "pallas": 2e-2, "pallas-tf32": 2e-2, "pallas-bf16-dots": 3e-2,
                    "pallas-local-bwd": 2e-2}}
# Pallas variants: name -> gated_delta_rule_pallas options. "pallas-local-bwd" runs the
# optional Pallas chunk-local backward kernel past the (conservative) shared-memory model,
# to learn on the device whether it compiles and how fast it is; a failure prints why.
PALLAS = {"pallas": dict(precision="highest"), "pallas-tf32": dict(precision="tf32"),
          "pallas-bf16-dots": dict(precision="bf16"),
          "pallas-local-bwd": dict(precision="highest", local_bwd="pallas", check_smem=False)}


class Report:
    """Collects markdown; echoes each line to stdout; knows the suite's time budget."""

    def __init__(self, budget_s=1e9):
        self.lines = []
        self.deadline = time.perf_counter() + budget_s

    def left(self):
        return self.deadline - time.perf_counter()

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(line)

    def table(self, header, rows):
        self("| " + " | ".join(header) + " |")
        self("|" + "---|" * len(header))
        for r in rows:
            self("| " + " | ".join(str(x) for x in r) + " |")
        self()


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:                                    # noqa: BLE001 - the copy may have no .git
        return "unknown"


def _case_inputs(B, T, H, Dk, Dv, seed):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    seg = np.zeros((B, T), np.int32)
    for b in range(B):                                  # 3 documents per row, cuts off chunk edges
        for c in np.sort(rng.choice(np.arange(1, T), size=min(2, T - 1), replace=False)):
            seg[b, c:] += 1
    return dict(q=f(B, T, H, Dk), k=f(B, T, H, Dk), v=f(B, T, H, Dv),
                g=np.log(rng.uniform(0.85, 1.0, (B, T, H))).astype(np.float32),
                beta=rng.uniform(0, 1, (B, T, H)).astype(np.float32), h0=f(B, H, Dk, Dv) * 0.1,
                seg=seg, wo=f(B, T, H, Dv), ws=f(B, H, Dk, Dv))


def _fwd_bwd(impl, d, dtype, interpret):
    from jet_jax.ops.gated_delta_rule import gated_delta_rule
    from pallas_kernels.gdr import gated_delta_rule_pallas
    seg = jnp.asarray(d["seg"])

    def f(q, k, v, g, beta, h0):
        kw = dict(initial_state=h0, output_final_state=True, segment_ids=seg)
        if impl in PALLAS:
            return gated_delta_rule_pallas(q, k, v, g, beta, interpret=interpret, backend="gpu", **PALLAS[impl],
                                           **kw)
        return gated_delta_rule(q, k, v, g, beta, implementation=impl, **kw)

    @jax.jit
    def run(q, k, v, g, beta, h0):
        (o, ht), vjp = jax.vjp(f, q, k, v, g, beta, h0)
        return o, ht, vjp((jnp.asarray(d["wo"]).astype(o.dtype), jnp.asarray(d["ws"])))

    args = [jnp.asarray(d[n]).astype(dtype) for n in ("q", "k", "v")] + [jnp.asarray(d[n]) for n in ("g", "beta", "h0")]
    o, ht, grads = run(*args)
    return [np.asarray(x.astype(jnp.float32)) for x in (o, ht, *grads)]


def correctness(rep, cpu):
    rep("## (a) correctness against the f32 recurrent reference (same device)")
    rep()
    # (shape, dtypes): bf16 only on the model-like case, to keep compiles inside the budget
    cases = ([((1, 70, 2, 24, 40), (jnp.float32, jnp.bfloat16))] if cpu else
             [((2, 1000, 4, 96, 256), (jnp.float32, jnp.bfloat16)), ((1, 333, 2, 128, 64), (jnp.float32,))])
    combos = []                                          # (label, inputs, dtype name, dtype, reference)
    for (B, T, H, Dk, Dv), dtypes in cases:
        d = _case_inputs(B, T, H, Dk, Dv, seed=T)
        for dtype in dtypes:
            if dtype == jnp.bfloat16:                   # the reference sees the same bf16-rounded inputs
                d = dict(d, **{n: np.asarray(jnp.asarray(d[n]).astype(dtype).astype(jnp.float32))
                               for n in ("q", "k", "v")})
            with jax.default_matmul_precision("highest"):
                ref = _fwd_bwd("recurrent", d, jnp.float32, interpret=None)
            dn = jnp.dtype(dtype).name
            combos.append((f"{B},{T},{H},{Dk}/{Dv} segs+h0 {dn}", d, dn, dtype, ref))
    rows, worst = [], {}
    # the implementations `auto` may pick first (over every case), then the experiment variants
    for phase in (("recurrent", "chunked", "pallas"), tuple(p for p in PALLAS if p != "pallas")):
        for label, d, dn, dtype, ref in combos:
            for impl in phase:
                if rep.left() < 60:
                    rows.append([label, impl, *(["-"] * len(NAMES)), "skipped: time budget"])
                    worst[impl] = float("inf")
                    continue
                try:
                    got = _fwd_bwd(impl, d, dtype, interpret="plain" if cpu else False)
                    errs = [float(np.max(np.abs(a - r)) / max(np.max(np.abs(r)), 1e-30)) for a, r in zip(got, ref)]
                    bad = [n for n, e in zip(NAMES, errs) if not np.isfinite(e) or e > TOL[dn][impl]]
                    worst[impl] = max(worst.get(impl, 0.0), max(errs)) if not bad else float("inf")
                    rows.append([label, impl, *(f"{e:.2e}" for e in errs),
                                 "PASS" if not bad else "FAIL " + ",".join(bad)])
                except Exception as e:                   # noqa: BLE001 - a failing row says why
                    rows.append([label, impl, *(["-"] * len(NAMES)), f"ERROR {type(e).__name__}: "
                                 f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"])
                    worst[impl] = float("inf")
    rep.table(["shape B,T,H,Dk/Dv", "impl", *NAMES, "result"], rows)
    rep(f"tolerances (max|err|/max|ref|): {TOL}")
    rep()
    return rows, worst


def kernel_table(rep, cpu, iters):
    rep("## (b) kernel table (bf16 inputs, f32 state): ms, best of %d" % iters)
    rep()
    from jet_jax.ops.gated_delta_rule import gated_delta_rule
    from pallas_kernels.gdr import gated_delta_rule_pallas
    shapes = [(1, 128, 2, 32, 64)] if cpu else [(8, 4096, 12, 96, 256), (4, 8192, 16, 128, 256)]
    dtype = jnp.float32 if cpu else jnp.bfloat16
    impls = [("jet_jax chunked (XLA)", lambda *a: gated_delta_rule(*a, implementation="chunked")),
             # every chunk in one recompute group: no loop over groups, 4-16x larger batched
             # intra-chunk products; on CPU 30% slower (cache), here unmeasured
             ("jet_jax chunked (XLA), one recompute group",
              lambda *a: gated_delta_rule(*a, implementation="chunked", remat_chunks=None))]
    impls += [(name, lambda *a, o=opts: gated_delta_rule_pallas(*a, interpret="plain" if cpu else False,
                                                                 backend="gpu", **o))
              for name, opts in PALLAS.items()]
    rows = []
    for shape in shapes:
        inputs = kb._inputs(*shape, dtype)
        label = ",".join(map(str, shape[:3])) + f",{shape[3]}/{shape[4]}"
        fla = kb.fla_times(inputs, iters) if rep.left() > 45 else ["skipped: time budget"] * 2
        for name, fn in impls:
            fwd, fwd_bwd = kb._jax_fns(fn)
            t = [kb.try_time(f, inputs, iters) if rep.left() > 45 else "skipped: time budget"
                 for f in (fwd, fwd_bwd)]
            rows.append([label, name, *(_ms(x) for x in t), *(_ratio(x, f) for x, f in zip(t, fla))])
        rows.append([label, "FLA chunk_gated_delta_rule", *(_ms(x) for x in fla), *(_ratio(f, f) for f in fla)])
    rep.table(["shape B,T,H,Dk/Dv", "impl", "fwd ms", "fwd+bwd ms", "fwd vs FLA", "fwd+bwd vs FLA"], rows)
    rep("(ratio = FLA time / this time: > 1 is faster than FLA)")
    rep()


def _ms(x):
    return f"{x * 1e3:.2f}" if isinstance(x, float) else x


def _ratio(x, f):
    return f"{f / x:.2f}x" if isinstance(x, float) and isinstance(f, float) else "-"


def throughput(rep, cpu, args_str, timeout):
    rep("## (c) throughput rows (benchmarks/throughput.py %s)" % args_str)
    rep()
    if cpu:
        rep("skipped with --cpu")
        return
    timeout = int(min(timeout, rep.left() - 15))
    if timeout < 30:
        rep(f"skipped: time budget ({rep.left():.0f} s left)")
        return
    cmd = [sys.executable, "benchmarks/throughput.py", *shlex.split(args_str)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        rep("```")
        for line in (p.stdout.strip().splitlines() or ["(no output)"]):
            rep(line)
        if p.returncode:
            rep(f"exit code {p.returncode}; stderr tail:")
            for line in p.stderr.strip().splitlines()[-8:]:
                rep(line)
        rep("```")
    except subprocess.TimeoutExpired as e:
        rep(f"cut off after {timeout} s; partial output:")
        rep("```")
        for line in (e.stdout or b"").decode(errors="replace").strip().splitlines()[-20:]:
            rep(line)
        rep("```")
    rep()


def layer_scan(rep, cpu, keep_s=215):
    """(e) The 2B preset (bf16, random weights) through `stack_layers` vs unrolled: compile
    time of the decode step, the decode step time (batch 64, 4096 positions), and (stacked
    only: the issue measured 63.7 s unrolled) the compile time of a 2048-token prefill chunk.
    Each row starts only while more than `keep_s` seconds of the budget are left, so part
    (c) keeps its time."""
    from flax import nnx
    from jet_jax.generation import decode_step, prefill_step
    from jet_jax.model import JetNemotronForCausalLM, stack_layers
    from jet_jax.presets import TINY_JET, get_preset

    from benchmarks.long_context import median_decode_step_s
    rep("## (e) layer scan on the device: Jet-Nemotron-2B decode and prefill, unrolled vs stacked")
    rep()
    cfg, batch, ctx, chunk = get_preset("jet-nemotron-2b"), 64, 4096, 2048
    if cpu:
        cfg, batch, ctx, chunk, keep_s = TINY_JET, 2, 64, 32, 0
    dt = jnp.bfloat16
    model = JetNemotronForCausalLM(cfg, rngs=nnx.Rngs(0), dtype=dt, param_dtype=dt)
    i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
    rows = []
    for mode in ("stacked", "stacked, projections unfused", "unrolled"):
        if rep.left() < keep_s:
            rows.append((mode, f"skipped: time budget ({rep.left():.0f} s left)", "", ""))
            continue
        m = model if mode == "unrolled" else stack_layers(model, fuse_projections=mode == "stacked")
        graphdef, state = nnx.split(m)
        cache = m.init_cache(batch, ctx, dt)
        t0 = time.perf_counter()
        step = decode_step.lower(graphdef, state, i32(batch), i32(batch), cache).compile()
        compile_decode = time.perf_counter() - t0
        step_s = median_decode_step_s(step, state, batch, cache, 10)
        del cache, step
        prefill_s = ("not run (the issue: 63.7 s at 4265ea6)" if mode == "unrolled" else
                     "not run" if mode != "stacked" else "skipped: time budget")
        if mode == "stacked" and rep.left() > keep_s:
            one = jax.eval_shape(functools.partial(m.init_cache, 1, ctx, dt))
            t0 = time.perf_counter()
            prefill_step.lower(graphdef, state, i32(1, chunk), i32(1, chunk), i32(1, chunk), one,
                               jax.ShapeDtypeStruct((1,), bool)).compile()
            prefill_s = f"{time.perf_counter() - t0:.1f}"
        rows.append((mode, f"{compile_decode:.1f}", f"{1e3 * step_s:.2f}", prefill_s))
        del m, state
    rep(f"batch {batch}, {ctx} positions, prefill chunk {chunk}; compile = lower + compile")
    rep()
    rep.table(["code", "decode compile (s)", "decode step (ms, median of 10)", "prefill chunk compile (s)"], rows)


def decode_step_forms(rep, cpu, keep_s=300):
    """(f) The GDR decode step, reference vs "fused", alone and in a stacked layer scan.
    Starts only while more than `keep_s` seconds are left (parts (e) and (c) follow)."""
    from benchmarks.gdr_cpu import bench_step, print_step_table
    rep("## (f) gated delta rule decode step: reference vs fused, alone and in a stacked layer scan")
    rep()
    if not cpu and rep.left() < keep_s:
        rep(f"skipped: time budget ({rep.left():.0f} s left)")
        rep()
        return
    rows = bench_step(batches=(1, 2) if cpu else (64, 256, 1024), rounds=2 if cpu else 11)
    rep("```")
    print_step_table(rows, out=rep)
    rep("```")
    rep()
    rep("Where the stacked-scan ratio is above 1 at the batch sizes `jet-jax bench` runs, "
        "'auto' may run 'fused' on this backend (gated_delta_rule_step in jet_jax/ops/gated_delta_rule.py).")
    rep()


ATTN_TOL = {"float32": 2e-3, "bfloat16": 3e-2}  # max|err| / max|ref|, output and gradients


def attention(rep, cpu):
    """(d): returns {implementation: worst error over its rows} for the rows that ran."""
    from jet_jax.ops.attention import dot_product_attention
    rep("## (d) attention implementations against the dense reference (same device)")
    rep()
    b, t, h, kv, d = (1, 100, 4, 2, 16) if cpu else (2, 1000, 12, 2, 128)
    blocks = dict(q_block=32, kv_block=16) if cpu else {}
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((b, t, n, d)).astype(np.float32) for n in (h, kv, kv))
    seg = np.repeat(np.arange(3, dtype=np.int32), -(-t // 3))[None, :t].repeat(b, 0)
    w = rng.standard_normal((b, t, h, d)).astype(np.float32)
    impls = ["chunked"] + ([] if cpu or jax.default_backend() != "gpu" else ["cudnn"])
    cases = [("causal", None, False), ("window 257", 257, False), ("causal, 3 documents", None, True)]

    def run(impl, dtype, window, segments):
        kw = dict(window=window)
        if segments:
            kw.update(q_segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(seg))
        extra = blocks if impl == "chunked" else {}
        f = lambda q, k, v: dot_product_attention(q, k, v, implementation=impl, **kw, **extra)

        @jax.jit
        def fwd_bwd(q, k, v):
            o, vjp = jax.vjp(f, q, k, v)
            return (o, *vjp(jnp.asarray(w).astype(o.dtype)))
        with jax.default_matmul_precision("highest"):
            return [np.asarray(x.astype(jnp.float32)) for x in
                    fwd_bwd(*(jnp.asarray(x).astype(dtype) for x in (q, k, v)))]

    rows, worst = [], {}
    for dtype in (jnp.float32, jnp.bfloat16):
        name = jnp.dtype(dtype).name
        for label, window, segments in cases:
            try:
                ref = run("xla", jnp.float32, window, segments)
            except Exception as e:                         # noqa: BLE001 - keep the other rows
                rows.append(["xla", name, label, f"reference failed: {type(e).__name__}: {e}"[:160], "-"])
                continue
            for impl in impls:
                if impl == "cudnn" and segments:
                    continue  # cudnn takes no segment ids (the op refuses them)
                try:
                    got = run(impl, dtype, window, segments)
                    err = max(float(np.max(np.abs(g - r)) / max(float(np.max(np.abs(r))), 1e-30))
                              for g, r in zip(got, ref))
                    ok = err <= ATTN_TOL[name]
                    # a failed row makes the implementation's worst error inf for good
                    worst[impl] = max(worst.get(impl, 0.0), err if ok else np.inf)
                    rows.append([impl, name, label, f"{err:.2e}", "PASS" if ok else "FAIL"])
                except Exception as e:                     # noqa: BLE001
                    worst[impl] = np.inf
                    rows.append([impl, name, label, f"{type(e).__name__}: {e}"[:160], "FAIL"])
    rep.table(["implementation", "dtype", "case", "max err (o, dq, dk, dv) / max ref", "result"], rows)
    passed = [i for i, e in worst.items() if np.isfinite(e)]
    if passed and not cpu:
        backend = "gpu" if jax.default_backend() == "gpu" else jax.default_backend()
        rep(f"Passed on this device: add {passed} to VERIFIED[{backend!r}] in jet_jax/ops/attention.py "
            f"(device {jax.devices()[0].device_kind}, commit {_commit()}, {datetime.date.today().isoformat()}).")
        rep()
    return worst


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = os.path.join(os.environ["OUT"], "gpu_suite.md") if os.environ.get("OUT") else "gpu_suite.md"
    p.add_argument("--out", default=default_out)
    p.add_argument("--cpu", action="store_true", help="tiny shapes, interpret mode: a smoke run of the script")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: a,b,c,d,e,f")
    p.add_argument("--throughput-args", default="--student jet-nemotron-2b --teacher qwen2.5-1.5b "
                   "--contexts 4096,16384,65536 --budget-gib 60")
    p.add_argument("--throughput-timeout", type=int, default=200)
    p.add_argument("--budget", type=float, default=400,
                   help="seconds: rows that would start later than this print 'skipped: time budget'")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    rep = Report(args.budget)
    t0 = time.perf_counter()
    dev = jax.devices()[0]
    rep(f"# gated delta rule device suite -- {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"commit {_commit()}, {datetime.date.today().isoformat()}")
    rep()
    parts = [("a", lambda: correctness(rep, args.cpu)), ("b", lambda: kernel_table(rep, args.cpu, args.iters)),
             ("d", lambda: attention(rep, args.cpu)), ("f", lambda: decode_step_forms(rep, args.cpu)),
             ("e", lambda: layer_scan(rep, args.cpu)),
             ("c", lambda: throughput(rep, args.cpu, args.throughput_args, args.throughput_timeout))]
    worst = None
    for key, fn in parts:
        if key in skip:
            continue
        try:
            out = fn()
            if key == "a":
                worst = out[1]
        except Exception:                                 # noqa: BLE001 - keep the other parts
            rep(f"part ({key}) failed:")
            rep("```")
            for line in traceback.format_exc().strip().splitlines()[-10:]:
                rep(line)
            rep("```")
    if worst is not None and not args.cpu and np.isfinite(worst.get("pallas", np.inf)):  # default options
        rep("Pallas passed (a). Entry for pallas_kernels/verified.py:")
        rep("```")
        rep(f'Verification("gated_delta_rule", "gpu", {dev.device_kind!r}, '
            f'"{datetime.date.today().isoformat()}", "{_commit()}", {worst["pallas"]:.2e}, '
            f'"python3 benchmarks/gpu_suite.py")')
        rep("```")
    rep(f"suite wall time {time.perf_counter() - t0:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(rep.lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
