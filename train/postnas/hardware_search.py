"""Hardware-aware search of the linear block's shape (reference section 3.4).

Parameter count is a poor proxy for generation speed; the decode cache (KV of attention
layers + recurrent state of linear layers) dominates. So the search holds the cache size
fixed and grids over (heads H, key dim dk, value dim dv) of the chosen block:

1. grid: explicit `heads x key_dims x value_dims`, or by default, for each H in
   {H0/2, H0, 2 H0, 4 H0} and dk in {dk0/2, dk0, 2 dk0}, the dv that keeps the recurrent state
   H*dk*dv equal to the baseline's (when it is a whole number);
2. filter: keep candidates whose per-layer linear state bytes (recurrent + conv state, from
   the real cache arrays) are within `cache_tolerance` (relative) of the baseline's; after
   building each kept candidate the whole-model cache bytes at `context` are ASSERTED to be
   within the same tolerance of the baseline's;
3. each candidate is distilled with the identical short recipe and scored
   (`block_selection.evaluate_architecture`), and its decode throughput is measured on the
   current device (`throughput.measure_decode_throughput`, timed);
4. pick the most accurate (objective) candidate whose throughput >= baseline throughput *
   (1 - throughput_slack) (measurement noise allowance, stated in the output); the baseline
   always qualifies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from flax import nnx

from train.postnas import throughput as tp
from train.postnas.block_selection import ThroughputConfig, evaluate_architecture
from train.postnas.placement_search import TaskSuite
from train.postnas.supernet import build_linear_mixer
from train.postnas.trainer import SupernetTrainConfig


@dataclasses.dataclass(frozen=True)
class HardwareSearchConfig:
    heads: tuple[int, ...] | None = None       # None: derived grid (module doc)
    key_dims: tuple[int, ...] | None = None
    value_dims: tuple[int, ...] | None = None
    cache_tolerance: float = 0.05               # relative
    throughput_slack: float = 0.05              # relative
    max_candidates: int | None = None           # keep the first N after filtering (+ baseline)


def block_shape(cfg, block: str) -> tuple[int, int, int]:
    """(H, dk, dv) of `block` under model config `cfg`."""
    if block == "jet":
        return cfg.jet.num_heads, cfg.jet.head_dim, cfg.jet.head_v_dim
    kw = dict(num_heads=cfg.jet.num_heads, head_dim=cfg.jet.head_dim, expand_v=1.0)
    kw.update(cfg.zoo_kwargs(block))
    return int(kw["num_heads"]), int(kw["head_dim"]), int(round(kw["head_dim"] * kw["expand_v"]))


def shape_overrides(cfg, block: str, shape: tuple[int, int, int]) -> dict:
    """kwargs for `SuperNetwork.from_teacher` (jet= or zoo=) giving `block` this shape."""
    h, dk, dv = shape
    if block == "jet":
        jet = dataclasses.replace(cfg.jet, num_heads=h, head_dim=dk, expand_v=dv / dk)
        jet.validate()
        jet.head_v_dim  # noqa: B018 - raises on a non-integral dv
        return {"jet": jet}
    zoo = {k: dict(v) for k, v in cfg.zoo}
    zoo[block] = {**zoo.get(block, {}), "num_heads": h, "head_dim": dk, "expand_v": dv / dk}
    return {"zoo": zoo}


def state_bytes(cfg, block: str, shape) -> int:
    """Per-layer linear state bytes (batch 1) of `block` with `shape`, from its cache arrays."""
    ov = shape_overrides(cfg, block, shape)
    c = cfg
    if "jet" in ov:
        c = c.replace(jet=ov["jet"])
    else:
        c = c.replace(zoo=tuple((k, tuple(sorted(v.items()))) for k, v in sorted(ov["zoo"].items())))
    mixer = nnx.eval_shape(lambda: build_linear_mixer(c, block, rngs=nnx.Rngs(0)))
    return tp.linear_state_bytes(mixer, 1)


def candidate_grid(cfg, block: str, hs: HardwareSearchConfig) -> tuple[list[dict], list[dict]]:
    """(kept candidates, rejected with reason); each {"shape": (H, dk, dv), "state_bytes"}."""
    h0, dk0, dv0 = block_shape(cfg, block)
    if hs.heads or hs.key_dims or hs.value_dims:
        shapes = [(h, dk, dv) for h in (hs.heads or (h0,)) for dk in (hs.key_dims or (dk0,))
                  for dv in (hs.value_dims or (dv0,))]
    else:
        total = h0 * dk0 * dv0
        shapes = []
        for h in sorted({max(1, h0 // 2), h0, 2 * h0, 4 * h0}):
            for dk in sorted({max(2, dk0 // 2), dk0, 2 * dk0}):
                if total % (h * dk) == 0:
                    shapes.append((h, dk, total // (h * dk)))
    base = state_bytes(cfg, block, (h0, dk0, dv0))
    kept, rejected = [{"shape": (h0, dk0, dv0), "state_bytes": base, "baseline": True}], []
    for shape in dict.fromkeys(shapes):
        if shape == (h0, dk0, dv0):
            continue
        try:
            b = state_bytes(cfg, block, shape)
        except (ValueError, TypeError) as e:
            rejected.append({"shape": shape, "reason": f"invalid: {e}"[:200]})
            continue
        rel = abs(b - base) / base
        if rel > hs.cache_tolerance:
            rejected.append({"shape": shape, "state_bytes": b,
                             "reason": f"state {b} B differs from baseline {base} B by {rel:.1%}"})
        else:
            kept.append({"shape": shape, "state_bytes": b, "baseline": False})
    if hs.max_candidates is not None:
        kept = kept[:1 + hs.max_candidates]
    return kept, rejected


def hardware_search(teacher, choice, block: str, *, data: Callable[[], Iterator],
                    suite: TaskSuite, references, train_cfg: SupernetTrainConfig,
                    hs: HardwareSearchConfig = HardwareSearchConfig(),
                    throughput: ThroughputConfig = ThroughputConfig(), seed: int = 0,
                    log=None) -> dict:
    """Returns {"rows", "rejected", "best", "baseline", "cache_tolerance", "throughput_slack"}.

    Each row: shape (H, dk, dv), task scores, objective, decode/train tokens/s, cache bytes,
    params, qualifies (throughput condition). `best` is the chosen row.
    """
    log = log or (lambda msg: None)
    cfg = teacher.config
    kept, rejected = candidate_grid(cfg, block, hs)
    log(f"hardware search over {len(kept)} candidates of {block} "
        f"(rejected {len(rejected)} for cache size / validity)")
    rows, base_cache = [], None
    for cand in kept:
        h, dk, dv = cand["shape"]
        row, student, _ = evaluate_architecture(
            teacher, choice, block, data=data, suite=suite, references=references,
            train_cfg=train_cfg, throughput=throughput, seed=seed,
            **shape_overrides(cfg, block, cand["shape"]))
        if base_cache is None:
            base_cache = row["cache_bytes"]
        rel = abs(row["cache_bytes"] - base_cache) / base_cache
        assert rel <= hs.cache_tolerance, (
            f"candidate {cand['shape']} cache {row['cache_bytes']} B differs from the baseline "
            f"{base_cache} B by {rel:.2%} > tolerance {hs.cache_tolerance:.2%}")
        row = {"heads": h, "dk": dk, "dv": dv, **row, "baseline": cand["baseline"],
               "cache_rel_diff": rel}
        rows.append(row)
        log(f"  H={h} dk={dk} dv={dv}: objective {row['objective']:.4f}, decode "
            f"{row['decode_tokens_per_s']:.1f} tok/s, cache {row['cache_bytes']} B")
    base = rows[0]
    floor = base["decode_tokens_per_s"] * (1 - hs.throughput_slack)
    for r in rows:
        r["qualifies"] = bool(r["baseline"] or r["decode_tokens_per_s"] >= floor)
    best = max((r for r in rows if r["qualifies"]), key=lambda r: (r["objective"],
                                                                  r["decode_tokens_per_s"]))
    return {"rows": rows, "rejected": rejected, "best": best, "baseline": base,
            "cache_tolerance": hs.cache_tolerance, "throughput_slack": hs.throughput_slack}
