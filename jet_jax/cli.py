"""Run, convert and benchmark Jet-Nemotron models; distil and search them with the training
commands registered by an installed training application (this repository's `train/`).

The library's own commands are listed in LIBRARY_COMMANDS. Other packages add commands
through the `jet_jax.commands` entry-point group (`name = package.module`, a module with
`register(parser)` and `run(args) -> int`); this repository's `train/` registers `demo`,
`distill`, `plan` and `postnas` in setup.cfg. The library never imports those modules itself:
a command's module is imported only when that command runs, and the help line shown for it
is the first sentence of its module docstring, read from the source file.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

ENTRY_POINT_GROUP = "jet_jax.commands"
LIBRARY_COMMANDS = {
    "generate": "jet_jax.commands.generate",
    "convert": "jet_jax.commands.convert",
    "bench": "jet_jax.commands.bench",
    "eval": "jet_jax.commands.eval",
}
EPILOG = ("Run `jet-jax COMMAND --help` for a command's options. Commands that write files take "
          "an output directory (--output-dir, --to or a config's output_dir) and write nothing "
          "else.")


def _setup_cfg_commands() -> dict[str, str]:
    """The entry points declared in the source checkout's setup.cfg (used when jet-jax runs
    from a checkout that was not pip-installed, or was installed before they were declared)."""
    cfg = Path(__file__).resolve().parent.parent / "setup.cfg"
    if not cfg.is_file():
        return {}
    parser = configparser.ConfigParser()
    parser.read(cfg)
    text = parser.get("options.entry_points", ENTRY_POINT_GROUP, fallback="")
    pairs = (line.split("=", 1) for line in text.strip().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def commands() -> dict[str, str]:
    """name -> module of every command: the library's, then the registered ones."""
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return {**LIBRARY_COMMANDS, **(found or _setup_cfg_commands())}


def _module_file(module: str) -> Path | None:
    """The source file of `module`, located without importing it or its packages."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest.split(".")) if rest else None
    if base is None:
        return Path(spec.origin) if spec.origin else None
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def summary(module: str) -> str:
    """First sentence of the module's docstring, without a leading "`jet-jax x`: " label."""
    path = _module_file(module)
    if path is None:
        return "(not installed)"
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    if first.startswith("`jet-jax") and "`: " in first:
        first = first.split("`: ", 1)[1]
    return first.split(". ")[0].rstrip(".")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    table = commands()
    parser = argparse.ArgumentParser(prog="jet-jax", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in table:
        for name, module in table.items():
            sub.add_parser(name, help=summary(module), add_help=False)
        parser.print_help()
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\njet-jax: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(table[argv[0]])
    cmd_parser = argparse.ArgumentParser(prog=f"jet-jax {argv[0]}", description=module.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    module.register(cmd_parser)
    return int(module.run(cmd_parser.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    sys.exit(main())
