"""fastft.train.augment (EDA swap/delete/insert) and its use on the train split only."""

import random
from collections import Counter

import numpy as np
import pytest

from fastft.train.augment import augment_rows, eda, random_deletion, random_insertion, random_swap
from fastft.train.config import TrainConfig
from fastft.train.data.pipeline import prepare_data
from fastft.train.errors import DataError
from tests.models import minilm_dir

WORDS = "the quick brown fox jumps over the lazy dog again and again today".split()


def test_random_swap_permutes_words():
    out = random_swap(WORDS, 0.3, random.Random(0))
    assert Counter(out) == Counter(WORDS) and out != WORDS
    assert random_swap(["one"], 0.5, random.Random(0)) == ["one"]


def test_random_deletion_keeps_order_and_at_least_one_word():
    out = random_deletion(WORDS, 0.3, random.Random(1))
    it = iter(WORDS)
    assert all(w in it for w in out)  # an ordered subsequence
    assert 0 < len(out) < len(WORDS)
    assert len(random_deletion(WORDS, 1.0, random.Random(2))) == 1
    assert random_deletion(WORDS, 0.0, random.Random(2)) == WORDS


def test_random_insertion_inserts_in_text_words():
    out = random_insertion(WORDS, 0.25, random.Random(3))
    n = max(1, round(0.25 * len(WORDS)))
    assert len(out) == len(WORDS) + n
    extra = Counter(out) - Counter(WORDS)
    assert sum(extra.values()) == n and set(extra) <= set(WORDS)
    assert not (Counter(WORDS) - Counter(out))  # nothing removed


def test_eda_seeded_and_strength():
    text = " ".join(WORDS)
    assert eda(text, 0.2, random.Random(5)) == eda(text, 0.2, random.Random(5))
    outs = {eda(text, 0.2, random.Random(s)) for s in range(20)}
    assert len(outs) > 10
    # a larger probability changes more words (deletion: fewer survivors on average)
    few = np.mean([len(eda(text, 0.1, random.Random(s), op="delete").split()) for s in range(50)])
    many = np.mean([len(eda(text, 0.5, random.Random(s), op="delete").split()) for s in range(50)])
    assert many < few < len(WORDS)
    with pytest.raises(ValueError, match="augment_prob"):
        eda(text, 1.5, random.Random(0))


def test_augment_rows_deterministic_per_row():
    texts = [" ".join(WORDS[i:]) for i in range(8)]
    a = augment_rows(texts, None, 0.2, seed=1)
    assert a == augment_rows(texts, None, 0.2, seed=1)
    assert a != augment_rows(texts, None, 0.2, seed=2)
    # row i's copy does not depend on the other rows
    assert [c for c in a if c[0] == 3][0][1:] == [
        c for c in augment_rows(texts[:4], None, 0.2, seed=1) if c[0] == 3
    ][0][1:]
    assert all(new != texts[i] for i, new, _ in a)
    pairs = augment_rows(texts, texts[::-1], 0.2, seed=1)
    assert all(p is not None for _, _, p in pairs)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def _cfg(tmp_path, path, **kw):
    base = dict(
        dataset=None,
        train_file=path,
        validation_file=None,
        test_file=None,
        text_column="text",
        text_pair_column=None,
        label_column="label",
        task="auto",
        num_labels=None,
        max_length=32,
        split_ratios=[0.7, 0.2, 0.1],
        split_group_column=None,
        seed=11,
        augment=None,
        augment_prob=0.2,
        token_dropout=0.0,
        cache_dir=str(tmp_path / "c"),
        max_train_samples=None,
        max_eval_samples=None,
    )
    base.update(kw)
    return TrainConfig(**base)  # the real config: its defaults and fields, not a copy


def test_augmentation_changes_train_only_and_is_seeded(tmp_path, tok):
    import pandas as pd

    rng = np.random.default_rng(0)
    recs = [
        {"text": f"r{i} " + " ".join(rng.choice(WORDS, 8)), "label": ["a", "b"][i % 2]} for i in range(60)
    ]
    path = str(tmp_path / "d.csv")
    pd.DataFrame(recs).to_csv(path, index=False)
    base = prepare_data(_cfg(tmp_path, path), tok)
    aug = prepare_data(_cfg(tmp_path, path, augment="eda"), tok)
    again = prepare_data(_cfg(tmp_path, path, augment="eda"), tok)
    for s in ("validation", "test"):
        assert list(aug.splits[s]["text"]) == list(base.splits[s]["text"])
    orig = list(base.splits["train"]["text"])
    new = list(aug.splits["train"]["text"])
    assert new[: len(orig)] == orig  # originals kept, copies appended
    assert aug.report["augmented_rows"] == len(new) - len(orig) > 0.8 * len(orig)
    assert new == list(again.splits["train"]["text"])
    # each copy is the documented EDA copy of its source row and keeps that row's label
    copies = augment_rows(orig, None, 0.2, seed=11)
    assert [c[1] for c in copies] == new[len(orig) :]
    labels = aug.splits["train"]["labels"]
    assert [labels[len(orig) + k] for k in range(len(copies))] == [labels[c[0]] for c in copies]
    with pytest.raises(DataError, match="unknown augment"):
        prepare_data(_cfg(tmp_path, path, augment="backtranslate"), tok)
