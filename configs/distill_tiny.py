"""Tiny distillation run (random preset teacher; for tests and smoke runs).

    jet-jax distill --config configs/distill_tiny.py --set train.steps=20
"""

from jet_jax.config import JetBlockConfig
from jet_jax_train.config import (CheckpointSection, EvalSection, LoggingSection, LossSection,
                          ModelSection, OptimizerSection, TrainConfig, TrainSection)
from jet_jax_train.data.mqar import MQARConfig
from jet_jax_train.data.pipeline import DataConfig
from jet_jax_train.data.sources import SourceConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        model=ModelSection(
            teacher="preset:tiny-qwen2", attn_layers=(1,), swa_layers=(2,), window_size=32,
            jet=JetBlockConfig(num_heads=4, head_dim=16, expand_v=1.0, conv_size=4,
                               dconv_generator_reduction=8)),
        data=DataConfig(
            sources=(SourceConfig(kind="shakespeare", weight=3.0),
                     SourceConfig(kind="mqar", weight=1.0,
                                  mqar=MQARConfig(num_pairs=8, num_queries=8))),
            seq_len=64, batch_size=8, shuffle_window=16),
        optimizer=OptimizerSection(lr=3e-3, warmup_steps=5),
        loss=LossSection(temperature=1.0, kl_weight=1.0, ce_weight=0.0),
        checkpoint=CheckpointSection(save_interval_steps=5, max_to_keep=2),
        eval=EvalSection(interval=10, num_batches=2, mqar_batches=1),
        logging=LoggingSection(interval=1, tensorboard=True, progress="tqdm"),
        train=TrainSection(steps=20, output_dir="runs/distill_tiny"),
    )
