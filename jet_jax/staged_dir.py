"""Write a model directory so it is never left half-written: fill a temporary sibling, then
move it into place. Shared by the HF writer (`convert.hf.to_hf`) and the Orbax writer
(`checkpoint_io.save_orbax`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Tokenizer / generation files copied through when converting a checkpoint directory.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "generation_config.json")


def refuse_non_empty(path: Path, overwrite: bool) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")


@contextlib.contextmanager
def staged_directory(path: str | os.PathLike, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to fill; on success it replaces `path`, on any
    error it is removed and `path` is untouched. An existing non-empty `path` is refused
    (before anything is written) unless `overwrite`."""
    path = Path(path).absolute()
    refuse_non_empty(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_tokenizer_files(src_dir: str | os.PathLike | None, dst: Path) -> None:
    """Copy whichever of TOKENIZER_FILES exist in `src_dir` (None: nothing) into `dst`."""
    if src_dir is None:
        return
    for name in TOKENIZER_FILES:
        src = Path(src_dir) / name
        if src.is_file():
            shutil.copy2(src, dst / name)
