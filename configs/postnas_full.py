"""The longer PostNAS run (`jet-jax demo --full`): the tiny recipe on an 8-layer teacher with
5-8x the training at every stage, same budget of 1 attention layer. Roughly 8x the default's
compute; not timed on this project's CPU."""

import dataclasses

from jet_jax_configs.postnas_tiny import CONFIG as TINY

CONFIG = dataclasses.replace(
    TINY, output_dir="runs/postnas_full",
    teacher_layers=8, teacher_steps=6000,
    supernet_steps=2000, budget=1, beam_width=4,
    eval_lm_batches=8, eval_mqar_batches=16,
    block_steps=300, hardware_steps=300, hardware_max_candidates=6,
    final_steps=1000, final_seeds=5,
)
