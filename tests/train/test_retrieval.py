"""Retrieval metrics on a tiny hand-computed example (2-D embeddings at known angles)."""

from __future__ import annotations

import math

import pytest
import torch

from fastft.train.retrieval import retrieval_metrics, top_k, zero_shot_accuracy, zero_shot_prompts


def _at(*degrees: float, scale: float = 1.0) -> torch.Tensor:
    r = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([r.cos(), r.sin()], 1) * scale


# images A=0, B=90, C=180, D=97 degrees; captions a=170, b=20, c=95, d=185 degrees.
# rows (image, caption): (A,a) (A,b) (B,c) (C,d) (D,c) -- A has two captions, "c" belongs to B and D.
ANGLE = {"A": 0, "B": 90, "C": 180, "D": 97, "a": 170, "b": 20, "c": 95, "d": 185}
ROWS = [("A", "a"), ("A", "b"), ("B", "c"), ("C", "d"), ("D", "c")]


def _rows(scale_img=1.0):
    img = _at(*(ANGLE[i] for i, _ in ROWS), scale=scale_img)
    txt = _at(*(ANGLE[c] for _, c in ROWS))
    return img, txt, [i for i, _ in ROWS], [c for _, c in ROWS]


def test_recall_with_duplicate_images_and_captions_by_hand():
    img, txt, keys, caps = _rows(scale_img=3.0)  # the norm must not matter
    m = retrieval_metrics(img, txt, keys, caps, ks=(1, 3, 4))
    # image -> text: A's nearest caption is b (one of A's), B->c, C->d, D->c: every image hits at 1.
    assert m["i2t_recall@1"] == 1.0
    # text -> image: a (170) ranks C, D, B, A -> its image A is 4th; b->A, c->D (D has c), d->C hit.
    assert m["t2i_recall@1"] == 0.75
    assert m["t2i_recall@3"] == 0.75
    assert m["t2i_recall@4"] == 1.0
    assert m["mean_recall@1"] == pytest.approx(0.875)


def test_recall_without_grouping_counts_every_row():
    img, txt, _, _ = _rows()
    m = retrieval_metrics(img, txt, ks=(1, 2))
    # rows 0 and 1 are both image A (same embedding): row 0's only caption is a, but b ranks first;
    # row 1's top caption b is its own.
    i2t = top_k(img, txt, 1)[1][:, 0].tolist()
    assert i2t[0] != 0 and i2t[1] == 1
    assert m["i2t_recall@1"] <= 0.8  # row 0 misses (grouped by image it was a hit)


def test_zero_shot_accuracy_by_hand():
    classes = _at(0, 90, 180)
    images = _at(10, 80, 170, 100, 45)
    labels = torch.tensor([0, 1, 2, 2, -1])  # -> predicted 0, 1, 2, 1; the last row has no class
    assert zero_shot_accuracy(images, classes, labels) == 0.75
    assert zero_shot_prompts(["cat", "dog"], "a photo of a {}.") == ["a photo of a cat.", "a photo of a dog."]
    with pytest.raises(ValueError, match="prompt-template"):
        zero_shot_prompts(["cat"], "no placeholder")


def test_chunked_topk_equals_full(monkeypatch):
    from fastft.train import retrieval

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(37, 5, generator=g), torch.randn(23, 5, generator=g)
    full = top_k(q, k, 4)
    monkeypatch.setattr(retrieval, "_CHUNK", 8)
    chunked = top_k(q, k, 4)
    assert torch.equal(full[1], chunked[1])
