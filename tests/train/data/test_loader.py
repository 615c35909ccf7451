"""Every batch carries its rows' dataset indices and which rows only pad the order (``repeat``)."""

from __future__ import annotations

from types import SimpleNamespace

import datasets
import torch

from fastft.train.data import make_dataloader

TOK = SimpleNamespace(pad_token_id=0, eos_token_id=None, padding_side="right")


def _ds(n):
    return datasets.Dataset.from_dict(
        {"input_ids": [[100 + i] * (1 + i % 3) for i in range(n)], "labels": [i % 2 for i in range(n)]}
    )


def test_eval_batches_carry_index_and_repeat_flags():
    n, seen, repeats = 7, [], []
    for rank in range(2):
        loader = make_dataloader(
            _ds(n), TOK, batch_size=2, shuffle=False, seed=0, task="classification", rank=rank, world_size=2
        )
        for b in loader:
            assert torch.equal(b["input_ids"][:, 0], 100 + b["index"])  # index = the row's dataset row
            seen += b["index"][~b["repeat"]].tolist()
            repeats += b["index"][b["repeat"]].tolist()
    assert sorted(seen) == list(range(n))  # every real row once
    assert repeats == [0]  # 7 rows padded to 8: the first row again, flagged


def test_one_process_and_training_have_no_repeat_rows():
    ds = _ds(9)
    ev = list(make_dataloader(ds, TOK, batch_size=4, shuffle=False, seed=0, task="classification"))
    assert torch.cat([b["index"] for b in ev]).tolist() == list(range(9))
    tr = make_dataloader(
        ds, TOK, batch_size=4, shuffle=True, seed=1, task="classification", rank=0, world_size=2
    )
    assert not any(bool(b["repeat"].any()) for b in tr)
    assert all(b["labels"].dtype == torch.long for b in tr)
