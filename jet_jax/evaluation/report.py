"""Results as a text table (one column per model, side by side) and as a JSON file."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Shown in the table (counts like "n"/"tokens" stay in the JSON).
TABLE_METRICS = ("ppl", "bits_per_byte", "nll", "acc", "acc_norm")


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """results: {model name: {task: {metric: value}}} -> aligned table, one row per
    (task, metric), one column per model."""
    models = list(results)
    rows = []
    tasks = list(dict.fromkeys(t for m in models for t in results[m]))
    for task in tasks:
        metrics = list(dict.fromkeys(k for m in models for k in results[m].get(task, {})))
        for metric in (k for k in TABLE_METRICS if k in metrics):
            cells = []
            for m in models:
                v = results[m].get(task, {}).get(metric)
                cells.append("-" if v is None else f"{v:.4f}")
            rows.append([task, metric, *cells])
    header = ["task", "metric", *models]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def write_json(path: str | os.PathLike, results: dict, meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta or {}, "results": results}, indent=2))
    tmp.replace(path)  # never a half-written results file
    return path
