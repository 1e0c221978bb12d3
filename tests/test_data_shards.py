"""Per-process input shards (DataConfig.num_shards): each process reads only its documents,
the processes together consume one epoch exactly, and iterator states restore on another
process count. The pipeline takes process_index/process_count as arguments, so one test
process can play every process of a multi-process run."""

import dataclasses
import json

import numpy as np
import pytest

import jet_jax_train.data.pipeline as pipeline
from jet_jax_train.data import ByteTokenizer, DataConfig, SourceConfig, make_train_iterator
from jet_jax_train.data.pipeline import make_train_dataset, shard_assignment

ROW_KEYS = ("input_ids", "segment_ids", "positions", "targets", "loss_mask")
SEQ = 32


def _exact_row_docs(n):
    """n documents of SEQ-1 bytes: with bos/eos and the shift each is exactly one row."""
    docs = []
    for i in range(n):
        tag = f"<d{i:03d}>"
        docs.append((tag + " lorem ipsum dolor sit amet consectetur")[:SEQ - 1])
    return docs


def _cfg(tmp_path, n_docs=48, **kw):
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for d in _exact_row_docs(n_docs):
            f.write(json.dumps({"text": d}) + "\n")
    base = dict(sources=(SourceConfig("jsonl", paths=(str(path),)),), seq_len=SEQ, batch_size=8,
                shuffle_window=4, num_epochs=1)
    base.update(kw)
    return DataConfig(**base)


class _Recorder:
    """Wraps a document source and records which indices were read."""

    def __init__(self, inner, log):
        self.inner, self.log = inner, log

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.log.append(int(i))
        return self.inner[i]


def _tags(batch):
    tok = ByteTokenizer()
    out = []
    for r in range(batch["input_ids"].shape[0]):
        assert batch["segment_ids"][r].min() == 1  # one full document, no padding
        out.append(tok.decode(batch["input_ids"][r]).split()[0])
    return out


def test_processes_read_disjoint_shards_and_consume_one_epoch_exactly(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, num_shards=2)
    reads: dict[int, list[int]] = {}
    real_open = pipeline.open_document_source
    consumed: dict[int, list[str]] = {}
    for p in range(2):
        reads[p] = []
        monkeypatch.setattr(pipeline, "open_document_source",
                            lambda s, split, _log=reads[p]: _Recorder(real_open(s, split), _log))
        consumed[p] = [t for b in make_train_dataset(cfg, process_index=p, process_count=2)
                       for t in _tags(b)]
    monkeypatch.setattr(pipeline, "open_document_source", real_open)
    every = [f"<d{i:03d}>" for i in range(48)]
    # one epoch exactly: nothing read twice, nothing skipped, over the union of processes
    assert sorted(consumed[0] + consumed[1]) == every
    assert len(consumed[0]) == len(consumed[1]) == 24
    # each process read only its shard's documents (each once), and the shards are disjoint
    assert len(reads[0]) == len(set(reads[0])) == 24 and len(reads[1]) == 24
    assert not set(reads[0]) & set(reads[1])
    assert sorted(reads[0] + reads[1]) == list(range(48))
    # ... and what a process consumed is what it read
    for p in range(2):
        assert sorted(int(t[2:5]) for t in consumed[p]) == sorted(reads[p])


@pytest.mark.parametrize("shards,procs", [(2, 2), (4, 2), (2, 4), (1, 2)])
def test_local_batches_tile_the_global_batch_for_any_process_count(tmp_path, shards, procs):
    cfg = _cfg(tmp_path, num_shards=shards, num_epochs=None)
    glob = make_train_iterator(cfg, process_index=0, process_count=1)
    locs = [make_train_iterator(cfg, process_index=p, process_count=procs) for p in range(procs)]
    for _ in range(8):  # past the end of the first epoch
        g = next(glob)
        parts = [next(it) for it in locs]
        for k in ROW_KEYS:
            assert np.array_equal(np.concatenate([p[k] for p in parts]), g[k]), k


def test_iterator_states_merge_and_restore_on_another_process_count(tmp_path):
    cfg = _cfg(tmp_path, num_shards=2, num_epochs=None)
    its = [make_train_iterator(cfg, process_index=p, process_count=2) for p in range(2)]
    for _ in range(5):
        for it in its:
            next(it)
    states = [json.loads(json.dumps(it.get_state())) for it in its]
    assert [sorted(s["shards"]) for s in states] == [["0"], ["1"]]
    merged = {"num_shards": 2, "shards": {**states[0]["shards"], **states[1]["shards"]}}
    expected = [np.concatenate([b0["input_ids"], b1["input_ids"]])
                for b0, b1 in ((next(its[0]), next(its[1])) for _ in range(4))]
    one = make_train_iterator(cfg, process_index=0, process_count=1)  # 2 processes -> 1
    one.set_state(merged)
    for e in expected:
        assert np.array_equal(next(one)["input_ids"], e)
    # and back: 1 -> 2 processes, each picking its shard out of the merged state
    state1 = json.loads(json.dumps(one.get_state()))
    follow = next(one)["input_ids"]
    two = [make_train_iterator(cfg, process_index=p, process_count=2) for p in range(2)]
    for it in two:
        it.set_state(state1)
    assert np.array_equal(np.concatenate([next(it)["input_ids"] for it in two]), follow)
    with pytest.raises(ValueError, match="num_shards=2 but data.num_shards=4"):
        make_train_iterator(dataclasses.replace(cfg, num_shards=4), process_index=0,
                            process_count=1).set_state(merged)
    with pytest.raises(ValueError, match=r"lacks shards \[1\]"):
        two[1].set_state(states[0])


def test_shard_assignment_and_bad_counts(tmp_path):
    assert shard_assignment(8, 1, 2) == ([4, 5, 6, 7], 0, 1)
    assert shard_assignment(2, 3, 4) == ([1], 1, 2)
    with pytest.raises(ValueError, match="one must be a multiple of the other"):
        shard_assignment(3, 0, 2)
    with pytest.raises(ValueError, match="num_shards=3 must be >= 1 and divide batch_size=8"):
        _cfg(tmp_path, num_shards=3)
