"""Every batch carries its rows' dataset indices and which rows only pad the order (``repeat``)."""

from __future__ import annotations

from types import SimpleNamespace

import datasets
import numpy as np
import torch

from fastft.train.data.loader import make_dataloader

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


def test_length_grouping_draws_new_batches_each_epoch_on_small_data():
    """600 rows at batch 32: mega-batches of 4 batches (HF's rule), so each epoch regroups the rows
    (a single global sort gave the same 19 batches every epoch), while each batch stays length-sorted."""
    from fastft.train.data.loader import global_batch_order, mega_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 250, 600).tolist()
    assert mega_batches(600, 32) == 4 and mega_batches(8530, 32) == 50 and mega_batches(10, 32) == 1
    epochs = [global_batch_order(lengths, 32, shuffle=True, seed=1, epoch=e) for e in range(2)]
    sets = [{frozenset(b) for b in bs} for bs in epochs]
    assert len(sets[0] & sets[1]) <= 2  # almost all batches are new
    for bs in epochs:
        assert sorted(i for b in bs for i in b) == list(range(600))
        spread = np.mean([np.ptp([lengths[i] for i in b]) for b in bs])
        assert spread < 0.5 * np.ptp(lengths)  # still grouped by length
