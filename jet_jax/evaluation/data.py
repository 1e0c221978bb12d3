"""Local evaluation files: texts for perplexity (.txt, .jsonl, .parquet) and multiple-choice
tasks (.jsonl lines {"context": str, "choices": [str, ...], "label": int}).

A bad file is refused before any scoring with one line naming the file and line."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path


class TaskFileError(ValueError):
    """An evaluation file that cannot be used as given."""


def read_texts(path: str | os.PathLike, *, text_key: str = "text") -> list[str]:
    """Documents of a text file (one document), JSONL (field `text_key` of each line) or
    parquet (column `text_key`)."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        if text_key not in table.column_names:
            raise TaskFileError(f"{path}: no column {text_key!r} (columns: {table.column_names})")
        texts = [t for t in table.column(text_key).to_pylist()]
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TaskFileError(f"{path}: row {bad[0]} of column {text_key!r} is not a string")
    elif path.suffix == ".jsonl":
        texts = []
        for n, record in _jsonl(path):
            if not isinstance(record.get(text_key), str):
                raise TaskFileError(f"{path}:{n}: missing string field {text_key!r}")
            texts.append(record[text_key])
    else:
        texts = [path.read_text(encoding="utf-8")]
    if not any(texts):
        raise TaskFileError(f"{path}: no text")
    return texts


def _jsonl(path: Path):
    """(1-based line number, dict) of every non-blank line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFileError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise TaskFileError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
            yield n, record


@dataclasses.dataclass(frozen=True)
class MCExample:
    context: str
    choices: tuple[str, ...]
    label: int
    line: int = 0  # 1-based line of the task file (0: built in code)


def read_mc_jsonl(path: str | os.PathLike) -> list[MCExample]:
    """Validated multiple-choice examples; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: no such file")
    out = []
    for n, r in _jsonl(path):
        where = f"{path}:{n}"
        missing = [k for k in ("context", "choices", "label") if k not in r]
        if missing:
            raise TaskFileError(f"{where}: missing key(s) {missing}")
        if not isinstance(r["context"], str):
            raise TaskFileError(f"{where}: 'context' must be a string")
        choices = r["choices"]
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c for c in choices)):
            raise TaskFileError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
        label = r["label"]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise TaskFileError(f"{where}: label {label!r} is out of range for {len(choices)} choices")
        out.append(MCExample(r["context"], tuple(choices), label, n))
    if not out:
        raise TaskFileError(f"{path}: no examples (the file is empty)")
    return out
