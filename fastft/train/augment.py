"""EDA-style text augmentation for the train split (Wei & Zou, 2019, minus the WordNet synonym parts).

What it does, exactly (``augment="eda"`` with strength ``p = augment_prob``):

* Words are whitespace tokens of the raw text (punctuation stays attached to its word).
* For every train row, ONE augmented copy is appended to the train split (the original is kept,
  so the train split grows by up to 2x; copies identical to their original are not added).
  The copy is made by one operation, chosen uniformly at random:
    - random swap: ``n = max(1, round(p * n_words))`` times, swap two random positions;
    - random deletion: delete each word with probability ``p`` (at least one word survives);
    - random insertion: ``n`` times, insert a copy of a random word *of the same text* at a random
      position (EDA inserts synonyms; we have no thesaurus offline, so we reuse in-text words).
  Sentence pairs: the same operation is applied to each text of the pair independently.
* Everything is seeded: row ``i`` uses ``random.Random`` seeded from ``(seed, i)``, so the result
  does not depend on batching, processes or earlier rows. Validation and test are never touched
  (``prepare_data`` calls this on the train split only, after splitting).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["random_swap", "random_deletion", "random_insertion", "eda", "augment_rows", "OPERATIONS"]

OPERATIONS = ("swap", "delete", "insert")


def _count(p: float, n_words: int) -> int:
    return max(1, round(p * n_words))


def random_swap(words: Sequence[str], p: float, rng: random.Random) -> list[str]:
    """Swap two random positions ``max(1, round(p * len(words)))`` times."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(_count(p, len(out))):
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: Sequence[str], p: float, rng: random.Random) -> list[str]:
    """Drop each word with probability ``p``; never returns an empty list for non-empty input."""
    if len(words) <= 1:
        return list(words)
    out = [w for w in words if rng.random() >= p]
    if not out:  # keep one random word, as EDA does
        out = [words[rng.randrange(len(words))]]
    return out


def random_insertion(words: Sequence[str], p: float, rng: random.Random) -> list[str]:
    """Insert ``max(1, round(p * len(words)))`` copies of random in-text words at random positions."""
    out = list(words)
    if not out:
        return out
    for _ in range(_count(p, len(words))):
        out.insert(rng.randrange(len(out) + 1), words[rng.randrange(len(words))])
    return out


_OPS = {"swap": random_swap, "delete": random_deletion, "insert": random_insertion}


def eda(text: str, p: float, rng: random.Random, op: str | None = None) -> str:
    """Apply one EDA operation (``op`` or a random one) with strength ``p`` to ``text``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augment_prob must be in [0, 1], got {p}")
    op = op or rng.choice(OPERATIONS)
    return " ".join(_OPS[op](text.split(), p, rng))


def _row_rng(seed: int, i: int) -> random.Random:
    # A string seed is hashed deterministically by random.Random (sha512), independent of PYTHONHASHSEED.
    return random.Random(f"fastft-eda:{seed}:{i}")


def augment_rows(
    texts: Sequence[str], pairs: Sequence[str] | None, p: float, seed: int
) -> list[tuple[int, str, str | None]]:
    """Augmented copies for a list of rows: ``[(source_row, new_text, new_pair_or_None), ...]``.

    One copy per row (skipped when it equals the original). Deterministic in ``(seed, row index)``.
    """
    out: list[tuple[int, str, str | None]] = []
    for i, text in enumerate(texts):
        rng = _row_rng(seed, i)
        op = rng.choice(OPERATIONS)
        new_text = eda(text, p, rng, op)
        new_pair = eda(pairs[i], p, rng, op) if pairs is not None else None
        if new_text == text and (pairs is None or new_pair == pairs[i]):
            continue
        out.append((i, new_text, new_pair))
    return out
