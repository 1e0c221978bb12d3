"""`jet-jax` console command: one sub-command per module, each exposing `register(parser)` and
`run(args) -> int`. Modules are imported only when their command runs (keeps start-up fast)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": ("train.demo", "tiny teacher -> Jet-Nemotron student on the embedded default data"),
    "distill": ("train.distill_cli", "distil a Jet-Nemotron student from a teacher (config file)"),
    "plan": ("train.plan", "per-device memory plan for a model config on a mesh"),
    "generate": ("jet_jax.commands.generate", "generate text from an HF directory or Orbax checkpoint"),
    "bench": ("jet_jax.commands.bench", "prefill/decode throughput of a student vs its teacher"),
    "convert": ("jet_jax.commands.convert", "convert between HF directories and Orbax checkpoints"),
    "eval": ("jet_jax.commands.eval", "perplexity, multiple choice, MQAR/passkey of one or two models"),
    "postnas": ("train.postnas.cli", "PostNAS: super-network, placement search, block/hardware search"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="jet-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help()
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    cmd_parser = argparse.ArgumentParser(prog=f"jet-jax {argv[0]}", description=COMMANDS[argv[0]][1])
    module.register(cmd_parser)
    return int(module.run(cmd_parser.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
