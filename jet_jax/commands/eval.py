"""`jet-jax eval`: score HF directories or Orbax checkpoints on local files and synthetic
retrieval, teacher and student side by side.

    jet-jax eval --model runs/student/hf --teacher path/to/teacher \\
        --text wiki.parquet --mc piqa.jsonl --mqar --passkey --context-len 2048 --json out.json

Tasks: --text (perplexity / bits-per-byte of .txt / .jsonl / .parquet texts, sliding window of
--context-len tokens with --stride), --mc (multiple choice JSONL {"context","choices","label"}:
acc, acc_norm), --mqar and --passkey (retrieval at --context-len). Prints a table, writes
--json, shows a progress bar per task on stderr (--no-progress to hide it).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from jet_jax.commands import dtype_choice, kernel_choice


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF model directory or jet-jax Orbax checkpoint")
    parser.add_argument("--teacher", help="a second model scored on the same tasks (shown beside)")
    parser.add_argument("--text", action="append", default=[], metavar="FILE",
                        help="perplexity on a .txt, .jsonl or .parquet file (repeatable)")
    parser.add_argument("--text-key", default="text", help="JSONL field / parquet column of the texts")
    parser.add_argument("--mc", action="append", default=[], metavar="FILE",
                        help='multiple-choice JSONL {"context", "choices", "label"} (repeatable)')
    parser.add_argument("--mqar", action="store_true", help="MQAR recall at --context-len")
    parser.add_argument("--mqar-pairs", type=int, default=16)
    parser.add_argument("--passkey", action="store_true", help="passkey retrieval at --context-len")
    parser.add_argument("--num-examples", type=int, default=16, help="synthetic examples per task")
    parser.add_argument("--context-len", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: context)")
    parser.add_argument("--limit", type=int, default=None, help="first N documents / examples per file")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokenizer", help="directory with tokenizer.json (default: --model's, "
                        "else --teacher's, else byte level)")
    parser.add_argument("--bos", action="store_true",
                        help="prepend the model's bos_token_id to every text/context")
    parser.add_argument("--dtype", choices=dtype_choice.CHOICES, default="auto",
                        help=dtype_choice.HELP)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic tasks")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--no-progress", action="store_true")
    kernel_choice.add_arguments(parser)


def _load_tokenizer(args):
    """The one place this command picks a tokenizer (the library's generate command's
    loader: tokenizer.json when the directory has one, else byte level)."""
    from jet_jax.tokenizer import tokenizer_for_model as load_tokenizer
    for d in (args.tokenizer, args.model, args.teacher):
        if d is not None and (Path(d) / "tokenizer.json").is_file():
            return load_tokenizer(d)
    return load_tokenizer(None)


def _check_args(args) -> None:
    """Every input is checked before any model is loaded."""
    from jet_jax.evaluation import read_mc_jsonl, read_texts
    from jet_jax.checkpoint_io import detect_format
    for p in filter(None, (args.model, args.teacher)):
        detect_format(p)
    if not (args.text or args.mc or args.mqar or args.passkey):
        raise ValueError("no task given: use --text, --mc, --mqar and/or --passkey")
    if args.context_len < 8:
        raise ValueError(f"--context-len {args.context_len} is too small")
    for f in args.text:
        read_texts(f, text_key=args.text_key)
    for f in args.mc:
        read_mc_jsonl(f)


def evaluate_model(model, tokenizer, args) -> dict[str, dict[str, float]]:
    """All requested tasks on one model: {task: {metric: value}}."""
    from jet_jax.evaluation import (multiple_choice, mqar_examples, passkey_examples, perplexity,
                                    read_mc_jsonl, read_texts, retrieval_accuracy)
    from jet_jax.token_ids import check_token_ids

    cfg = model.config
    bos = None
    if args.bos:
        bos = cfg.bos_token_id[0] if isinstance(cfg.bos_token_id, tuple) else cfg.bos_token_id
        if bos is None:
            raise ValueError("--bos given but the model config has no bos_token_id")
    bar = lambda name: None if args.no_progress else name
    out: dict[str, dict[str, float]] = {}
    for f in args.text:
        texts = read_texts(f, text_key=args.text_key)[:args.limit]
        docs = [tokenizer.encode(t) for t in texts]
        for i, d in enumerate(docs):
            check_token_ids(d, cfg.vocab_size, what=f"{f} document {i}")
        out[f"ppl:{Path(f).name}"] = perplexity(
            model, docs, context_len=args.context_len, stride=args.stride, bos_id=bos,
            num_bytes=sum(len(t.encode("utf-8")) for t in texts), batch_size=args.batch_size,
            progress=bar(f"ppl {Path(f).name}"))
    for f in args.mc:
        examples = read_mc_jsonl(f)[:args.limit]
        out[f"mc:{Path(f).name}"] = multiple_choice(
            model, examples, tokenizer.encode, bos_id=bos, max_length=args.context_len,
            batch_size=args.batch_size, progress=bar(f"mc {Path(f).name}"))
    if args.mqar:
        reqs = mqar_examples(cfg.vocab_size, context_len=args.context_len, num_pairs=args.mqar_pairs,
                             num_examples=args.num_examples, seed=args.seed)
        out[f"mqar@{args.context_len}"] = retrieval_accuracy(
            model, reqs, per="token", batch_size=args.batch_size, progress=bar("mqar"))
    if args.passkey:
        reqs = passkey_examples(tokenizer.encode, context_len=args.context_len,
                                num_examples=args.num_examples, seed=args.seed, bos_id=bos)
        out[f"passkey@{args.context_len}"] = retrieval_accuracy(
            model, reqs, per="request", batch_size=args.batch_size, progress=bar("passkey"))
    return out


def run(args: argparse.Namespace) -> int:
    from jet_jax.checkpoint_io import load_model
    from jet_jax.evaluation import format_table, write_json

    try:
        _check_args(args)
        tokenizer = _load_tokenizer(args)
        results = {}
        dtype = dtype_choice.param_dtype(args.dtype)
        for name, path in (("model", args.model), ("teacher", args.teacher)):
            if path is None:
                continue
            model = load_model(path, param_dtype=dtype, **kernel_choice.model_kwargs(args))
            results[name] = evaluate_model(model, tokenizer, args)
            del model
    except (ValueError, FileNotFoundError) as e:  # bad input: one line, no traceback
        print(f"jet-jax eval: error: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    bad = [f"{m}/{t}/{k}" for m, r in results.items() for t, ms in r.items() for k, v in ms.items()
           if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        print(f"warning: non-finite results: {bad}", file=sys.stderr)
    if args.json:
        write_json(args.json, results, meta={"model": args.model, "teacher": args.teacher,
                                             "context_len": args.context_len})
        print(f"wrote {args.json}")
    return 0
