"""Tokenization, cached as Arrow files under ``cache_dir`` (default: the HF datasets cache dir +
``/fastft_tokenized``), keyed by the content, the tokenizer (vocab/normalizer/specials), the task's
tokenization and ``max_length``; re-running loads the file instead of tokenizing."""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from typing import Any

__all__ = ["tokenize", "effective_max_length"]

_CACHE_VERSION = "fastft-tok-v1"
_TOK_HASHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tokenizer_hash(tokenizer) -> str:
    """Identity of what the tokenizer produces (vocab, normalizer, specials); memoised per object
    (hashing a 30k vocab costs ~0.2 s) and re-computed when its vocab size or specials change."""
    light = json.dumps(
        [
            type(tokenizer).__name__,
            len(tokenizer),
            str(tokenizer.all_special_tokens),
            getattr(tokenizer, "add_bos_token", None),
            getattr(tokenizer, "add_eos_token", None),
        ]
    )
    try:
        memo = _TOK_HASHES.get(tokenizer)
    except TypeError:  # not weak-referenceable
        memo = None
    if memo is not None and memo[0] == light:
        return memo[1]
    h = hashlib.sha256(light.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # truncation/padding are mutated by every call with truncation=...: not part of identity.
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    digest = h.hexdigest()
    try:
        _TOK_HASHES[tokenizer] = (light, digest)
    except TypeError:
        pass
    return digest


def _content_hash(ds, columns: list[str]) -> str:
    h = hashlib.sha256()
    for c in columns:
        h.update(c.encode())
        # to_pylist: the full column (``ds[c]`` is a lazy Column whose str() is abbreviated).
        h.update(json.dumps(ds.data.column(c).to_pylist(), default=str).encode())
    return h.hexdigest()


def _default_cache_dir(cache_dir: str | None) -> str:
    if cache_dir:
        return os.path.join(cache_dir, "fastft_tokenized")
    import datasets

    return os.path.join(str(datasets.config.HF_DATASETS_CACHE), "fastft_tokenized")


def effective_max_length(tokenizer, max_length: int | None) -> int:
    model_max = getattr(tokenizer, "model_max_length", None) or 512
    if model_max > 100_000:  # "unset" sentinel in HF tokenizers
        model_max = 512
    return int(min(max_length, model_max)) if max_length else int(model_max)


def tokenize(
    ds, tokenizer, text_col: str, pair_col: str | None, max_length: int, task, cache_dir: str | None
) -> tuple[Any, bool]:
    """Tokenize with ``datasets.map(batched=True)`` through ``task.tokenize``; returns (dataset, cache hit)."""
    import datasets

    cols = [c for c in (text_col, pair_col, "labels") if c and c in ds.column_names]
    key = hashlib.sha256(
        json.dumps(
            [
                _CACHE_VERSION,
                _tokenizer_hash(tokenizer),
                text_col,
                pair_col,
                max_length,
                *task.tokenize_key(),
                _content_hash(ds, cols),
                len(ds),
            ]
        ).encode()
    ).hexdigest()[:40]
    folder = _default_cache_dir(cache_dir)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"tok-{key}.arrow")
    if os.path.exists(path):
        try:
            return datasets.Dataset.from_file(path), True
        except Exception:  # a truncated file from a killed run: rebuild it
            os.remove(path)

    def fn(batch):
        return task.tokenize(batch, tokenizer, text_col, pair_col, max_length)

    # The map writes a temp file and renames it, so concurrent ranks / killed runs leave no partial cache.
    tok = ds.map(
        fn,
        batched=True,
        cache_file_name=path,
        load_from_cache_file=False,
        new_fingerprint=key,
        desc="Tokenizing",
    )
    return tok, False
