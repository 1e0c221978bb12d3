"""`jet-jax generate --model DIR --prompt TEXT`: stream generated text to stdout.

DIR is an HF model directory or a jet-jax Orbax checkpoint (or use `--preset NAME` for a
randomly initialised model). The tokenizer is the directory's `tokenizer.json` (HF
`tokenizers`) when present, else byte level (ids 0..255 are the UTF-8 bytes).
"""

from __future__ import annotations

import argparse
import sys

from jet_jax.commands import dtype_choice, kernel_choice
from jet_jax.tokenizer import ByteTokenizer, tokenizer_for_model


class StreamDecoder:
    """Incremental detokenisation: emits only text that is complete (no dangling partial
    UTF-8 sequence / merge)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.emitted = tokenizer, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        new, self.emitted = text[len(self.emitted):], text
        return new

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        new = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text
        return new


def register(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF model directory or jet-jax Orbax checkpoint")
    src.add_argument("--preset", help="random-weight model from jet_jax.presets (e.g. tiny-jet)")
    parser.add_argument("--prompt", action="append", required=True,
                        help="prompt text; repeat for a batch (printed when all are done)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (and --preset weights)")
    parser.add_argument("--dtype", choices=dtype_choice.CHOICES, default="auto",
                        help=dtype_choice.HELP + "; float32 for --preset")
    parser.add_argument("--prefill-chunk", type=int, default=None,
                        help="prefill the prompt in chunks of this many tokens")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at the EOS token")
    kernel_choice.add_arguments(parser)


def _load(args):
    import jax.numpy as jnp
    from flax import nnx

    if args.preset:
        from jet_jax.presets import get_preset
        from jet_jax.model import JetNemotronForCausalLM
        dt = jnp.float32 if args.dtype == "auto" else jnp.dtype(args.dtype)
        return JetNemotronForCausalLM(get_preset(args.preset), rngs=nnx.Rngs(args.seed), dtype=dt,
                                      param_dtype=dt, **kernel_choice.model_kwargs(args))
    from jet_jax.checkpoint_io import load_model
    return load_model(args.model, param_dtype=dtype_choice.param_dtype(args.dtype),
                      **kernel_choice.model_kwargs(args))


def run(args: argparse.Namespace) -> int:
    from jet_jax.generation import generate, generate_stream
    from jet_jax.sampling import SamplingConfig
    from jet_jax.token_ids import TokenIdError, check_prompts

    try:
        sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        model = _load(args)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"jet-jax generate: error: {e}", file=sys.stderr)
        return 1
    cfg = model.config
    tokenizer = tokenizer_for_model(args.model, cfg.vocab_size)
    if cfg.vocab_size < 256 and isinstance(tokenizer, ByteTokenizer):
        print(f"jet-jax generate: error: byte-level tokenizer needs vocab_size >= 256, model has "
              f"{cfg.vocab_size}", file=sys.stderr)
        return 1
    eos = cfg.eos_token_id
    stop = () if args.ignore_eos or eos is None else tuple(eos if isinstance(eos, (list, tuple)) else [eos])
    prompts = [tokenizer.encode(p) for p in args.prompt]
    if any(len(p) == 0 for p in prompts):
        print("jet-jax generate: error: empty prompt", file=sys.stderr)
        return 1
    try:  # a tokenizer that does not match the model: one line, before any output
        check_prompts(prompts, cfg.vocab_size)
    except TokenIdError as e:
        print(f"jet-jax generate: error: {e}", file=sys.stderr)
        return 1
    kw = dict(max_new_tokens=args.max_new_tokens, sampling=sampling, stop_tokens=stop,
              seed=args.seed, prefill_chunk_size=args.prefill_chunk)
    if len(prompts) == 1:
        dec = StreamDecoder(tokenizer)
        sys.stdout.write(args.prompt[0])
        sys.stdout.flush()
        for step in generate_stream(model, prompts, **kw):
            tok = step[0]
            if tok is None or tok in stop:
                continue
            sys.stdout.write(dec.push(tok))
            sys.stdout.flush()
        sys.stdout.write(dec.flush() + "\n")
        return 0
    for text, out in zip(args.prompt, generate(model, prompts, **kw)):
        print(text + tokenizer.decode([t for t in out if t not in stop]))
        print("-" * 40)
    return 0
