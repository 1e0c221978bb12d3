"""PostNAS on the tiny byte-level teacher: the `jet-jax demo` default (budgeted for under 15
minutes on 2 idle CPU cores). `jet-jax postnas pipeline --config configs/postnas_tiny.py
[--set key=value ...]`

Budget: the three final placements are each distilled with 3 seeds (mean ± SE, paired
verdicts), so each run is shorter (100 steps) than the single-seed 150 it replaced; block
selection, which does not decide anything downstream, trains 30 steps per block.

MQAR is 4 pairs over 16 keys / 16 values (chance 1/16): the 6-layer, hidden-64 teacher reaches
about 0.55-0.6 on it in 1200 steps. It does not learn harder MQAR (8+ pairs, larger vocabularies)
in a CPU-sized budget; see docs/postnas.md.
"""

from jet_jax_train.data.mqar import MQARConfig
from jet_jax_train.postnas.config import PostNASConfig

CONFIG = PostNASConfig(
    output_dir="runs/postnas_tiny",
    teacher=None,                 # pre-train a tiny Qwen2-style teacher from scratch
    teacher_preset="tiny-qwen2",  # hidden 64, byte vocabulary ...
    teacher_layers=6,             # ... with 6 layers, so a budget of 1 leaves a real search
    teacher_steps=1200,
    block="jet", jet_heads=2, jet_head_dim=16, jet_expand_v=2.0,
    seq_len=128, batch_size=8,
    mqar=MQARConfig(num_pairs=4, num_queries=4, token_range=(0, 32)), mqar_weight=2.0,
    eval_mqar_batches=16,         # 512 answers: standard error of an accuracy ~0.02
    supernet_steps=300, budget=1, beam_width=3,
    run_blocks=True, block_steps=30,
    run_hardware=True, hardware_steps=40, hardware_max_candidates=3,
    timing_max_rounds=4, timing_precision=0.05,
    final_steps=100, final_seeds=3,
)
