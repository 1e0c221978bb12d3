"""PostNAS on the tiny byte-level teacher (2 CPU cores, about 20 minutes end to end).

`jet-jax postnas pipeline --config configs/postnas_tiny.py [--set key=value ...]`
"""

from train.postnas.config import PostNASConfig

CONFIG = PostNASConfig(
    output_dir="runs/postnas_tiny",
    teacher=None,                 # pre-train a tiny Qwen2-style teacher from scratch
    teacher_preset="tiny-qwen2",  # hidden 64, byte vocabulary ...
    teacher_layers=6,             # ... with 6 layers, so a budget of 2 leaves a real search
    teacher_steps=500,
    block="jet", jet_heads=2, jet_head_dim=16, jet_expand_v=2.0,
    seq_len=128, batch_size=8, mqar_pairs=8, mqar_queries=8,
    supernet_steps=300, budget=2, beam_width=3,
    run_blocks=True, block_steps=40,
    run_hardware=True, hardware_steps=40, hardware_max_candidates=3,
    final_steps=200,
)
