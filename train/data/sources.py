"""Document sources: random-access collections of text documents for grain.

Each source implements grain's random-access protocol (``__len__`` and
``__getitem__``) and is wrapped with ``grain.MapDataset.source`` by the pipeline,
so grain can shuffle by index, repeat epochs and checkpoint by position without
materialising the corpus.

Document boundaries:
  * text files: one document per file (a play, a book, a web page). Pass
    ``split_on_blank_lines=True`` to instead treat each blank-line-separated
    paragraph of every file as a document (small corpora, one-file datasets).
  * JSONL: one document per non-empty line, the string in field ``field``.
  * parquet: one document per row, the string in column ``field``.

Held-out split: documents are split deterministically by index; with
``holdout_fraction=f`` document i is held out iff floor((i+1) f) > floor(i f),
i.e. every (1/f)-th document, spread evenly over the files rather than taking
the tail of the last file.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

from jet_jax_train.data.copy_task import CopyConfig
from jet_jax_train.data.mqar import MQARConfig

SourceKind = Literal["text", "jsonl", "parquet", "shakespeare", "mqar", "copy"]
_KINDS = ("text", "jsonl", "parquet", "shakespeare", "mqar", "copy")
SYNTHETIC_KINDS = ("mqar", "copy")  # generated examples with an answer mask


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One weighted entry of the training mixture.

    kind: "text" | "jsonl" | "parquet" (need ``paths``), "shakespeare" (the
        embedded default corpus, fetched once), "mqar" (synthetic recall) or "copy"
        (synthetic copying, jet_jax_train.data.copy_task).
    paths: files, directories (text: every ``*.txt`` below it) or glob patterns.
    field: JSONL key / parquet column holding the document text.
    weight: relative sampling weight of this source's packed rows.
    split_on_blank_lines: text only; see module docstring.
    holdout_fraction: fraction of documents reserved for eval (text/jsonl/parquet;
        shakespeare holds out whole plays, mqar and copy use a separate seed).
    max_doc_chars: split longer documents into pieces of at most this many
        characters (at paragraph, else line, boundaries). Packing would split
        them anyway, but as consecutive rows: a 150k-character play then fills
        whole batches by itself. As separate documents the pieces are shuffled
        independently. None = never split; for kind="shakespeare", None means 4096.
    mqar: task shape for kind="mqar".
    copy: task shape for kind="copy".
    """

    kind: SourceKind
    paths: tuple[str, ...] = ()
    field: str = "text"
    weight: float = 1.0
    split_on_blank_lines: bool = False
    holdout_fraction: float = 0.0
    mqar: MQARConfig | None = None
    copy: CopyConfig | None = None
    max_doc_chars: int | None = None

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"SourceConfig.kind must be one of {_KINDS}, got {self.kind!r}")
        if isinstance(self.paths, str):
            # A bare string would be iterated character by character.
            object.__setattr__(self, "paths", (self.paths,))
        else:
            object.__setattr__(self, "paths", tuple(os.fspath(p) for p in self.paths))
        if self.kind in ("text", "jsonl", "parquet") and not self.paths:
            raise ValueError(f"SourceConfig(kind={self.kind!r}) needs at least one path")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"SourceConfig.weight must be a positive finite number, got {self.weight}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"SourceConfig.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.kind == "shakespeare" and self.max_doc_chars is None:
            object.__setattr__(self, "max_doc_chars", 4096)
        if self.max_doc_chars is not None and self.max_doc_chars < 1:
            raise ValueError(f"SourceConfig.max_doc_chars must be None or >= 1, got {self.max_doc_chars}")
        if self.kind == "mqar" and self.mqar is None:
            object.__setattr__(self, "mqar", MQARConfig())
        if self.kind == "copy" and self.copy is None:
            object.__setattr__(self, "copy", CopyConfig())

    @property
    def task(self) -> MQARConfig | CopyConfig | None:
        """The synthetic task shape (kinds "mqar" / "copy"), else None."""
        return self.mqar if self.kind == "mqar" else self.copy if self.kind == "copy" else None


def expand_paths(paths: Sequence[str], suffixes: tuple[str, ...]) -> list[str]:
    """Files named by ``paths`` (files, dirs searched recursively for ``suffixes``,
    or glob patterns), sorted within each entry so the document order is stable."""
    out: list[str] = []
    for p in paths:
        if os.path.isfile(p):
            out.append(p)
        elif os.path.isdir(p):
            found = sorted(
                os.path.join(root, f)
                for root, _, files in os.walk(p) for f in files if f.endswith(suffixes))
            if not found:
                raise FileNotFoundError(f"directory {p!r} contains no files ending in {suffixes}")
            out.extend(found)
        elif glob.has_magic(p):
            found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
            if not found:
                raise FileNotFoundError(f"glob {p!r} matches no files")
            out.extend(found)
        else:
            raise FileNotFoundError(f"data file not found: {p!r}")
    return out


class TextFileSource:
    """Documents from UTF-8 text files (one per file, or per blank-line paragraph)."""

    def __init__(self, paths: Sequence[str], *, split_on_blank_lines: bool = False):
        self.files = expand_paths(paths, (".txt",))
        self.split_on_blank_lines = split_on_blank_lines
        if split_on_blank_lines:
            # Paragraph boundaries are only known after reading, so read eagerly;
            # this mode is meant for small corpora.
            self._docs = [d for f in self.files for d in _paragraphs(_read_text(f))]
            if not self._docs:
                raise ValueError(f"TextFileSource: no non-blank paragraphs in {self.files}")

    def __len__(self) -> int:
        return len(self._docs) if self.split_on_blank_lines else len(self.files)

    def __getitem__(self, index: int) -> str:
        if self.split_on_blank_lines:
            return self._docs[index]
        return _read_text(self.files[index])

    def __repr__(self) -> str:
        return f"TextFileSource({len(self.files)} files, split_on_blank_lines={self.split_on_blank_lines})"


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"text file {path!r} is not valid UTF-8: {e}") from e


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


class JsonlSource:
    """Documents from JSON-lines files: the string at key ``field`` of each line.

    Only byte offsets are kept in memory; lines are parsed on access.
    """

    def __init__(self, paths: Sequence[str], *, field: str = "text"):
        self.files = expand_paths(paths, (".jsonl", ".json"))
        self.field = field
        self._index: list[tuple[int, int]] = []  # (file number, byte offset)
        for fi, path in enumerate(self.files):
            with open(path, "rb") as f:
                off = 0
                for line in f:
                    if line.strip():
                        self._index.append((fi, off))
                    off += len(line)
        if not self._index:
            raise ValueError(f"JsonlSource: no records in {self.files}")
        self[0]  # Fail at construction, not mid-training, on a wrong field name.

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> str:
        fi, off = self._index[index]
        path = self.files[fi]
        with open(path, "rb") as f:
            f.seek(off)
            line = f.readline()
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path!r} at byte {off}: invalid JSON: {e}") from e
        if not isinstance(rec, dict) or self.field not in rec:
            keys = list(rec) if isinstance(rec, dict) else type(rec).__name__
            raise KeyError(f"{path!r} at byte {off}: record has no field {self.field!r} (has {keys})")
        text = rec[self.field]
        if not isinstance(text, str):
            raise ValueError(
                f"{path!r} at byte {off}: field {self.field!r} is {type(text).__name__}, expected str")
        return text

    def __repr__(self) -> str:
        return f"JsonlSource({len(self.files)} files, {len(self)} records, field={self.field!r})"


class ParquetSource:
    """Documents from one string column of parquet files (column kept in Arrow memory)."""

    def __init__(self, paths: Sequence[str], *, field: str = "text"):
        import pyarrow.parquet as pq  # Only needed for this source.

        self.files = expand_paths(paths, (".parquet",))
        self.field = field
        self._columns = []
        for path in self.files:
            names = pq.read_schema(path).names
            if field not in names:
                raise KeyError(f"parquet file {path!r} has no column {field!r} (has {names})")
            self._columns.append(pq.read_table(path, columns=[field]).column(field))
        self._offsets = np.cumsum([0] + [len(c) for c in self._columns])
        if self._offsets[-1] == 0:
            raise ValueError(f"ParquetSource: no rows in {self.files}")

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < len(self):
            raise IndexError(f"ParquetSource index {index} out of range [0, {len(self)})")
        fi = int(np.searchsorted(self._offsets, index, side="right")) - 1
        text = self._columns[fi][index - int(self._offsets[fi])].as_py()
        if not isinstance(text, str):
            raise ValueError(
                f"{self.files[fi]!r} row {index - int(self._offsets[fi])}: column {self.field!r} "
                f"holds {type(text).__name__}, expected str")
        return text

    def __repr__(self) -> str:
        return f"ParquetSource({len(self.files)} files, {len(self)} rows, field={self.field!r})"


class ListSource:
    """An in-memory list of documents (used for the embedded corpus)."""

    def __init__(self, docs: Sequence[str]):
        self._docs = list(docs)

    def __len__(self) -> int:
        return len(self._docs)

    def __getitem__(self, index: int) -> str:
        return self._docs[index]


class SubsetSource:
    """The documents of ``parent`` at ``indices`` (a train or held-out split)."""

    def __init__(self, parent, indices: Sequence[int]):
        self.parent = parent
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.parent[int(self.indices[index])]


class ChunkedSource:
    """``parent``'s documents cut into pieces of at most ``max_chars`` characters.

    Cuts prefer the last blank line, then the last newline, in the second half
    of the window, so pieces end at paragraph boundaries where possible. Each
    document is read once here to index its pieces; only offsets are kept.
    """

    def __init__(self, parent, max_chars: int):
        self.parent = parent
        self.max_chars = max_chars
        pieces = []  # (document index, start, stop)
        for i in range(len(parent)):
            text = parent[i]
            start = 0
            while len(text) - start > max_chars:
                stop = start + max_chars
                lo = start + max_chars // 2
                cut = text.rfind("\n\n", lo, stop)
                if cut < 0:
                    cut = text.rfind("\n", lo, stop)
                cut = stop if cut < 0 else cut + 1
                pieces.append((i, start, cut))
                start = cut
            pieces.append((i, start, len(text)))
        self._pieces = np.asarray(pieces, dtype=np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self._pieces)

    def __getitem__(self, index: int) -> str:
        i, start, stop = (int(x) for x in self._pieces[index])
        return self.parent[i][start:stop]


def holdout_mask(n: int, fraction: float) -> np.ndarray:
    """bool[n]: True for held-out documents, evenly spaced (see module docstring)."""
    i = np.arange(n)
    return np.floor((i + 1) * fraction) > np.floor(i * fraction)


def open_document_source(cfg: SourceConfig, split: Literal["train", "eval"]):
    """Random-access source of document strings for a text-like ``cfg`` and split."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if cfg.kind == "shakespeare":
        from jet_jax_train.data.shakespeare import load_shakespeare  # Network on first use only.

        return ChunkedSource(ListSource(load_shakespeare(split)), cfg.max_doc_chars)
    if cfg.kind == "text":
        src = TextFileSource(cfg.paths, split_on_blank_lines=cfg.split_on_blank_lines)
    elif cfg.kind == "jsonl":
        src = JsonlSource(cfg.paths, field=cfg.field)
    elif cfg.kind == "parquet":
        src = ParquetSource(cfg.paths, field=cfg.field)
    else:
        raise ValueError(f"open_document_source: kind {cfg.kind!r} is not a document source")
    held = holdout_mask(len(src), cfg.holdout_fraction)
    src = SubsetSource(src, np.flatnonzero(held if split == "eval" else ~held))
    # Split after the holdout so all pieces of a document land in the same split.
    return ChunkedSource(src, cfg.max_doc_chars) if cfg.max_doc_chars else src
