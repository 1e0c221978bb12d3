"""The pipeline's teacher: load one (`preset:<name>` or an HF directory, via
`jet_jax_train.distill.load_teacher`), or pre-train a tiny full-attention model from scratch
(`jet_jax_train.pretrain.train_teacher`: cross-entropy on the same Shakespeare + MQAR mixture, saved
as an HF directory) and load it back with `from_hf`."""

from __future__ import annotations

import os

from jet_jax.model import JetNemotronForCausalLM


def load_teacher(spec: str, *, seed: int = 0, **model_options) -> JetNemotronForCausalLM:
    """model_options: `JetNemotronForCausalLM` arguments (e.g. `attention_implementation`) and
    `param_dtype` (the dtype the teacher is held in)."""
    from jet_jax_train.distill import load_teacher as _load
    return _load(spec, seed=seed, **model_options)


def pretrain_teacher(config, data_config, *, steps: int, lr: float, out_dir: str | os.PathLike,
                     seed: int = 0, warmup_steps: int = 20, log=print,
                     progress: str = "tqdm", **model_options) -> JetNemotronForCausalLM:
    """Train `config` (all attention) from scratch in float32, save it to `out_dir` (HF),
    return it (built with `model_options`, e.g. `param_dtype=jnp.bfloat16` to hold it rounded)."""
    from jet_jax.convert.hf import from_hf
    from jet_jax_train.pretrain import train_teacher
    if not all(t == "attn" for t in config.layer_types):
        raise ValueError(f"a teacher must be all full attention, got {config.layer_types}")
    train_teacher(config, data_config, steps=steps, lr=lr, warmup_steps=warmup_steps, seed=seed,
                  out_dir=os.fspath(out_dir), progress=progress, print_fn=log)
    return from_hf(out_dir, **model_options)
