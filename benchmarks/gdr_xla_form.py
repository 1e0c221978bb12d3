"""The XLA chunked gated delta rule before/after a change, side by side in one run.

    PYTHONPATH=$PWD python benchmarks/gdr_xla_form.py --baseline 4265ea6

1. Sequential steps of the compiled forward at T=4096 (B=1, H=2, Dk/Dv=96/256): the
   total number of while-loop iterations the compiled program runs, read from the
   compiled HLO (each while loop's known_trip_count, multiplied through the nesting).
   A while-loop iteration is a serial step on any device (a GPU launches its kernels one
   after another), so this is the latency floor the form imposes, independent of the CPU.
2. CPU time, fwd and fwd+bwd (best of --reps after a compile) on a modest shape.

"baseline" is jet_jax/ops/gated_delta_rule.py as of the git revision --baseline, loaded
from `git show` into its own module; "current" is the working tree.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def sequential_steps(hlo_text: str) -> int:
    """Total while-loop iterations of a compiled HLO module (trip counts multiplied
    through nested loops and called computations; a loop without a known trip count
    counts as 1 and is reported on stderr)."""
    comps, name = {}, None
    for line in hlo_text.splitlines():
        m = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and not line.startswith(" "):
            name = m.group(1)
            comps[name] = []
            if line.startswith("ENTRY"):
                comps["__entry__"] = name
            continue
        if name is not None and line.strip():
            comps[name].append(line)

    def children(comp):
        out = []
        for line in comps.get(comp, []):
            trip = 1
            if " while(" in line:
                t = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                if t:
                    trip = int(t.group(1))
                else:
                    print(f"while loop without known trip count: {line.strip()[:120]}", file=sys.stderr)
                body = re.search(r"body=%?([\w.\-]+)", line)
                out.append((body.group(1), trip, True))
                cond = re.search(r"condition=%?([\w.\-]+)", line)
                if cond:
                    out.append((cond.group(1), trip, False))
                continue
            for key in ("calls", "to_apply", "true_computation", "false_computation"):
                for c in re.findall(key + r"=%?([\w.\-]+)", line):
                    out.append((c, 1, False))
            bc = re.search(r"branch_computations=\{([^}]*)\}", line)
            if bc:
                out += [(c.strip().lstrip("%"), 1, False) for c in bc.group(1).split(",")]
        return out

    def count(comp):
        total = 0
        for child, trip, is_body in children(comp):
            inner = count(child)
            total += trip * (inner + (1 if is_body else 0)) if is_body else inner
        return total

    return count(comps["__entry__"])


def _load_baseline(rev):
    src = subprocess.run(["git", "show", f"{rev}:jet_jax/ops/gated_delta_rule.py"], check=True,
                         capture_output=True, text=True).stdout
    f = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    f.write(src)
    f.close()
    spec = importlib.util.spec_from_file_location("gdr_baseline", f.name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _inputs(B, T, H, Dk, Dv, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))
    g = -jnp.abs(f(B, T, H)) * 0.1
    beta = jax.nn.sigmoid(f(B, T, H))
    return f(B, T, H, Dk), f(B, T, H, Dk), f(B, T, H, Dv), g, beta


def _best(fn, args, reps):
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="4265ea6", help="git revision of the 'before' form")
    ap.add_argument("--shape", default="1,1024,4,64,128", help="B,T,H,Dk,Dv of the timing rows")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    current = importlib.import_module("jet_jax.ops.gated_delta_rule")
    forms = [("baseline " + args.baseline, _load_baseline(args.baseline)), ("current", current)]

    print("sequential steps of the compiled chunked forward, B=1 T=4096 H=2 Dk/Dv=96/256")
    specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in
             ((1, 4096, 2, 96), (1, 4096, 2, 96), (1, 4096, 2, 256), (1, 4096, 2), (1, 4096, 2))]
    for name, mod in forms:
        f = jax.jit(lambda *a, mod=mod: mod.gated_delta_rule(*a, implementation="chunked")[0])
        hlo = f.lower(*specs).compile().as_text()
        print(f"  {name:<22} {sequential_steps(hlo):>6} while-loop iterations")

    B, T, H, Dk, Dv = (int(x) for x in args.shape.split(","))
    a = _inputs(B, T, H, Dk, Dv)
    print(f"\nCPU time (s), best of {args.reps}, B={B} T={T} H={H} Dk/Dv={Dk}/{Dv} float32, "
          f"device {jax.devices()[0].device_kind}")
    print(f"  {'form':<22} {'fwd':>9} {'fwd+bwd':>9}")
    for name, mod in forms:
        fwd = jax.jit(lambda *x, mod=mod: mod.gated_delta_rule(*x, implementation="chunked")[0])
        loss = lambda *x, mod=mod: mod.gated_delta_rule(*x, implementation="chunked")[0].sum()
        fb = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
        print(f"  {name:<22} {_best(fwd, a, args.reps):>9.4f} {_best(fb, a, args.reps):>9.4f}")


if __name__ == "__main__":
    main()
