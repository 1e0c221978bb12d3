"""Tokenizers: a byte-level default and a wrapper around a local HuggingFace
``tokenizer.json``; used by the data pipeline and by `jet-jax generate`.

Both expose the same small interface (the ``Tokenizer`` protocol) so their users never
need to know which one they have:

        vocab_size: int          # ids are in [0, vocab_size)
        bos_id, eos_id, pad_id: int
        encode(text: str) -> list[int]     # no specials added; packing adds bos/eos
        decode(ids: Sequence[int]) -> str
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import tokenizers


@runtime_checkable
class Tokenizer(Protocol):
    """What the data layer needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 byte-level tokenizer: ids 0..255 are bytes, then pad, bos, eos.

    Needs no files, so the embedded default corpus trains out of the box. Specials
    sit *after* the bytes so that every byte value round-trips. `vocab_size` may be raised
    to a model's (larger, e.g. 512 for the tiny presets) vocabulary: the ids above eos are
    unused and decode to nothing.
    """

    PAD_ID = 256
    BOS_ID = 257
    EOS_ID = 258

    def __init__(self, vocab_size: int = 259):
        if vocab_size < 259:
            raise ValueError(f"ByteTokenizer needs vocab_size >= 259 (bytes + pad/bos/eos), got {vocab_size}")
        self.vocab_size = vocab_size
        self.bos_id, self.eos_id, self.pad_id = self.BOS_ID, self.EOS_ID, self.PAD_ID

    def encode(self, text: str) -> list[int]:
        """text -> list of byte values (specials are never produced)."""
        if not isinstance(text, str):
            raise TypeError(f"ByteTokenizer.encode expects str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        """Fast path for packing: text -> int32[n] without a Python list."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        """ids -> text; specials are dropped, invalid UTF-8 becomes U+FFFD."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ByteTokenizer.decode: ids out of range [0, {self.vocab_size}): {bad[:5]}")
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


# Special-token spellings tried, in order, when neither the caller nor a
# tokenizer_config.json names them. Qwen2.5 uses <|endoftext|> for eos and pad.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[SEP]")
_BOS_CANDIDATES = ("<s>", "<bos>", "<|begin_of_text|>", "<|bos|>", "[CLS]")
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]")


class HFTokenizer:
    """A HuggingFace ``tokenizers`` tokenizer loaded from a local tokenizer.json.

    Special tokens are resolved in this order: explicit arguments, then
    ``tokenizer_config.json`` next to the file (the HF convention), then common
    spellings. Qwen2.5 defines no BOS token; then ``bos_id`` falls back to the
    eos id (<|endoftext|>), which is what Qwen saw between documents during its
    own pretraining, so a leading separator keeps the teacher in-distribution.
    Likewise ``pad_id`` falls back to eos (padding is masked anyway).
    """

    def __init__(self, path: str | os.PathLike, *, bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None,
                 require_eos: bool = True):
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"HFTokenizer: tokenizer file not found: {path!r}")
        try:
            self._tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON.
            raise ValueError(f"HFTokenizer: could not parse {path!r} as a tokenizers JSON: {e}") from e
        self.path = path

        cfg = {}
        cfg_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)

        def from_cfg(key):
            v = cfg.get(key)
            # tokenizer_config may hold {"content": "<s>", ...} instead of a string.
            return v.get("content") if isinstance(v, dict) else v

        eos = self._resolve("eos", eos_token or from_cfg("eos_token"), _EOS_CANDIDATES)
        if eos is None and require_eos:
            raise ValueError(
                f"HFTokenizer: no EOS token found in {path!r}; pass eos_token= explicitly "
                f"(tried tokenizer_config.json and {list(_EOS_CANDIDATES)})")
        bos = self._resolve("bos", bos_token or from_cfg("bos_token"), _BOS_CANDIDATES)
        pad = self._resolve("pad", pad_token or from_cfg("pad_token"), _PAD_CANDIDATES)
        self._eos = eos
        self._bos = eos if bos is None else bos
        self._pad = eos if pad is None else pad  # None only without require_eos

    def _resolve(self, what: str, name: str | None, candidates: Sequence[str]) -> int | None:
        if name is not None:
            i = self._tok.token_to_id(name)
            if i is None:
                raise ValueError(f"HFTokenizer: {what} token {name!r} is not in the vocabulary of {self.path!r}")
            return i
        for c in candidates:
            i = self._tok.token_to_id(c)
            if i is not None:
                return i
        return None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad

    def encode(self, text: str) -> list[int]:
        """text -> ids, without the post-processor's specials (packing adds them)."""
        if not isinstance(text, str):
            raise TypeError(f"HFTokenizer.encode expects str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r})"


def tokenizer_for_model(model_dir: str | os.PathLike | None,
                        vocab_size: int = 259) -> ByteTokenizer | HFTokenizer:
    """The model directory's tokenizer.json if it has one (special tokens optional: generation
    stops on the model config's eos id), else the byte-level tokenizer over the model's
    `vocab_size` ids."""
    if model_dir is not None and os.path.isfile(os.path.join(os.fspath(model_dir), "tokenizer.json")):
        return HFTokenizer(model_dir, require_eos=False)
    return ByteTokenizer(max(vocab_size, 259))


def load_tokenizer(spec: str | os.PathLike) -> ByteTokenizer | HFTokenizer:
    """``"byte"`` -> ByteTokenizer; a tokenizer.json path (or its dir) -> HFTokenizer."""
    if isinstance(spec, str) and spec == "byte":
        return ByteTokenizer()
    p = os.fspath(spec)
    if not (os.path.isfile(p) or os.path.isfile(os.path.join(p, "tokenizer.json"))):
        raise FileNotFoundError(
            f"load_tokenizer: {p!r} is neither 'byte' nor a tokenizer.json file "
            f"(or a directory containing one)")
    return HFTokenizer(p)
