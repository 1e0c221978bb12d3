"""Run a `jet-jax` command as several JAX processes on this machine (what a pod does per host).

    python -m jet_jax_train.launch --processes 2 --cpu-devices-per-process 4 -- \\
        distill --config configs/distill_tiny.py --set mesh.shape="(2, 2, 2)" \\
        --set data.num_shards=2

Every process runs `python -m jet_jax.cli <command...>` with
JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>, JAX_NUM_PROCESSES and JAX_PROCESS_ID set, which
`jet_jax_train.distributed.initialize_distributed` passes to `jax.distributed.initialize`; with
`--cpu-devices-per-process D` each process gets D fake CPU devices (JAX_PLATFORMS=cpu,
XLA_FLAGS=--xla_force_host_platform_device_count=D), so 2 x 4 forms the same 8-device mesh a
single process with 8 fake devices has. On a real pod the scheduler starts one process per
host instead and JAX detects the cluster by itself; this launcher is for testing that path on
one machine (and for a multi-process run on one multi-GPU node).

Supervision: SIGTERM / SIGINT to the launcher is forwarded to every process (they agree on a
step, save a checkpoint and exit 0, see jet_jax_train.preemption). When a process exits non-zero the
others are given `--grace` seconds (default: the heartbeat timeout + 30 s) to stop by
themselves - JAX aborts them once it notices the lost peer - and are then killed. The launcher
exits with 0 if every process did, else with the first non-zero exit status (128 + signal for
a process killed by a signal).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, port: int,
                cpu_devices_per_process: int | None = None, base: dict | None = None) -> dict:
    """The environment of process `process_id` of a local multi-process run."""
    env = dict(os.environ if base is None else base)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id), PYTHONUNBUFFERED="1")
    if cpu_devices_per_process:
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={cpu_devices_per_process}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def spawn(command: list[str], num_processes: int, *, cpu_devices_per_process: int | None = None,
          port: int | None = None, env: dict | None = None, module: str = "jet_jax.cli",
          **popen_kw) -> list[subprocess.Popen]:
    """Start `python -m <module> <command>` (default: the jet-jax CLI) as `num_processes`
    JAX processes; extra keyword arguments go to `subprocess.Popen`."""
    if num_processes < 1:
        raise ValueError(f"--processes must be >= 1, got {num_processes}")
    port = free_port() if port is None else port
    cwd = popen_kw.pop("cwd", None) or os.getcwd()
    return [subprocess.Popen([sys.executable, "-m", module, *command],
                             env=process_env(i, num_processes, port, cpu_devices_per_process, env),
                             cwd=cwd, **popen_kw)
            for i in range(num_processes)]


def _status(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


def supervise(procs: list[subprocess.Popen], grace_s: float, print_fn=print) -> int:
    """Wait for all; forward SIGTERM/SIGINT; kill the rest `grace_s` after one fails."""
    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    first_failure, failed_at = None, None
    try:
        while any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                rc = p.poll()
                if rc not in (None, 0) and first_failure is None:
                    first_failure, failed_at = (i, rc), time.monotonic()
                    print_fn(f"[launch] process {i} exited with status {_status(rc)}; the others "
                             f"have {grace_s:.0f} s to stop before they are killed")
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        print_fn(f"[launch] process {i} still running {grace_s:.0f} s after "
                                 f"process {first_failure[0]} failed: killing it")
                        p.kill()
                break
            time.sleep(0.2)
        for p in procs:
            p.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    codes = [_status(p.returncode) for p in procs]
    if any(codes):
        print_fn(f"[launch] exit statuses by process: {codes}")
    return next((c for c in codes if c), 0)


def main(argv: list[str] | None = None) -> int:
    from jet_jax_train.distributed import heartbeat_timeout_s
    ap = argparse.ArgumentParser(prog="python -m jet_jax_train.launch", description=__doc__.split("\n")[0])
    ap.add_argument("--processes", type=int, required=True)
    ap.add_argument("--cpu-devices-per-process", type=int, default=None,
                    help="fake CPU devices per process (testing on one machine)")
    ap.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    ap.add_argument("--grace", type=float, default=None,
                    help="seconds the others get after one process fails (default: heartbeat "
                         "timeout + 30)")
    ap.add_argument("command", nargs=argparse.REMAINDER,
                    help="the jet-jax command and its arguments, after --")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the jet-jax command after --, e.g. -- distill --config configs/distill_tiny.py")
    if args.processes < 1:
        ap.error(f"--processes must be >= 1, got {args.processes}")
    grace = heartbeat_timeout_s() + 30 if args.grace is None else args.grace
    procs = spawn(command, args.processes, cpu_devices_per_process=args.cpu_devices_per_process,
                  port=args.port)
    print(f"[launch] {args.processes} processes: pids {[p.pid for p in procs]}", flush=True)
    return supervise(procs, grace)


if __name__ == "__main__":
    sys.exit(main())
