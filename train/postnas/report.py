"""PostNAS report: markdown tables and matplotlib PNGs (importance heatmap, hardware scatter,
training curves). Plots use the non-interactive Agg backend (headless machines)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: str | os.PathLike) -> Path:
    """Lay out, write the PNG (creating its folder) and free the figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return str(v)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """rows of dicts -> a GitHub markdown table (columns default: keys of the first row)."""
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out) + "\n"


def plot_importance(only: np.ndarray, drop: np.ndarray, tasks: Sequence[str],
                    path: str | os.PathLike, title: str = "") -> Path:
    """Two task x layer heatmaps: normalized score with only layer i on attention, and the
    drop from all-attention when layer i alone is linear (both in all-linear=0/all-attn=1 units)."""
    plt = _plt()
    only, drop = np.asarray(only), np.asarray(drop)
    L = only.shape[1]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 + 0.6 * L) * 2, 0.9 + 0.55 * len(tasks)))
    for ax, data, name in ((axes[0], only, "score with only layer i = attention"),
                           (axes[1], drop, "drop when only layer i = linear")):
        im = ax.imshow(data, cmap="viridis", aspect="auto")
        ax.set_xticks(range(L))
        ax.set_xlabel("layer")
        ax.set_yticks(range(len(tasks)))
        ax.set_yticklabels(tasks)
        ax.set_title(name, fontsize=9)
        for (t, i), v in np.ndenumerate(data):
            ax.text(i, t, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    fontsize=7, color="w" if not np.isnan(v) else "k")
        fig.colorbar(im, ax=ax, fraction=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def plot_tradeoff(rows: Sequence[Mapping], x: str, y: str, label: str, path: str | os.PathLike,
                  title: str = "", highlight: str | None = None) -> Path:
    """Scatter of rows[x] vs rows[y], each point labelled rows[label]; `highlight` marks one."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        hl = highlight is not None and str(r[label]) == highlight
        ax.scatter(r[x], r[y], s=60 if hl else 25, c="tab:red" if hl else "tab:blue")
        ax.annotate(str(r[label]), (r[x], r[y]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


def plot_curves(curves: Mapping[str, Sequence[Mapping]], key: str, path: str | os.PathLike,
                title: str = "") -> Path:
    """Training curves: {name: history [{"step", key}]} on one axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, hist in curves.items():
        pts = [(h["step"], h[key]) for h in hist if key in h]
        if pts:
            ax.plot(*zip(*pts), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


class Report:
    """Accumulates markdown sections; `write(path)` saves report.md (PNGs are saved by the plots)."""

    def __init__(self, title: str):
        self.parts = [f"# {title}\n"]

    def section(self, title: str, text: str = "") -> "Report":
        self.parts.append(f"\n## {title}\n\n{text}".rstrip() + "\n")
        return self

    def text(self, text: str) -> "Report":
        self.parts.append(text.rstrip() + "\n")
        return self

    def table(self, rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> "Report":
        self.parts.append("\n" + markdown_table(rows, columns))
        return self

    def image(self, path: str | os.PathLike, alt: str, relative_to: str | os.PathLike) -> "Report":
        rel = os.path.relpath(path, relative_to)
        self.parts.append(f"\n![{alt}]({rel})\n")
        return self

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.parts))
        return path
