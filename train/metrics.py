"""Metric sinks: TensorBoard (tensorboardX) and a JSONL file, written by process 0 only.

Each `write(step, metrics, prefix)` appends one JSON line {"step", "kind": prefix, ...} and
one TensorBoard scalar per metric (`prefix/name`). The JSONL file is flushed per line, so
a killed run leaves every completed record readable (the resume test relies on that).
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax
import numpy as np


def _to_float(v) -> float:
    return float(np.asarray(jax.device_get(v)))


class MetricsWriter:
    def __init__(self, directory: str | os.PathLike, *, tensorboard: bool = True,
                 jsonl_name: str = "metrics.jsonl"):
        self.enabled = jax.process_index() == 0
        self.directory = os.fspath(directory)
        self._tb = None
        self._jsonl = None
        if not self.enabled:
            return
        os.makedirs(self.directory, exist_ok=True)
        self.jsonl_path = os.path.join(self.directory, jsonl_name)
        self._jsonl = open(self.jsonl_path, "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(logdir=os.path.join(self.directory, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, object], prefix: str = "train") -> dict:
        values = {k: _to_float(v) for k, v in metrics.items()}
        if not self.enabled:
            return values
        record = {"step": int(step), "kind": prefix, "time": time.time(), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{prefix}/{k}", v, int(step))
        return values

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, text, step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def read_jsonl(path: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """Records of a metrics.jsonl (optionally only one `kind`); a torn last line is skipped."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
    return out
