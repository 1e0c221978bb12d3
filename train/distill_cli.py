"""`jet-jax distill`: distil a Jet-Nemotron student from a teacher, as a config file describes.

    jet-jax distill --config configs/distill_tiny.py --set train.steps=20 --set data.seq_len=128

Every setting (file and `--set`) is checked before anything is loaded or written; the run
writes only under the config's `train.output_dir`. A finished run writes the student there
(`hf/` by default, see `train.export`) for `jet-jax generate` and `jet-jax eval`.
"""

from __future__ import annotations

import argparse
import json
import sys

from jet_jax_train.config import ConfigError, apply_overrides, load_config_file, to_dict


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="Python config file exposing get_config()")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, e.g. --set optimizer.lr=3e-4 (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the final config and exit")


def run(args: argparse.Namespace) -> int:
    from jet_jax_train.distill import check_teacher, run_distill

    try:
        cfg = apply_overrides(load_config_file(args.config), args.overrides)
        if not args.print_config:
            check_teacher(cfg.model.teacher)
    except ConfigError as e:
        print(f"jet-jax distill: error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2, default=str))
        return 0
    try:
        # run_distill checks the kernels against the backend first thing after starting
        # jax.distributed (which must come before anything that touches the backend)
        summary = run_distill(cfg)
    except ConfigError as e:
        print(f"jet-jax distill: error: {e}", file=sys.stderr)
        return 2
    keep = {k: summary.get(k) for k in ("start_step", "end_step", "init_eval", "final_eval",
                                         "tokens_per_s", "train_wall_s", "interrupted", "exported")}
    print(json.dumps(keep, indent=2, default=str))
    return 0
