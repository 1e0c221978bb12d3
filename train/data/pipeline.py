"""The training/eval input pipeline: sources -> tokens -> packed rows -> mixed,
shuffled, batched and sharded numpy batches, as a checkpointable grain iterator.

Per source (k-th entry of ``DataConfig.sources``):

    documents (MapDataset, random access)
      -> shuffle by index (per epoch, seed from (cfg.seed, k)) -> repeat(num_epochs)
      -> tokenize + bos/eos + shift        (packing.encode_document)
      -> pack into seq_len rows           (concat-then-split; MQAR: first-fit)
      -> window-shuffle rows               (so one batch does not hold 8
                                            consecutive slices of one long play)
    then IterDataset.mix(sources, weights)  (weights = share of packed rows)
      -> batch(global batch_size) -> this process's slice of rows.

Process sharding (``DataConfig.num_shards`` = S): the global row stream is S
independent shards. Shard s reads only the documents at positions s, s+S, ...
of each epoch's shuffled order (synthetic sources: examples s, s+S, ...), packs
them on its own and fills rows [s*B/S, (s+1)*B/S) of every global batch. With
P processes:

* S a multiple of P: process p owns shards [p*S/P, (p+1)*S/P) and reads only
  their documents (the pod setting: no document is read by two hosts, none is
  skipped, within an epoch);
* P a multiple of S: P/S processes share a shard, each builds its stream and
  keeps its slice of the shard's rows (S=1, the default: every process reads
  everything and keeps rows [p*B/P, (p+1)*B/P); right for small data and a few
  hosts).

The global batch depends on S but not on P, so a run resumes on another
process count and the local batches tile the global one exactly.

Checkpointing: the returned iterator is a ``grain.DatasetIterator``;
``it.get_state()`` is a small JSON-able dict ``{"num_shards": S, "shards":
{"<s>": grain state of shard s}}`` holding the shards this process reads, and
``it.set_state(state)`` on a fresh iterator from the same config reproduces
exactly the batches that would have followed. ``set_state`` also accepts the
union of all processes' states (what the trainer's checkpoint stores, see
jet_jax_train.checkpointing) and picks its own shards, on any process count.

Every batch is a dict of numpy arrays [B_local, T] (see packing.ROW_KEYS):
input_ids, segment_ids, positions, targets int32; loss_mask float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import grain
import jax
import numpy as np

from jet_jax_train.data import packing
from jet_jax_train.data.copy_task import CopyConfig, CopySource
from jet_jax_train.data.mqar import MQARConfig, MQARSource
from jet_jax_train.data.sources import SourceConfig, open_document_source
from jet_jax.tokenizer import load_tokenizer


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input pipeline settings.

    sources: weighted mixture; default is the embedded Shakespeare corpus.
    seq_len: T, tokens per row.
    batch_size: GLOBAL rows per step (split evenly over JAX processes).
    tokenizer: "byte" or a path to a HF tokenizer.json (or its directory).
    seed: drives shuffling, MQAR generation and row shuffling.
    num_epochs: passes over each document source; None = infinite. With a
        finite count the mixture stops when the first source runs out.
    shuffle_window: rows buffered for the post-packing window shuffle (1 = off).
    packing_bins: open rows for first-fit packing of MQAR examples.
    num_shards: independent input shards S (see the module docstring); must
        divide batch_size, and S must be a multiple or a divisor of the
        process count. Set it to the number of hosts (or a multiple) so that
        each host reads only its share of the documents.
    read_threads, read_prefetch: grain.ReadOptions for reading + tokenizing
        documents ahead of packing. grain's defaults (16 threads, 500 elements
        per source) cost ~30x more CPU here for nothing: tokenization holds the
        GIL, so extra threads only help sources with slow I/O.
    """

    sources: tuple[SourceConfig, ...] = (SourceConfig(kind="shakespeare"),)
    seq_len: int = 512
    batch_size: int = 8
    tokenizer: str = "byte"
    seed: int = 0
    num_epochs: int | None = None
    shuffle_window: int = 256
    packing_bins: int = 8
    num_shards: int = 1
    read_threads: int = 1
    read_prefetch: int = 64

    def __post_init__(self):
        if isinstance(self.sources, SourceConfig):
            object.__setattr__(self, "sources", (self.sources,))
        object.__setattr__(self, "sources", tuple(self.sources))
        if not self.sources:
            raise ValueError("DataConfig.sources is empty; give at least one SourceConfig")
        for s in self.sources:
            if not isinstance(s, SourceConfig):
                raise TypeError(f"DataConfig.sources entries must be SourceConfig, got {type(s).__name__}")
        if self.seq_len < 2:
            raise ValueError(f"DataConfig.seq_len must be >= 2, got {self.seq_len}")
        if self.batch_size < 1:
            raise ValueError(f"DataConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"DataConfig.num_epochs must be None (infinite) or >= 1, got {self.num_epochs}")
        if self.num_shards < 1 or self.batch_size % self.num_shards:
            raise ValueError(f"DataConfig.num_shards={self.num_shards} must be >= 1 and divide "
                             f"batch_size={self.batch_size}")
        if self.shuffle_window < 1 or self.packing_bins < 1:
            raise ValueError("DataConfig.shuffle_window and packing_bins must be >= 1")
        if self.read_threads < 0 or self.read_prefetch < 0:
            raise ValueError("DataConfig.read_threads and read_prefetch must be >= 0")
        for s in self.sources:
            if s.kind == "mqar" and s.mqar.length - 1 > self.seq_len:
                raise ValueError(
                    f"MQAR examples need {s.mqar.length - 1} tokens per row (1 + 2*num_pairs + "
                    f"2*num_queries, minus the shift) but seq_len={self.seq_len}")
            if s.kind == "copy" and s.copy.length - 1 > self.seq_len:
                raise ValueError(f"copy examples need {s.copy.length - 1} tokens per row "
                                 f"(2*span, after the shift) but seq_len={self.seq_len}")


def _source_seed(seed: int, k: int, salt: int = 0) -> int:
    # SeedSequence decorrelates neighbouring (seed, k) pairs; grain wants < 2**32.
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, k, salt]).generate_state(1)[0])


def _read_options(cfg: DataConfig) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.read_prefetch)


def _has_text(text: str) -> bool:
    # Empty documents would only teach "bos -> eos".
    return bool(text.strip())


def _check_mqar(m: MQARConfig | CopyConfig, tok) -> None:
    m.check_vocab(tok.vocab_size, (tok.bos_id, tok.eos_id, tok.pad_id))


def _synthetic_source(task: MQARConfig | CopyConfig, **kw):
    return (MQARSource if isinstance(task, MQARConfig) else CopySource)(task, **kw)


def _source_rows(cfg: DataConfig, k: int, tok, shard: int = 0) -> grain.IterDataset:
    """Packed, finalized, shuffled training rows of source k, shard `shard` of cfg.num_shards."""
    scfg = cfg.sources[k]
    n_shards = cfg.num_shards
    seed = _source_seed(cfg.seed, k)
    # S=1 keeps the seeds of the unsharded pipeline; shards pack and shuffle with their own.
    local_seed = seed if n_shards == 1 else _source_seed(cfg.seed, k, 3 + shard)
    if scfg.task is not None:
        _check_mqar(scfg.task, tok)
        # Examples are already i.i.d. functions of (seed, index): no shuffle needed.
        ds = grain.MapDataset.source(_synthetic_source(scfg.task, seed=seed, bos_id=tok.bos_id))
        answer_only = getattr(scfg.task, "answer_only_loss", True)
        ds = ds.repeat(cfg.num_epochs)
        if n_shards > 1:
            ds = ds[shard::n_shards]
        ds = ds.map(functools.partial(packing.mqar_lm_example, answer_only_loss=answer_only))
        rows = packing.pack_first_fit(ds.to_iter_dataset(_read_options(cfg)), cfg.seq_len,
                                      num_bins=cfg.packing_bins, seed=local_seed)
    else:
        docs = open_document_source(scfg, "train")
        if len(docs) == 0:
            raise ValueError(f"source {k} ({scfg.kind}, {scfg.paths}) has no training documents")
        ds = grain.MapDataset.source(docs).shuffle(seed=seed).repeat(cfg.num_epochs)
        if n_shards > 1:
            # Positions s, s+S, ... of the (per-epoch reshuffled) order: within every epoch the
            # shards partition the documents; only this shard's documents are ever read.
            ds = ds[shard::n_shards]
        ds = ds.filter(_has_text)
        ds = ds.map(functools.partial(packing.encode_document, tokenizer=tok))
        rows = packing.pack_concat_then_split(ds.to_iter_dataset(_read_options(cfg)), cfg.seq_len)
    rows = rows.map(functools.partial(packing.finalize_row, pad_id=tok.pad_id))
    if cfg.shuffle_window > 1:
        rows = grain.experimental.WindowShuffleIterDataset(
            rows, window_size=cfg.shuffle_window,
            seed=_source_seed(cfg.seed, k, 1) if n_shards == 1 else _source_seed(local_seed, k, 1))
    return rows


def _resolve_processes(process_index: int | None, process_count: int | None, batch_size: int) -> tuple[int, int]:
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if pc < 1 or not 0 <= pi < pc:
        raise ValueError(f"need 0 <= process_index < process_count, got {pi}, {pc}")
    if batch_size % pc:
        raise ValueError(f"global batch_size={batch_size} is not divisible by process_count={pc}")
    return pi, pc


class _TakeRows:
    """Slice rows [start, stop) of every array in a batch (this process's share)."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __call__(self, batch):
        return {k: v[self.start:self.stop] for k, v in batch.items()}


def shard_assignment(num_shards: int, process_index: int, process_count: int
                     ) -> tuple[list[int], int, int]:
    """(shards this process reads, rows [start, stop) it keeps of each shard's batch slice as a
    fraction: start/stop are in units of 1/`share` of the slice, share) - see the module
    docstring. Raises if S and P are neither multiples nor divisors of each other."""
    s, p = num_shards, process_count
    if s % p == 0:
        per = s // p
        return list(range(process_index * per, (process_index + 1) * per)), 0, 1
    if p % s == 0:
        share = p // s
        return [process_index // share], process_index % share, share
    raise ValueError(f"DataConfig.num_shards={s} and process_count={p}: one must be a multiple of "
                     "the other (set data.num_shards to the number of processes or a multiple)")


def _shard_batches(cfg: DataConfig, shard: int, tok) -> grain.IterDataset:
    per_source = [_source_rows(cfg, k, tok, shard) for k in range(len(cfg.sources))]
    if len(per_source) == 1:
        rows = per_source[0]
    else:
        rows = grain.IterDataset.mix(per_source, [s.weight for s in cfg.sources])
    return rows.batch(cfg.batch_size // cfg.num_shards, drop_remainder=True)


class _OwnedShards:
    """What the shard dataset and its iterator both hold: a parent per owned shard (shard id ->
    dataset or iterator, also grain's parents), the shard count S and the row slice taken when
    several processes share a shard. A mixin ahead of the grain base class."""

    def __init__(self, parents: dict[int, Any], num_shards: int, take: _TakeRows | None):
        super().__init__(list(parents.values()))
        self._shards, self._num_shards, self._take = parents, num_shards, take


class _ShardsIterator(_OwnedShards, grain.DatasetIterator):
    """Next batch of every owned shard, concatenated (and sliced when shards are shared);
    state keyed by shard id so it can be merged across processes and split again."""

    def __next__(self):
        parts = [next(it) for it in self._shards.values()]
        batch = parts[0] if len(parts) == 1 else {
            k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._take(batch) if self._take is not None else batch

    def get_state(self) -> dict:
        return {"num_shards": self._num_shards,
                "shards": {str(s): it.get_state() for s, it in self._shards.items()}}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or "shards" not in state:
            raise ValueError("data iterator state has no 'shards' entry (saved by another "
                             "version of the pipeline?)")
        if int(state.get("num_shards", -1)) != self._num_shards:
            raise ValueError(f"data iterator state was saved with num_shards="
                             f"{state.get('num_shards')} but data.num_shards={self._num_shards}")
        missing = [s for s in self._shards if str(s) not in state["shards"]]
        if missing:
            raise ValueError(f"data iterator state lacks shards {missing} "
                             f"(it holds {sorted(state['shards'], key=int)})")
        for s, it in self._shards.items():
            it.set_state(packing.restore_json_state(state["shards"][str(s)]))


class _ShardsDataset(_OwnedShards, grain.IterDataset):
    """The owned shards' batch datasets as one dataset (its iterator: `_ShardsIterator`)."""

    def __iter__(self) -> _ShardsIterator:
        return _ShardsIterator({s: iter(d) for s, d in self._shards.items()},
                               self._num_shards, self._take)


def make_train_dataset(cfg: DataConfig, *, process_index: int | None = None,
                       process_count: int | None = None, tokenizer=None) -> grain.IterDataset:
    """The training pipeline as a grain IterDataset of local batches [B_local, T]."""
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    pi, pc = _resolve_processes(process_index, process_count, cfg.batch_size)
    shards, part, share = shard_assignment(cfg.num_shards, pi, pc)
    take = None
    if share > 1:
        local = cfg.batch_size // cfg.num_shards // share
        if local * share * cfg.num_shards != cfg.batch_size:
            raise ValueError(f"global batch_size={cfg.batch_size} does not split into "
                             f"{cfg.num_shards} shards x {share} processes per shard")
        take = _TakeRows(part * local, (part + 1) * local)
    return _ShardsDataset({s: _shard_batches(cfg, s, tok) for s in shards}, cfg.num_shards, take)


class TrainIterator(grain.DatasetIterator):
    """The pipeline's grain iterator, with a state that survives JSON.

    ``get_state()`` returns ``{"num_shards", "shards": {shard: grain state}}``; ``set_state``
    also accepts it after ``json.loads(json.dumps(state))`` (what grain.checkpoint /
    Orbax store), see ``packing.restore_json_state`` for why that needs care, and accepts
    a state holding more shards than this process reads (the merge over processes).
    """

    def __init__(self, inner: grain.DatasetIterator):
        super().__init__(inner)

    def __next__(self):
        return next(self._parent)

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


def make_train_iterator(cfg: DataConfig, *, process_index: int | None = None,
                        process_count: int | None = None, tokenizer=None) -> TrainIterator:
    """Checkpointable iterator of local training batches (dicts of [B_local, T] arrays).

    process_index/process_count default to jax.process_index()/process_count().
    Use ``it.get_state()`` / ``it.set_state(state)`` to save and resume; the
    state is a JSON-serialisable dict (grain.checkpoint.CheckpointSave works).
    """
    return TrainIterator(iter(make_train_dataset(cfg, process_index=process_index,
                                                 process_count=process_count, tokenizer=tokenizer)))


def make_eval_batches(cfg: DataConfig, n: int, *, process_index: int | None = None,
                      process_count: int | None = None, tokenizer=None) -> list[dict[str, np.ndarray]]:
    """Up to ``n`` fixed held-out LM batches [B_local, T] from the document sources.

    Uses each text-like source's held-out split (``SourceConfig.holdout_fraction``;
    whole plays for shakespeare), in source order, unshuffled, packed exactly like
    training. Synthetic sources (mqar, copy) are skipped (see ``make_task_eval_batches``). Returns
    fewer than n batches if the held-out data runs out; raises if it yields none.
    """
    if n < 1:
        raise ValueError(f"make_eval_batches: n must be >= 1, got {n}")
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    pi, pc = _resolve_processes(process_index, process_count, cfg.batch_size)
    doc_sets = [grain.MapDataset.source(open_document_source(s, "eval"))
                for s in cfg.sources if s.task is None]
    doc_sets = [d for d in doc_sets if len(d)]
    if not doc_sets:
        raise ValueError(
            "make_eval_batches: no held-out documents; set SourceConfig.holdout_fraction > 0 for "
            "text/jsonl/parquet sources (shakespeare always holds out plays)")
    ds = grain.MapDataset.concatenate(doc_sets) if len(doc_sets) > 1 else doc_sets[0]
    ds = ds.filter(_has_text)
    ds = ds.map(functools.partial(packing.encode_document, tokenizer=tok))
    rows = packing.pack_concat_then_split(ds.to_iter_dataset(_read_options(cfg)), cfg.seq_len)
    rows = rows.map(functools.partial(packing.finalize_row, pad_id=tok.pad_id))
    batches = rows.batch(cfg.batch_size, drop_remainder=True)
    local = cfg.batch_size // pc
    out = []
    for b in batches:
        out.append(_TakeRows(pi * local, (pi + 1) * local)(b))
        if len(out) == n:
            break
    if not out:
        raise ValueError(
            f"make_eval_batches: held-out data fills fewer than one batch of "
            f"{cfg.batch_size} x {cfg.seq_len} tokens; raise holdout_fraction or lower batch_size")
    return out


def make_mqar_eval_batches(cfg: DataConfig, n: int, *, mqar: MQARConfig | None = None,
                           process_index: int | None = None, process_count: int | None = None,
                           tokenizer=None) -> list[dict[str, np.ndarray]]:
    """``n`` fixed MQAR eval batches [B_local, T], one example per row (padded).

    One example per row keeps the score independent of how a model handles
    packed segments. The loss_mask is 1 exactly at answer targets, as
    ``mqar.mqar_accuracy`` expects. The task shape is ``mqar``, else the first
    MQAR source of ``cfg``, else ``MQARConfig()``; examples use a seed disjoint
    from training's.
    """
    if mqar is None:
        mqar = next((s.mqar for s in cfg.sources if s.kind == "mqar"), None) or MQARConfig()
    return make_task_eval_batches(cfg, n, mqar, process_index=process_index,
                                  process_count=process_count, tokenizer=tokenizer)


def make_task_eval_batches(cfg: DataConfig, n: int, task: MQARConfig | CopyConfig, *,
                           process_index: int | None = None, process_count: int | None = None,
                           tokenizer=None) -> list[dict[str, np.ndarray]]:
    """``n`` fixed eval batches of a synthetic task (MQAR or copy), one example per row,
    loss_mask 1 exactly at the answer targets; seeds disjoint from training's."""
    name = type(task).__name__.removesuffix("Config")
    if n < 1:
        raise ValueError(f"{name} eval batches: n must be >= 1, got {n}")
    if task.length - 1 > cfg.seq_len:
        raise ValueError(f"{name} examples need {task.length - 1} tokens per row but seq_len={cfg.seq_len}")
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
    _check_mqar(task, tok)
    pi, pc = _resolve_processes(process_index, process_count, cfg.batch_size)
    src = _synthetic_source(task, seed=_source_seed(cfg.seed, 0, salt=2), bos_id=tok.bos_id,
                            num_examples=n * cfg.batch_size)
    ds = grain.MapDataset.source(src).map(
        functools.partial(packing.mqar_lm_example, answer_only_loss=True))
    rows = packing.pack_first_fit(ds.to_iter_dataset(_read_options(cfg)), cfg.seq_len,
                                  num_bins=1, seed=0, max_sequences_per_bin=1)
    rows = rows.map(functools.partial(packing.finalize_row, pad_id=tok.pad_id))
    batches = list(rows.batch(cfg.batch_size, drop_remainder=True))
    local = cfg.batch_size // pc
    return [_TakeRows(pi * local, (pi + 1) * local)(b) for b in batches[:n]]
