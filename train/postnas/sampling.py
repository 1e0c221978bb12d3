"""Which layers use full attention at each super-network training step.

A `ChoiceSampler` maps (seed, step) -> choice vector int32 [L] (0 linear, 1 attn, 2 swa),
a pure function, so a resumed run sees the same sub-networks and any process can draw them.

Rules:
  * "uniform":   exactly `budget` attention layers, a uniformly random k-subset (then
                 `swa_budget` SWA layers uniformly among the rest);
  * "bernoulli": each layer is attention with probability `prob` (default budget / L),
                 else SWA with probability `swa_prob` (default swa_budget / L), else linear;
  * "fixed":     always `fixed` (a choice vector): plain distillation of one architecture
                 with the super-network's machinery (block selection, hardware search).
`budget` may be a (lo, hi) range for "uniform": k is drawn uniformly in [lo, hi] each step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jet_jax_train.postnas.supernet import ATTN, LINEAR, SWA, as_choice

RULES = ("uniform", "bernoulli", "fixed")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    rule: str = "uniform"
    budget: int | tuple[int, int] = 2
    swa_budget: int = 0
    prob: float | None = None
    swa_prob: float | None = None
    fixed: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"sampling rule must be one of {RULES}, got {self.rule!r}")
        if isinstance(self.budget, (list, tuple)):
            object.__setattr__(self, "budget", tuple(int(b) for b in self.budget))
            if len(self.budget) != 2 or not 0 <= self.budget[0] <= self.budget[1]:
                raise ValueError(f"budget range must be (lo, hi) with 0 <= lo <= hi, got {self.budget}")
        elif self.budget < 0:
            raise ValueError(f"budget must be >= 0, got {self.budget}")
        if self.swa_budget < 0:
            raise ValueError(f"swa_budget must be >= 0, got {self.swa_budget}")
        for name in ("prob", "swa_prob"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if self.rule == "fixed" and self.fixed is None:
            raise ValueError("rule='fixed' needs `fixed` (a choice vector)")
        if self.fixed is not None:
            object.__setattr__(self, "fixed", tuple(int(c) for c in self.fixed))

    @property
    def max_budget(self) -> int:
        return self.budget[1] if isinstance(self.budget, tuple) else self.budget


class ChoiceSampler:
    """`sampler(step)` -> int32 [num_layers] choice vector, deterministic in (seed, step)."""

    def __init__(self, num_layers: int, cfg: SamplingConfig):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if cfg.rule == "uniform" and cfg.max_budget + cfg.swa_budget > num_layers:
            raise ValueError(f"budget {cfg.budget} + swa_budget {cfg.swa_budget} exceeds "
                             f"{num_layers} layers")
        if cfg.fixed is not None:
            as_choice(cfg.fixed, num_layers)
        self.num_layers = num_layers
        self.cfg = cfg

    def __call__(self, step: int) -> np.ndarray:
        return self.sample(step)

    def sample(self, step: int) -> np.ndarray:
        cfg, n = self.cfg, self.num_layers
        if cfg.rule == "fixed":
            return np.array(cfg.fixed, np.int32)
        rng = np.random.default_rng([cfg.seed & 0xFFFFFFFF, int(step)])
        choice = np.full(n, LINEAR, np.int32)
        if cfg.rule == "uniform":
            k = (int(rng.integers(cfg.budget[0], cfg.budget[1] + 1))
                 if isinstance(cfg.budget, tuple) else cfg.budget)
            perm = rng.permutation(n)
            choice[perm[:k]] = ATTN
            choice[perm[k:k + cfg.swa_budget]] = SWA
        else:  # bernoulli
            p = cfg.prob if cfg.prob is not None else min(1.0, cfg.max_budget / n)
            q = cfg.swa_prob if cfg.swa_prob is not None else min(1.0, cfg.swa_budget / n)
            u = rng.random(n)
            choice[u < p] = ATTN
            choice[(u >= p) & (u < p + q)] = SWA
        return choice
