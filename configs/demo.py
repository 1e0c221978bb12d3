"""The embedded default demo (`jet-jax demo`): byte-level Shakespeare + MQAR, a tiny Qwen2
teacher trained from scratch, distilled into a jet/attn/swa/jet Jet-Nemotron student.

`get_config()` is the distillation stage; `TEACHER` the from-scratch teacher stage. The
teacher directory is filled in by train/demo.py (`<output_dir>/teacher`).
"""

import dataclasses

from jet_jax_configs.presets import TINY_QWEN2
from jet_jax.config import JetBlockConfig, ModelConfig
from jet_jax_train.config import (CheckpointSection, EvalSection, LoggingSection, LossSection,
                          ModelSection, OptimizerSection, TrainConfig, TrainSection)
from jet_jax_train.data.mqar import MQARConfig
from jet_jax_train.data.pipeline import DataConfig
from jet_jax_train.data.sources import SourceConfig


@dataclasses.dataclass(frozen=True)
class TeacherStage:
    model: ModelConfig = TINY_QWEN2  # Qwen2 architecture: 4 layers, hidden 64, byte vocabulary (512)
    steps: int = 300
    lr: float = 3e-3
    warmup_steps: int = 20
    seed: int = 0


TEACHER = TeacherStage()

DATA = DataConfig(
    sources=(SourceConfig(kind="shakespeare", weight=3.0),
             SourceConfig(kind="mqar", weight=1.0, mqar=MQARConfig(num_pairs=8, num_queries=8))),
    seq_len=128, batch_size=8, shuffle_window=32)


def get_config() -> TrainConfig:
    return TrainConfig(
        model=ModelSection(
            teacher="runs/demo/teacher", attn_layers=(1,), swa_layers=(2,), window_size=32,
            # Same heads / head dim as the teacher's attention, dv = dk: the JetBlocks start
            # from the teacher's q/k/v/o projections (see train/student.py).
            jet=JetBlockConfig(num_heads=4, head_dim=16, expand_v=1.0, conv_size=4,
                               dconv_generator_reduction=8)),
        data=DATA,
        optimizer=OptimizerSection(lr=3e-3, warmup_steps=10),
        loss=LossSection(temperature=1.0, kl_weight=1.0, ce_weight=0.0),
        checkpoint=CheckpointSection(save_interval_steps=50, max_to_keep=2),
        eval=EvalSection(interval=50, num_batches=4, mqar_batches=2),
        logging=LoggingSection(interval=10, progress="tqdm"),
        train=TrainSection(steps=200, output_dir="runs/demo/student"),
    )
