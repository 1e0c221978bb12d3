"""`jet-jax convert --from SRC --to DST`: HF directory <-> jet-jax Orbax checkpoint.

The source format is detected (HF: config.json + *.safetensors; Orbax: jet_jax.json +
params/). The destination format is the other one unless `--format` says otherwise.
Parameters keep their stored dtype (so HF -> Orbax -> HF is bitwise) unless `--dtype` is
given. Tokenizer files are copied through. An existing non-empty destination is refused
without `--overwrite`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16", "float16")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="src", required=True,
                        help="source: HF directory or jet-jax Orbax checkpoint directory")
    parser.add_argument("--to", dest="dst", required=True, help="destination directory")
    parser.add_argument("--format", choices=("auto", "hf", "orbax"), default="auto",
                        help="destination format (default: the other format than the source)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="parameter dtype to write (default: keep the stored dtype)")
    parser.add_argument("--max-shard-bytes", type=int, default=2 * 1024 ** 3,
                        help="HF output: maximum safetensors shard size")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty destination")


def convert(src, dst, *, fmt: str = "auto", dtype: str = "auto", overwrite: bool = False,
            max_shard_bytes: int = 2 * 1024 ** 3) -> tuple[str, str]:
    """Convert `src` to `dst`; returns (source format, destination format)."""
    import jax.numpy as jnp

    from jet_jax.checkpoint_io import detect_format, load_model, save_orbax

    src, dst = Path(src), Path(dst)
    src_fmt = detect_format(src)
    dst_fmt = {"hf": "orbax", "orbax": "hf"}[src_fmt] if fmt == "auto" else fmt
    if dst.exists() and src.resolve() == dst.resolve():
        raise ValueError(f"source and destination are the same directory: {src}")
    # Fail before loading anything large.
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise FileExistsError(f"{dst} exists and is not empty; pass --overwrite to replace it")
    param_dtype = None if dtype == "auto" else jnp.dtype(dtype)
    model = load_model(src, param_dtype=param_dtype)
    if dst_fmt == "orbax":
        save_orbax(model, dst, overwrite=overwrite, tokenizer_from=src)
    else:
        from jet_jax.convert.hf import to_hf
        import jax
        from flax import nnx
        out_dtype = jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype
        to_hf(model, dst, dtype=out_dtype, max_shard_bytes=max_shard_bytes, tokenizer_from=src,
              overwrite=overwrite)
    return src_fmt, dst_fmt


def run(args: argparse.Namespace) -> int:
    try:
        src_fmt, dst_fmt = convert(args.src, args.dst, fmt=args.format, dtype=args.dtype,
                                   overwrite=args.overwrite, max_shard_bytes=args.max_shard_bytes)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"jet-jax convert: error: {e}", file=sys.stderr)
        return 1
    print(f"converted {args.src} ({src_fmt}) -> {args.dst} ({dst_fmt})")
    return 0
