"""Full-attention placement search on a trained super-network (Jet-Nemotron paper, section 3.1).

Every candidate is a choice vector int32 [L] (0 linear, 1 attn, 2 swa) evaluated *on the
trained super-network* (no retraining) on several tasks, each scored separately:

  * "lm_loss": held-out next-token cross-entropy (lower is better);
  * "kl":      KL(teacher || candidate) on the same held-out tokens (lower is better);
  * "mqar":    MQAR retrieval accuracy (answer tokens, argmax; higher is better);
  * "copy":    copying accuracy (second copy of a random span, argmax; higher is better);
  * "mc":      optional multiple-choice acc_norm on a JSONL task file of
               {"context", "choices", "label"}, read and scored by jet_jax.evaluation
               (the functions of `jet-jax eval`, lm-evaluation-harness's acc_norm;
               higher is better).

Task scores are put on a common scale with two references evaluated the same way: the
all-linear network (0) and the all-attention network (1):
    normalized = (score - score_all_linear) / (score_all_attn - score_all_linear),
so 1 means "recovers everything full attention gives on this task" whatever the direction.
Normalized scores are clipped to [-5, 5] and accuracy tasks whose references differ by
less than 0.02 are left out of the objective (a task both references nearly tie on would
otherwise blow up); raw scores are kept in every record. The search objective is the
weighted mean of the normalized scores (weights per task; by default every task except
lm_loss when kl is available) over the tasks on which the two references differ (a task both references fail, e.g. MQAR at chance, cannot rank anything).

Beam search: start from the empty set; each round adds one attention layer to every beam
member, scores the new candidates, keeps the best `beam_width` (ties broken by the sorted
layer tuple, so a fixed seed gives a fixed result). After `budget` rounds (and, with
`swa_budget` > 0, a second phase adding SWA layers the same way on top of the final beam),
the same beam search runs once per task alone; the winner is the best of every evaluated
candidate of the final size (the ranking), so it is at least as good as the main beam's.
Per-layer importance (task x layer) comes from 2L extra evaluations: the normalized score
with only layer i on attention, and the drop from all-attention when layer i alone is linear
(NaN / null for a task the two references do not separate).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jet_jax.evaluation import MCExample, Request, Scorer
from jet_jax.evaluation.multiple_choice import multiple_choice_metrics, multiple_choice_requests
from jet_jax_train.data.mqar import answer_hits
from jet_jax_train.progress import progress_bar
from jet_jax_train.postnas.supernet import ATTN, LINEAR, SWA, SuperNetwork, layer_types_from_choice

NORMALIZED_RANGE = (-5.0, 5.0)
# Accuracy tasks whose references differ by less than this (absolute) do not separate them.
MIN_ACCURACY_SPAN = 0.02
LOWER_IS_BETTER = {"lm_loss": True, "kl": True, "mqar": False, "copy": False, "mc": False}


# ----------------------------------------------------------------------------- forward
def forward_logits(model, choice, batch) -> jax.Array:
    """logits [B, T, V] of a super-network sub-network (`choice` [L]) or a plain model (None)."""
    seg, pos = batch.get("segment_ids"), batch.get("positions")
    if isinstance(model, SuperNetwork):
        return model(batch["input_ids"], choice, seg, pos)
    return model(batch["input_ids"], seg, pos)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, choice, batch):
    """One compiled forward per model structure; every choice vector reuses it."""
    return forward_logits(nnx.merge(graphdef, state), choice, batch)


@jax.jit
def _lm_stats(logits, batch, teacher_logits):
    """Per row [B]: (sum CE, sum KL(teacher || model), token count) over loss_mask."""
    logp = jax.nn.log_softmax(logits, -1)
    mask = batch["loss_mask"].astype(jnp.float32)
    ce = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    logq = jax.nn.log_softmax(teacher_logits, -1)
    kl = jnp.sum(jnp.exp(logq) * (logq - logp), -1)
    return jnp.sum(ce * mask, -1), jnp.sum(kl * mask, -1), jnp.sum(mask, -1)


def _ratio_and_se(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """sum(num) / sum(den) and its standard error, rows as the sampling unit (ratio
    estimator: SE = sqrt(sum((num - r den)^2) / (n (n - 1))) / mean(den)); NaN SE if n < 2."""
    keep = den > 0
    num, den = np.asarray(num, np.float64)[keep], np.asarray(den, np.float64)[keep]
    n = len(den)
    if n == 0:
        return float("nan"), float("nan")
    r = float(num.sum() / den.sum())
    if n < 2:
        return r, float("nan")
    se = math.sqrt(float(np.sum((num - r * den) ** 2)) / (n * (n - 1))) / float(den.mean())
    return r, se


def _device_batch(batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    keys = ("input_ids", "segment_ids", "positions", "targets", "loss_mask")
    return {k: jnp.asarray(batch[k]) for k in keys if k in batch}


# ----------------------------------------------------------------------------- multiple choice
class SubNetwork(nnx.Module):
    """A super-network with a fixed choice vector [L], called like a plain model
    (`input_ids` [B, T] -> logits [B, T, V]) so jet_jax.evaluation's Scorer can score it.
    The choice is state, not structure: every choice reuses one compiled forward."""

    def __init__(self, supernet: SuperNetwork, choice):
        self.supernet = supernet
        self.config = supernet.config
        self.choice = nnx.Variable(jnp.asarray(np.asarray(choice, np.int32)))

    def __call__(self, input_ids):
        return self.supernet(input_ids, self.choice.value)


@dataclasses.dataclass(frozen=True)
class MCTask:
    """Multiple-choice examples and their requests, tokenized once for every candidate."""

    examples: tuple[MCExample, ...]
    requests: tuple[Request, ...]
    batch_size: int = 8
    pad_multiple: int = 32  # rows are short; the library's default 64 doubles the work


def mc_task(examples: Sequence[MCExample], tokenizer, batch_size: int = 8) -> MCTask:
    """Requests as `jet-jax eval` builds them: bos + context, " " + choice scored."""
    return MCTask(tuple(examples), tuple(multiple_choice_requests(
        examples, tokenizer.encode, bos_id=tokenizer.bos_id)), batch_size)


# ----------------------------------------------------------------------------- evaluator
class TaskSuite:
    """Scores any sub-network of a super-network (or a plain model) on the enabled tasks.

    lm_batches: held-out LM batches ([B, T] rows, jet_jax_train.data format); enables lm_loss and kl.
    mqar_batches: MQAR eval batches (loss_mask at answers); enables mqar.
    copy_batches: copy-task eval batches (loss_mask on the second copy); enables copy.
    mc: an `MCTask` (see `mc_task`); enables mc.
    teacher: the full-attention model, for "kl" (its logits are computed once here).
    """

    def __init__(self, *, teacher=None, lm_batches=(), mqar_batches=(), copy_batches=(), mc=None):
        self.lm_batches = [_device_batch(b) for b in lm_batches]
        # answer-accuracy tasks: name -> (device batches, host batches)
        self.accuracy_tasks = {name: ([_device_batch(b) for b in bs], list(bs))
                               for name, bs in (("mqar", mqar_batches), ("copy", copy_batches)) if bs}
        self.mc = mc
        self.teacher_logits = None
        if teacher is not None and self.lm_batches:
            gd, st = nnx.split(teacher)
            self.teacher_logits = [_logits(gd, st, None, b) for b in self.lm_batches]
        self.tasks: list[str] = []
        if self.lm_batches:
            self.tasks.append("lm_loss")
            if self.teacher_logits is not None:
                self.tasks.append("kl")
        self.tasks += list(self.accuracy_tasks)
        if self.mc is not None:
            self.tasks.append("mc")
        if not self.tasks:
            raise ValueError("TaskSuite has no task: give lm_batches, mqar_batches, copy_batches or mc")

    def score(self, model, choice=None) -> dict[str, float]:
        """{task: raw score} of `model` (super-network + choice [L], or plain model)."""
        return self.score_with_se(model, choice)[0]

    def score_with_se(self, model, choice=None) -> tuple[dict[str, float], dict[str, float]]:
        """({task: raw score}, {task: its standard error from the finite eval set}).

        Scores are token-level (lm_loss, kl: mean per target token; mqar, copy: fraction of
        answer tokens right; mc: fraction of items right). The SE treats eval rows as the
        independent units (answers in one row are correlated), items for mc.
        """
        graphdef, state = nnx.split(model)
        c = None if choice is None else jnp.asarray(np.asarray(choice, np.int32))
        out: dict[str, float] = {}
        se: dict[str, float] = {}
        if self.lm_batches:
            rows = []
            for i, b in enumerate(self.lm_batches):
                logits = _logits(graphdef, state, c, b)
                tl = self.teacher_logits[i] if self.teacher_logits is not None else logits
                rows.append(np.stack([np.asarray(a) for a in _lm_stats(logits, b, tl)]))
            ce, kl, n = np.concatenate(rows, axis=1)
            out["lm_loss"], se["lm_loss"] = _ratio_and_se(ce, n)
            if self.teacher_logits is not None:
                out["kl"], se["kl"] = _ratio_and_se(kl, n)
        for name, (dev, host) in self.accuracy_tasks.items():
            correct, total = [], []
            for b, bn in zip(dev, host):
                hits, answers = answer_hits(jnp.argmax(_logits(graphdef, state, c, b), -1), bn)
                correct.append(hits)
                total.append(answers)
            out[name], se[name] = _ratio_and_se(np.concatenate(correct), np.concatenate(total))
            if math.isnan(out[name]):
                out[name] = 0.0
        if self.mc is not None:
            net = model if choice is None else SubNetwork(model, choice)
            scored = Scorer(net, batch_size=self.mc.batch_size,
                            pad_multiple=self.mc.pad_multiple).score(self.mc.requests)
            m = multiple_choice_metrics(self.mc.examples, scored)
            right = np.zeros(m["n"])
            right[:round(m["acc_norm"] * m["n"])] = 1.0  # the SE depends on the count only
            out["mc"], se["mc"] = _ratio_and_se(right, np.ones_like(right))
        return out, se


def informative_tasks(ref_linear: Mapping[str, float], ref_attn: Mapping[str, float],
                      tasks=None) -> list[str]:
    """Tasks on which the two references differ (others cannot rank candidates); accuracy
    tasks need a gap of at least MIN_ACCURACY_SPAN (e.g. both MQAR references near chance)."""
    out = []
    for t in (tasks or ref_linear):
        span = abs(ref_attn[t] - ref_linear[t])
        if span >= (MIN_ACCURACY_SPAN if not LOWER_IS_BETTER.get(t, True) else 1e-12):
            out.append(t)
    return out


def _objective_terms(ref_linear, ref_attn, tasks, weights) -> tuple[list[str], list[float]]:
    """The tasks the objective averages and their weights (see `objective_of`)."""
    if tasks is None:
        tasks = [t for t in ref_linear if not (t == "lm_loss" and "kl" in ref_linear)]
    use = informative_tasks(ref_linear, ref_attn, tasks)
    return use, [(weights or {}).get(t, 1.0) for t in use]


def objective_of(normalized: Mapping[str, float], ref_linear, ref_attn, tasks=None,
                 weights: Mapping[str, float] | None = None) -> float:
    """Weighted mean normalized score over the informative tasks (0.0 if none is).

    tasks None: every task except lm_loss when kl is present (held-out CE of a tiny teacher
    barely separates the references; KL to the teacher is the distillation target).
    """
    use, w = _objective_terms(ref_linear, ref_attn, tasks, weights)
    if not use:
        return 0.0
    return float(sum(wi * normalized[t] for wi, t in zip(w, use)) / max(sum(w), 1e-12))


def objective_se(se: Mapping[str, float], ref_linear, ref_attn, tasks=None,
                 weights: Mapping[str, float] | None = None) -> float:
    """Standard error of `objective_of` from the tasks' eval-set SEs (references held fixed):
    sqrt(sum_t (w_t se_t / span_t)^2) / sum_t w_t over the same tasks (clipping ignored)."""
    use, w = _objective_terms(ref_linear, ref_attn, tasks, weights)
    if not use:
        return 0.0
    var = sum((wi * se.get(t, float("nan")) / (ref_attn[t] - ref_linear[t])) ** 2
              for wi, t in zip(w, use))
    return float(math.sqrt(var) / max(sum(w), 1e-12))


def normalize(scores: Mapping[str, float], ref_linear: Mapping[str, float],
              ref_attn: Mapping[str, float]) -> dict[str, float]:
    """Per task: 0 = all-linear reference, 1 = all-attention reference (see module doc)."""
    out = {}
    for k, v in scores.items():
        span = ref_attn[k] - ref_linear[k]
        out[k] = 0.0 if abs(span) < 1e-12 else float(np.clip((v - ref_linear[k]) / span,
                                                               *NORMALIZED_RANGE))
    return out


# ----------------------------------------------------------------------------- search
@dataclasses.dataclass(frozen=True)
class SearchConfig:
    budget: int = 2                 # k full-attention layers
    swa_budget: int = 0             # extra SWA layers (second phase)
    beam_width: int = 4
    task_weights: tuple[tuple[str, float], ...] = ()   # () = every task weight 1
    objective_tasks: tuple[str, ...] | None = None     # None = all but lm_loss if kl exists
    seed: int = 0                   # recorded; the search itself has no randomness

    def weight(self, task: str) -> float:
        return dict(self.task_weights).get(task, 1.0)


@dataclasses.dataclass
class Candidate:
    choice: tuple[int, ...]
    scores: dict[str, float]
    normalized: dict[str, float]
    objective: float

    def to_dict(self, block: str) -> dict:
        return {"choice": list(self.choice), "layer_types": list(layer_types_from_choice(self.choice, block)),
                "attn_layers": [i for i, c in enumerate(self.choice) if c == ATTN],
                "swa_layers": [i for i, c in enumerate(self.choice) if c == SWA],
                "scores": self.scores, "normalized": self.normalized, "objective": self.objective}


@dataclasses.dataclass
class SearchResult:
    block: str
    config: SearchConfig
    tasks: list[str]
    best: Candidate
    ranking: list[Candidate]              # every final-size candidate scored, best first
    per_task_best: dict[str, Candidate]   # the best final-size candidate for each task alone
    references: dict[str, dict[str, float]]   # "all_linear", "all_attn" raw scores
    importance_only: np.ndarray           # [tasks, L] normalized score, only layer i attention
    importance_drop: np.ndarray           # [tasks, L] 1 - normalized score, all-attn but layer i
    num_evaluations: int

    @property
    def layer_types(self) -> tuple[str, ...]:
        return layer_types_from_choice(self.best.choice, self.block)

    def to_dict(self) -> dict:
        return {
            "block": self.block, "config": dataclasses.asdict(self.config), "tasks": self.tasks,
            "best": self.best.to_dict(self.block), "layer_types": list(self.layer_types),
            "ranking": [c.to_dict(self.block) for c in self.ranking],
            "per_task_best": {k: c.to_dict(self.block) for k, c in self.per_task_best.items()},
            "references": self.references,
            "importance_only_layer_attn": _nan_to_none(self.importance_only),
            "importance_drop_when_linear": _nan_to_none(self.importance_drop),
            "num_evaluations": self.num_evaluations,
        }

    def save_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


class PlacementSearch:
    """Beam search over attention placements of one trained super-network (see module doc)."""

    def __init__(self, supernet: SuperNetwork, suite: TaskSuite, cfg: SearchConfig,
                 *, log=None):
        L = supernet.num_layers
        if not 0 <= cfg.budget <= L:
            raise ValueError(f"budget must be in [0, {L}], got {cfg.budget}")
        if cfg.budget + cfg.swa_budget > L:
            raise ValueError(f"budget {cfg.budget} + swa_budget {cfg.swa_budget} > {L} layers")
        if cfg.swa_budget and not supernet.enable_swa:
            raise ValueError("swa_budget > 0 needs a super-network built with enable_swa=True")
        if cfg.beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {cfg.beam_width}")
        self.supernet, self.suite, self.cfg, self.L = supernet, suite, cfg, L
        self.tasks = list(cfg.objective_tasks or [
            t for t in suite.tasks if not (t == "lm_loss" and "kl" in suite.tasks)])
        unknown = set(self.tasks) - set(suite.tasks)
        if unknown:
            raise ValueError(f"objective tasks {sorted(unknown)} are not in the suite {suite.tasks}")
        self.log = log or (lambda msg: None)
        self._bar = None
        self._cache: dict[tuple[int, ...], dict[str, float]] = {}
        self.ref_linear = self.raw((LINEAR,) * L)
        self.ref_attn = self.raw((ATTN,) * L)

    def raw(self, choice: tuple[int, ...]) -> dict[str, float]:
        choice = tuple(int(c) for c in choice)
        if choice not in self._cache:
            self._cache[choice] = self.suite.score(self.supernet, np.array(choice, np.int32))
        return self._cache[choice]

    def candidate(self, choice) -> Candidate:
        raw = self.raw(choice)
        norm = normalize(raw, self.ref_linear, self.ref_attn)
        obj = objective_of(norm, self.ref_linear, self.ref_attn, self.tasks,
                           dict(self.cfg.task_weights))
        return Candidate(tuple(int(c) for c in choice), raw, norm, obj)

    def _beam(self, starts: list[tuple[int, ...]], code: int, rounds: int,
              key=lambda c: c.objective, label: str = "objective") -> list[Candidate]:
        beam = [self.candidate(s) for s in starts]
        for r in range(rounds):
            seen, cands = set(), []
            for b in beam:
                for i in range(self.L):
                    if b.choice[i] != LINEAR:
                        continue
                    c = list(b.choice)
                    c[i] = code
                    c = tuple(c)
                    if c not in seen:
                        seen.add(c)
                        cands.append(self.candidate(c))
            cands.sort(key=lambda c: (-key(c), c.choice))
            beam = cands[:self.cfg.beam_width]
            self.log(f"  [{label}] round {r + 1}/{rounds} ({CHOICE_CODE[code]}): {len(cands)} "
                     f"candidates, best {list(beam[0].choice)} score {key(beam[0]):.4f}")
            if self._bar is not None:
                self._bar.update(1)
        return beam if rounds else sorted(beam, key=lambda c: (-key(c), c.choice))

    def importance(self) -> tuple[np.ndarray, np.ndarray]:
        """[tasks, L] arrays; NaN rows for tasks the references do not separate."""
        only = np.full((len(self.suite.tasks), self.L), np.nan)
        drop = np.full((len(self.suite.tasks), self.L), np.nan)
        informative = informative_tasks(self.ref_linear, self.ref_attn, self.suite.tasks)
        for i in range(self.L):
            c1 = [LINEAR] * self.L
            c1[i] = ATTN
            c2 = [ATTN] * self.L
            c2[i] = LINEAR
            n1 = self.candidate(c1).normalized
            n2 = self.candidate(c2).normalized
            if self._bar is not None:
                self._bar.update(1)
            for t, task in enumerate(self.suite.tasks):
                if task in informative:
                    only[t, i] = n1[task]
                    drop[t, i] = 1.0 - n2[task]
        return only, drop

    def run(self) -> SearchResult:
        cfg = self.cfg
        empty = (LINEAR,) * self.L
        self.log(f"beam search: budget {cfg.budget}, beam {cfg.beam_width}, tasks {self.tasks}")
        rounds = (cfg.budget + cfg.swa_budget) * (1 + len(self.suite.tasks)) + self.L
        self._bar = progress_bar(desc="placement search (beam rounds + importance)",
                                 total=rounds, unit="round")
        final = self._beam([empty], ATTN, cfg.budget)
        per_task = {}
        for task in self.suite.tasks:  # each task alone (different tasks, different layers)
            beam_t = self._beam([empty], ATTN, cfg.budget, key=lambda c, t=task: c.normalized[t],
                                label=task)
            if cfg.swa_budget:
                beam_t = self._beam([c.choice for c in beam_t], SWA, cfg.swa_budget,
                                    key=lambda c, t=task: c.normalized[t], label=task)
            per_task[task] = beam_t[0]
        if cfg.swa_budget:
            final = self._beam([c.choice for c in final], SWA, cfg.swa_budget)
        n_attn, n_swa = cfg.budget, cfg.swa_budget
        ranking = [self.candidate(c) for c in self._cache
                   if c.count(ATTN) == n_attn and c.count(SWA) == n_swa]
        ranking.sort(key=lambda c: (-c.objective, c.choice))
        only, drop = self.importance()
        self._bar.close()
        self._bar = None
        self.log(f"main beam: {list(final[0].choice)} ({final[0].objective:.4f}); best of "
                 f"{len(ranking)} evaluated: {list(ranking[0].choice)} ({ranking[0].objective:.4f})")
        return SearchResult(
            block=self.supernet.block, config=cfg, tasks=list(self.suite.tasks), best=ranking[0],
            ranking=ranking, per_task_best=per_task,
            references={"all_linear": self.ref_linear, "all_attn": self.ref_attn},
            importance_only=only, importance_drop=drop, num_evaluations=len(self._cache))


CHOICE_CODE = {LINEAR: "linear", ATTN: "attn", SWA: "swa"}


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if np.isnan(v) else float(v) for v in row] for row in np.asarray(a)]


def uniform_placement(num_layers: int, budget: int) -> tuple[int, ...]:
    """Evenly spaced attention layers (the paper's baseline): centres of `budget` equal bins."""
    if not 0 <= budget <= num_layers:
        raise ValueError(f"budget must be in [0, {num_layers}], got {budget}")
    idx = {int((j + 0.5) * num_layers / budget) for j in range(budget)} if budget else set()
    return tuple(ATTN if i in idx else LINEAR for i in range(num_layers))


def search_placement(supernet: SuperNetwork, suite: TaskSuite, cfg: SearchConfig,
                     *, log=None) -> SearchResult:
    """Convenience: `PlacementSearch(supernet, suite, cfg).run()`."""
    return PlacementSearch(supernet, suite, cfg, log=log).run()
