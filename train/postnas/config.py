"""PostNAS pipeline settings, on the one config engine (`jet_jax_train.config`).

A config file defines `CONFIG = PostNASConfig(...)` (e.g. configs/postnas_tiny.py);
`--set key=value` overrides a setting and `--set mqar.num_pairs=4` one field of a section.
The task sections are the data layer's own dataclasses (`MQARConfig`, `CopyConfig`), not
copies of their fields. Types are checked by the engine and ranges by `__post_init__`, so
`--set budget=abc` or `--set bugdet=2` is refused with one line before anything runs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

from jet_jax_train.config import (ConfigError, check_dtype_names, check_mesh_shape,
                                  load_config_file)
from jet_jax_train.data.copy_task import CopyConfig
from jet_jax_train.data.mqar import MQARConfig
from jet_jax_train.postnas.sampling import RULES


_COUNTS = ("teacher_steps", "supernet_steps", "block_steps", "hardware_steps", "final_steps",
           "budget", "swa_budget", "eval_lm_batches", "eval_mqar_batches", "eval_copy_batches",
           "decode_steps")
_SIZES = ("jet_heads", "jet_head_dim", "window_size", "seq_len", "batch_size", "beam_width",
          "hardware_max_candidates", "decode_batch", "decode_context")


@dataclasses.dataclass(frozen=True)
class PostNASConfig:
    setting_label: ClassVar[str] = "PostNAS setting"  # how the engine names an unknown key

    output_dir: str = "runs/postnas"
    seed: int = 0
    # teacher: "preset:<name>" / HF directory, or None = pre-train `teacher_preset` from scratch
    teacher: str | None = None
    teacher_preset: str = "tiny-qwen2"
    teacher_layers: int | None = None      # override num_hidden_layers of the preset
    teacher_steps: int = 300
    teacher_lr: float = 3e-3
    # dtype the frozen teacher's parameters are held in, "float32" or "bfloat16" (half the
    # memory; the super-network copies its weights into float32, so the teacher's bf16
    # rounding is all that changes); the teacher computes in float32 either way
    teacher_param_dtype: str = "float32"
    # compute dtype of the teacher and of every model built from it ("float32" or "bfloat16":
    # half the activation memory and the accelerators' fast matmuls); parameters, optimizer
    # state and the losses stay float32
    dtype: str = "float32"
    # attention kernel of the teacher and of every model built from it (jet_jax.ops.attention;
    # "chunked" or "splash" (TPU) make it linear in seq_len; not "cudnn": rows pack documents)
    attention_implementation: str = "auto"
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
    mqar: MQARConfig = MQARConfig(num_pairs=8, num_queries=8)  # keys: lower half of token_range
    mqar_weight: float = 1.0
    shakespeare_weight: float = 1.0
    copy: CopyConfig | None = None     # adds the copy task to training + eval, e.g. {'span': 24}
    copy_weight: float = 1.0
    # (data, fsdp, tensor) device mesh of every training stage (super-network, block and
    # hardware candidates, finals); one -1 takes the remaining devices. The default is one
    # device. Trained models stay on the mesh for scoring; decode timings use one device.
    mesh: tuple[int, int, int] = (1, 1, 1)
    # memory of the training stages: recompute each layer in the backward pass; > 0: KL/CE
    # over this many positions at a time, so [B, T, vocab] float32 logits never exist whole
    remat: bool = False
    logits_chunk: int = 0
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

    def __post_init__(self):
        from jet_jax.layers.zoo import MIXERS
        bad = [b for b in (self.block, *self.blocks) if b not in ("jet", *MIXERS)]
        if bad:
            raise ConfigError(f"unknown linear block {bad[0]!r}; known: {['jet', *MIXERS]}")
        check_dtype_names(self, ("teacher_param_dtype", "dtype"))
        from jet_jax.ops.attention import IMPLEMENTATIONS
        choices = tuple(i for i in IMPLEMENTATIONS if i != "cudnn")
        if self.attention_implementation not in choices:
            raise ConfigError(f"attention_implementation: {self.attention_implementation!r} is not "
                              f"one of {', '.join(choices)} ('cudnn' cannot mask packed documents)")
        check_mesh_shape(self.mesh, "mesh")
        if isinstance(self.logits_chunk, int) and self.logits_chunk < 0:
            raise ConfigError(f"logits_chunk must be >= 0, got {self.logits_chunk}")
        if self.sampling_rule not in RULES:
            raise ConfigError(f"sampling_rule must be one of {RULES}, got {self.sampling_rule!r}")
        for lowest, names in ((0, _COUNTS), (1, _SIZES)):
            for k in names:  # (a wrong type is reported by the engine, naming the key)
                if isinstance(getattr(self, k), (int, float)) and getattr(self, k) < lowest:
                    raise ConfigError(f"{k} must be >= {lowest}, got {getattr(self, k)}")
        for k in ("teacher_lr", "supernet_lr", "final_lr"):
            if isinstance(getattr(self, k), (int, float)) and not getattr(self, k) > 0:
                raise ConfigError(f"{k} must be positive, got {getattr(self, k)}")

    def replace(self, **kw) -> "PostNASConfig":
        return dataclasses.replace(self, **kw)


def load_config(path: str | os.PathLike | None) -> PostNASConfig:
    """The settings of config file `path` (None: the defaults), type-checked."""
    return PostNASConfig() if path is None else load_config_file(path, PostNASConfig)
