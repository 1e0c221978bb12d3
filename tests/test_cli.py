"""The command line as a user meets it: the library/application boundary, the help text, and
bad input refused with one line before any work (no traceback, nothing written)."""

import json
import os
import subprocess
import sys

import pytest

from jet_jax.cli import commands, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_PACKAGES = ("train", "configs", "benchmarks", "jet_jax_train", "jet_jax_configs")


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_library_and_help_load_no_application_module():
    code = ("import sys, jet_jax, jet_jax.cli, jet_jax.presets, jet_jax.tokenizer\n"
            "import jet_jax.commands.generate, jet_jax.commands.convert, jet_jax.commands.bench\n"
            "rc = jet_jax.cli.main(['--help'])\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {APP_PACKAGES!r})\n"
            "print('LOADED', bad, rc)")
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert "LOADED [] 0" in r.stdout, r.stdout
    # Every command has a help line (no developer text, nothing cut mid-sentence).
    for name in ("generate", "convert", "bench", "demo", "distill", "plan", "postnas"):
        line = next(x for x in r.stdout.splitlines() if x.strip().startswith(name + " "))
        assert len(line.split(name, 1)[1].strip()) > 10, line


def test_library_sources_never_name_the_application():
    for dirpath, _, files in os.walk(os.path.join(ROOT, "jet_jax")):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                for pkg in ("train", "configs", "benchmarks"):
                    assert f"import {pkg}" not in text and f"from {pkg}." not in text \
                        and f'"{pkg}.' not in text, (f, pkg)


def test_training_commands_are_registered_not_imported():
    table = commands()
    assert {"demo", "distill", "plan", "postnas"} <= set(table)
    assert all(not m.startswith("jet_jax.") for k, m in table.items()
               if k in ("demo", "distill", "plan", "postnas"))


def test_unknown_command(capsys):
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
