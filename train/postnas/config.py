"""PostNAS pipeline settings: one flat frozen dataclass, loaded from a Python config file
(`CONFIG = PostNASConfig(...)`, e.g. configs/postnas_tiny.py) and overridden with
`--set key=value` (value parsed as a Python literal, else kept as a string)."""

from __future__ import annotations

import ast
import dataclasses
import os
import runpy
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class PostNASConfig:
    output_dir: str = "runs/postnas"
    seed: int = 0
    # teacher: "preset:<name>" / HF directory, or None = pre-train `teacher_preset` from scratch
    teacher: str | None = None
    teacher_preset: str = "tiny-qwen2"
    teacher_layers: int | None = None      # override num_hidden_layers of the preset
    teacher_steps: int = 300
    teacher_lr: float = 3e-3
    # linear block (JetBlock shape) and SWA
    block: str = "jet"
    jet_heads: int = 2
    jet_head_dim: int = 16
    jet_expand_v: float = 2.0
    enable_swa: bool = False
    window_size: int = 32
    # data (Shakespeare + MQAR (+ copy) mixture, byte tokenizer)
    seq_len: int = 128
    batch_size: int = 8
    mqar_pairs: int = 8
    mqar_queries: int = 8
    mqar_weight: float = 1.0
    mqar_token_range: tuple[int, int] = (0, 256)   # keys: lower half, values: upper half
    shakespeare_weight: float = 1.0
    copy_span: int = 0                # > 0: add the copy task (span tokens) to training + eval
    copy_token_range: tuple[int, int] = (0, 64)
    copy_weight: float = 1.0
    # super-network training
    supernet_steps: int = 200
    supernet_lr: float = 3e-3
    budget: int = 1                   # k full-attention layers (sampling and search)
    swa_budget: int = 0
    sampling_rule: str = "uniform"
    train_attention: bool = False
    # search
    beam_width: int = 3
    eval_lm_batches: int = 4
    eval_mqar_batches: int = 4
    eval_copy_batches: int = 4
    mc_path: str | None = None
    # block selection / hardware search (short runs of the identical recipe)
    run_blocks: bool = True
    blocks: tuple[str, ...] = ("jet", "gdn", "deltanet", "gla", "mamba2", "retnet")
    block_steps: int = 60
    run_hardware: bool = True
    hardware_steps: int = 60
    hardware_max_candidates: int = 3
    cache_tolerance: float = 0.05
    throughput_slack: float = 0.05
    timing_precision: float = 0.05    # repeat decode timings until the speed-ratio CI is this narrow...
    timing_max_rounds: int = 4        # ... or this many rounds
    verdict_k: float = 2.0            # a difference is a win/loss beyond verdict_k standard errors
    # final distillation of the chosen architecture (and of the uniform baseline)
    final_steps: int = 200
    final_lr: float = 3e-3
    final_train_attention: bool = True
    final_seeds: int = 3              # each final placement distilled with this many seeds
    # decode throughput measurement
    decode_batch: int = 1
    decode_context: int = 256
    decode_steps: int = 32

    def replace(self, **kw) -> "PostNASConfig":
        return dataclasses.replace(self, **kw)


def load_config(path: str | os.PathLike | None) -> PostNASConfig:
    if path is None:
        return PostNASConfig()
    ns = runpy.run_path(os.fspath(path))
    cfg = ns.get("CONFIG")
    if not isinstance(cfg, PostNASConfig):
        raise ValueError(f"{path} must define CONFIG = PostNASConfig(...)")
    return cfg


def apply_overrides(cfg: PostNASConfig, overrides: Sequence[str]) -> PostNASConfig:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        if key not in fields:
            raise ValueError(f"unknown PostNAS setting {key!r}; valid: {sorted(fields)}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if isinstance(value, list):
            value = tuple(value)
        current = getattr(cfg, key)
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ValueError(f"{key} must be True or False, got {text!r}")
        if isinstance(current, float) and isinstance(value, int):
            value = float(value)
        changes[key] = value
    return dataclasses.replace(cfg, **changes)
