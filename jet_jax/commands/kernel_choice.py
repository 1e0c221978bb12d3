"""The `--attention/gdr/conv-implementation` choices of the inference commands (`jet-jax
bench`, `generate`, `eval`): the kernels of jet_jax.ops, spelled out so `--help` does not
import jax (tests/test_cli.py checks them against the ops). Attention offers what runs over a
cache and packed or padded rows; "cudnn" and "splash" only do plain self-attention."""

from __future__ import annotations

import argparse

ATTENTION = ("auto", "xla", "chunked")
GDR = ("auto", "recurrent", "chunked", "pallas")
CONV = ("auto", "reference", "pallas")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attention-implementation", default="auto", choices=ATTENTION,
                        help="attention kernel (jet_jax.ops.attention); auto: only what has run "
                             "on this backend (dense xla on GPU/TPU today; chunked keeps memory "
                             "linear in the context)")
    parser.add_argument("--gdr-implementation", default="auto", choices=GDR,
                        help="gated delta rule kernel (jet_jax.ops.gated_delta_rule)")
    parser.add_argument("--conv-implementation", default="auto", choices=CONV,
                        help="dynamic convolution kernel (jet_jax.ops.dynamic_conv)")


def model_kwargs(args: argparse.Namespace) -> dict:
    """The `JetNemotronForCausalLM` / `load_model` arguments the flags choose."""
    return {"attention_implementation": args.attention_implementation,
            "gdr_implementation": args.gdr_implementation,
            "conv_implementation": args.conv_implementation}


def describe(args: argparse.Namespace) -> str:
    return (f"kernels: attention {args.attention_implementation}, gated delta rule "
            f"{args.gdr_implementation}, dynamic conv {args.conv_implementation}")
