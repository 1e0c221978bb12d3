"""Distillation from a 7B-32B teacher on a pod (see docs/scaling.md for the memory plans).

    JET_JAX_TEACHER=qwen2.5-7b jet-jax distill --config configs/distill_big_teacher.py \
        --set model.teacher=/path/to/Qwen2.5-7B --set 'mesh.shape=(32, 2, 1)' \
        --set data.num_shards=<number of hosts> --set data.sources=...

JET_JAX_TEACHER picks the student shape of configs/teachers.py (qwen2.5-7b, qwen3-8b,
qwen2.5-14b, qwen2.5-32b); `model.teacher` must point at that teacher's HF directory. The mesh
and batch are placeholders: take the mesh `jet-jax plan --model jet-<teacher> --teacher
<teacher> --remat --chip <chip> --chips <n>` recommends for your slice, then check the whole
run with `jet-jax plan --config configs/distill_big_teacher.py --set model.teacher=... --set
'mesh.shape=...' --chip <chip>` (it plans this file's batch, dtypes, remat and loss chunking). Qwen3-8B needs the
qwen3 model family (q/k norm) to load its weights.

The frozen teacher is held in bf16 (`model.teacher_param_dtype`; the plan's `--teacher-dtype
bf16`): half the memory of float32, and an HF Qwen checkpoint is stored in bf16 anyway.
Layers run as scans over same-type runs (`model.scan_layers`: the step compiles each run's
layer once) and KL is computed 512 positions at a time (`loss.logits_chunk`: no whole
[B, 4096, 152k] f32 logits). Attention stays `auto` (dense on TPU and GPU until a kernel has
run there); on a TPU, `--set model.attention_implementation=splash` makes it linear in the
sequence (docs/long_context.md).
"""

import os

from jet_jax_configs.teachers import STUDENT_OF, STUDENTS
from jet_jax_train.config import (CheckpointSection, EvalSection, LoggingSection, LossSection,
                          MeshSection, ModelSection, OptimizerSection, TrainConfig, TrainSection)
from jet_jax_train.data.pipeline import DataConfig


def get_config() -> TrainConfig:
    name = os.environ.get("JET_JAX_TEACHER", "qwen2.5-7b")
    if name not in STUDENT_OF:
        raise ValueError(f"JET_JAX_TEACHER={name!r}; choose one of {sorted(STUDENT_OF)}")
    student = STUDENTS[STUDENT_OF[name]]
    attn = tuple(i for i, t in enumerate(student.layer_types) if t == "attn")
    swa = tuple(i for i, t in enumerate(student.layer_types) if t == "swa")
    return TrainConfig(
        model=ModelSection(teacher=f"/path/to/{name}", attn_layers=attn, swa_layers=swa,
                           window_size=student.window_size, jet=student.jet,
                           dtype="bfloat16", teacher_param_dtype="bfloat16", remat=True,
                           scan_layers=True),
        data=DataConfig(seq_len=4096, batch_size=256, num_shards=8, shuffle_window=1024),
        optimizer=OptimizerSection(lr=1e-4, warmup_steps=200),
        loss=LossSection(temperature=1.0, kl_weight=1.0, logits_chunk=512),
        mesh=MeshSection(shape=(-1, 8, 1)),
        checkpoint=CheckpointSection(save_interval_steps=200, max_to_keep=3),
        eval=EvalSection(interval=500, num_batches=4, mqar_batches=0),
        logging=LoggingSection(interval=10, tensorboard=True, progress="none"),
        train=TrainSection(steps=10000, output_dir=f"runs/distill_{name}"),
    )
