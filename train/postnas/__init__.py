"""PostNAS (Jet-Nemotron paper, section 3; docs/postnas.md) on the jet-jax training stack.

Modules (one concept each):
  supernet          SuperNetwork: teacher attention + linear path per layer, choice vector [L]
  sampling          ChoiceSampler: which layers use attention at each training step
  trainer           distillation loop for super-networks and plain students (DistillStep)
  placement_search  TaskSuite (lm_loss / kl / mqar / mc) + beam search + importance
  block_selection   same recipe for every linear block; accuracy + measured throughput
  hardware_search   (heads, dk, dv) grid at fixed cache size; accuracy vs decode speed
  throughput        timed decode steps and cache bytes
  teacher           load or pre-train the tiny teacher
  config            PostNASConfig (+ --set overrides); configs/postnas_tiny.py
  report            markdown tables and PNGs
  cli               `jet-jax postnas {supernet,search,blocks,hardware,pipeline}`
"""
