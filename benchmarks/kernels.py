"""Benchmark of the gated delta rule implementations, one table.

    python benchmarks/kernels.py            # model sizes (GPU/TPU)
    python benchmarks/kernels.py --small    # tiny CPU sizes (Pallas runs in interpret mode)

Rows: jet_jax recurrent (lax.scan), jet_jax chunked XLA, Pallas (pallas_kernels.gdr), and,
on a CUDA machine where FLA's Triton kernels run, FLA `chunk_gated_delta_rule` through
torch on the same inputs (a row that fails prints why; the others still print). Each is timed forward and forward+backward (best of --iters
runs after a warm-up/compile; min, since noise on a shared machine only adds time). Shapes: B=8,T=4096,H=12,Dk/Dv=96/256 and
B=4,T=8192,H=16,Dk/Dv=128/256 (bf16 inputs, f32 state).

TFLOP/s counts the same algorithmic work for every row: the chunked form's matmul FLOPs
(chunk 64, per chunk and head: 6 C^2 Dk + 4 C^2 Dv + 6 C Dk Dv for the forward, the
triangular solve left out; fwd+bwd counted as 3x fwd, the usual convention), so a row's
TFLOP/s is work/time and rows compare directly. "% roofline" divides by
min(peak, intensity x bandwidth), where peak is a bf16 (f32 on CPU) matmul and bandwidth a
large copy, both measured in this same run on this device; intensity = FLOPs / minimum
bytes (read q, k, v, g, beta once, write o once; gradients double the bytes for fwd+bwd).
On CPU with --small the Pallas row runs the kernels in interpret mode: its time says
nothing about kernel speed, only that the path works end to end.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

CHUNK = 64


def _time(fn, args, iters):
    out = fn(*args)
    jax.block_until_ready(out)                       # compile + warm-up
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return min(ts)        # min, not median: shared machines add one-sided noise


def measure_roofline(small):
    """(peak FLOP/s of a square matmul, bytes/s of a large copy) measured on this device."""
    on_cpu = jax.default_backend() == "cpu"
    n = 1024 if (small or on_cpu) else 8192
    dt = jnp.float32 if on_cpu else jnp.bfloat16
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dt)
    mm = jax.jit(lambda x, y: x @ y)
    peak = 2 * n ** 3 / _time(mm, (a, a), 5)
    m = (1 << 22) if (small or on_cpu) else (1 << 28)
    x = jnp.ones((m,), jnp.float32)
    cp = jax.jit(lambda x: x * 1.0001)
    bw = 2 * 4 * m / _time(cp, (x,), 5)
    return peak, bw


def gdr_flops(B, T, H, Dk, Dv):
    nt = -(-T // CHUNK)
    c = CHUNK
    return B * H * nt * (6 * c * c * Dk + 4 * c * c * Dv + 6 * c * Dk * Dv)


def gdr_bytes(B, T, H, Dk, Dv, itemsize):
    return B * T * H * ((2 * Dk + 2 * Dv) * itemsize + 2 * 4)


def _inputs(B, T, H, Dk, Dv, dtype, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((B, T, H, Dk)), dtype)
    k = jnp.asarray(rng.standard_normal((B, T, H, Dk)), dtype)
    v = jnp.asarray(rng.standard_normal((B, T, H, Dv)), dtype)
    g = jnp.asarray(np.log(rng.uniform(0.9, 1.0, (B, T, H))), jnp.float32)
    beta = jnp.asarray(rng.uniform(0, 1, (B, T, H)), jnp.float32)
    return q, k, v, g, beta


def _jax_fns(impl_fn):
    fwd = jax.jit(lambda *a: impl_fn(*a)[0])

    def loss(*a):
        return jnp.sum(impl_fn(*a)[0].astype(jnp.float32))

    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
    return fwd, fwd_bwd


def _why(e):
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:160] if msg else ''}"


def try_time(fn, args, iters):
    """_time(fn, args, iters) in seconds, or a one-line 'failed: ...' string (the row still prints)."""
    try:
        return _time(fn, args, iters)
    except Exception as e:                               # noqa: BLE001 - one row must not lose the table
        return "failed: " + _why(e)


def fla_times(inputs, iters):
    """[fwd, fwd+bwd] of FLA chunk_gated_delta_rule via torch on CUDA: seconds, or a string
    saying why that pass did not run (no CUDA torch, no FLA, or FLA refusing, e.g. its
    backward on Hopper with triton < 3.7.1)."""
    try:
        import torch
        if not torch.cuda.is_available():
            return ["not run: torch has no CUDA device"] * 2
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as e:                               # noqa: BLE001 - optional row
        return ["not run: " + _why(e)] * 2
    dev = "cuda"
    tq, tk, tv = (torch.tensor(np.asarray(x.astype(jnp.float32)), device=dev).to(torch.bfloat16)
                  for x in inputs[:3])
    tg, tb = (torch.tensor(np.asarray(x), device=dev) for x in inputs[3:])

    def run(bwd):
        args = [t.detach().requires_grad_(bwd) for t in (tq, tk, tv, tg, tb)]
        o, _ = chunk_gated_delta_rule(*args, use_qk_l2norm_in_kernel=True)
        if bwd:
            o.float().sum().backward()

    out = []
    for bwd in (False, True):
        try:
            run(bwd)
            torch.cuda.synchronize()
            ts = []
            for _ in range(iters):
                t0 = time.perf_counter()
                run(bwd)
                torch.cuda.synchronize()
                ts.append(time.perf_counter() - t0)
            out.append(min(ts))
        except Exception as e:                           # noqa: BLE001 - e.g. FLA's Hopper refusal
            out.append("failed: " + _why(e))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny CPU-sized shapes")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--skip-recurrent", action="store_true",
                   help="leave out the token-by-token scan (slow at T=8192)")
    p.add_argument("--impls", default="recurrent,chunked,pallas",
                   help="comma-separated subset of recurrent,chunked,pallas")
    p.add_argument("--shape", action="append", default=None,
                   help="B,T,H,Dk,Dv (repeatable); overrides the default shapes")
    args = p.parse_args(argv)

    from jet_jax.ops.gated_delta_rule import gated_delta_rule
    from pallas_kernels.gdr import gated_delta_rule_pallas

    on_cpu = jax.default_backend() == "cpu"
    if args.small:
        # one tiny shape (the Pallas row is interpreted). The chunked XLA fwd+bwd stalled
        # on this CPU at Dk >= 64 before issue 10 (seen 2026-11-23, 64-step loop inverse);
        # the block-substitution form ran 1,2048,4,96/256 (benchmarks/gdr_xla_form.py)
        shapes = [(1, 128, 2, 32, 64)]
    else:
        shapes = [(8, 4096, 12, 96, 256), (4, 8192, 16, 128, 256)]
    dtype = jnp.float32 if on_cpu else jnp.bfloat16
    iters = 2 if args.small else args.iters
    peak, bw = measure_roofline(args.small)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"measured matmul peak {peak / 1e12:.3f} TFLOP/s ({jnp.dtype(dtype).name}), "
          f"copy bandwidth {bw / 1e9:.1f} GB/s")

    if args.shape:
        shapes = [tuple(int(n) for n in s.split(",")) for s in args.shape]
    wanted = set(args.impls.split(","))
    if args.skip_recurrent:
        wanted.discard("recurrent")
    impls = []
    if "recurrent" in wanted:
        impls.append(("recurrent (XLA scan)", lambda *a: gated_delta_rule(
            *a, implementation="recurrent")))
    if "chunked" in wanted:
        impls.append(("chunked (XLA)", lambda *a: gated_delta_rule(*a, implementation="chunked")))
    if "pallas" in wanted:
        impls.append(("pallas (interpret)" if on_cpu else "pallas",
                      lambda *a: gated_delta_rule_pallas(*a, interpret="plain" if on_cpu else False)))

    header = (f"{'shape B,T,H,Dk/Dv':<22} {'impl':<22} {'pass':<8} {'ms':>10} "
              f"{'TFLOP/s':>9} {'% roofline':>10}")
    print(header)
    print("-" * len(header))
    for (B, T, H, Dk, Dv) in shapes:
        inputs = _inputs(B, T, H, Dk, Dv, dtype)
        flops = gdr_flops(B, T, H, Dk, Dv)
        nbytes = gdr_bytes(B, T, H, Dk, Dv, jnp.dtype(dtype).itemsize)
        rows = []
        for name, fn in impls:
            fwd, fwd_bwd = _jax_fns(fn)
            rows.append((name, try_time(fwd, inputs, iters), try_time(fwd_bwd, inputs, iters)))
        if not on_cpu:
            rows.append(("fla chunk (torch)", *fla_times(inputs, iters)))
        label = f"{B},{T},{H},{Dk}/{Dv}"
        for name, t_f, t_fb in rows:
            for pass_name, t, mult in (("fwd", t_f, 1), ("fwd+bwd", t_fb, 3)):
                if not isinstance(t, float):             # the row says why and the table goes on
                    print(f"{label:<22} {name:<22} {pass_name:<8} {t}")
                    continue
                f = flops * mult
                roof = min(peak, f / (nbytes * (1 if mult == 1 else 2)) * bw)
                print(f"{label:<22} {name:<22} {pass_name:<8} {t * 1e3:>10.2f} "
                      f"{f / t / 1e12:>9.4f} {100 * f / t / roof:>9.1f}%")


if __name__ == "__main__":
    main()
