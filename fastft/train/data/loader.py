"""Deterministic batching: the global batch order, the per-rank view and the collate.

Every batch also carries ``index`` (the dataset row of each of its rows) and ``repeat`` (True for
rows that only pad the order so every rank gets equal full batches under torchrun): evaluation
gathers by ``index`` and leaves ``repeat`` rows out of summed losses.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fastft.train.data.collate import MODEL_COLUMNS, seeded_rng
from fastft.train.data.modalities import modality_of
from fastft.train.tasks import Task, get_task

__all__ = ["global_batch_order", "mega_batches", "make_dataloader", "MODEL_COLUMNS"]


def mega_batches(n: int, batch_size: int) -> int:
    """Batches per length-sorted mega-batch: 50, but at most a quarter of the epoch's batches (at
    least 1), the rule of HF's ``LengthGroupedSampler``. A fixed 50 sorted a small train set (e.g.
    600 rows at batch 32) as ONE mega-batch: every epoch then had the same batches, only reordered,
    and the model learned visibly slower than with HF's fresh batches."""
    return max(1, min(n // (4 * batch_size), 50))


def global_batch_order(
    lengths,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int = 0,
    group_by_length: bool = True,
    world_size: int = 1,
) -> list[list[int]]:
    """The global list of batches (lists of row indices) for one epoch; a pure function of its args.

    shuffle: seeded permutation of (seed, epoch); else file order.
    group_by_length (only with shuffle): mega-batches of ``mega_batches(n, batch_size)`` batches are
    sorted by length (descending), cut into batches, then the batch order is shuffled, seeded by
    (seed, epoch).
    world_size > 1: with shuffle (training), the batches are exactly those of one process and the
    batch *list* is padded by repeating its first batches to a multiple of ``world_size``, so N
    processes see the same global batches as one process with N-fold accumulation. Without
    shuffle (evaluation), the row order is padded by repeating its first rows so every rank gets
    equal full batches (``gather_for_metrics`` drops the repeats).
    """
    n = len(lengths)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    rng = seeded_rng(seed, epoch, 0xBA7C)
    order = rng.permutation(n) if shuffle else np.arange(n)
    if world_size > 1 and n > 0 and not shuffle:
        step = batch_size * world_size
        order = np.resize(order, math.ceil(n / step) * step)  # np.resize repeats cyclically
    if shuffle and group_by_length:
        lens = np.asarray(lengths)[order]
        mega = batch_size * mega_batches(n, batch_size)
        parts = []
        for s in range(0, len(order), mega):
            chunk = order[s : s + mega]
            parts.append(chunk[np.argsort(-lens[s : s + mega], kind="stable")])
        order = np.concatenate(parts) if parts else order
        batches = [order[s : s + batch_size].tolist() for s in range(0, len(order), batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
    else:
        batches = [order[s : s + batch_size].tolist() for s in range(0, len(order), batch_size)]
    if world_size > 1 and shuffle and batches:
        batches += [batches[i % len(batches)] for i in range(-len(batches) % world_size)]
    return batches


class _Batches(torch.utils.data.Dataset):
    """Item ``i`` = the collated ``i``-th remaining batch of this rank (batching happens here, so
    ``DataLoader(batch_size=None)`` just iterates; workers would also be deterministic)."""

    def __init__(
        self, ds, batches: list[list[int]], global_ids: list[int], repeats: list[list[bool]], collate
    ):
        self.ds, self.batches, self.global_ids, self.repeats, self.collate = (
            ds,
            batches,
            global_ids,
            repeats,
            collate,
        )

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batch = self.collate(self.ds[self.batches[i]], self.global_ids[i], self.batches[i])
        batch["index"] = torch.tensor(self.batches[i], dtype=torch.long)
        batch["repeat"] = torch.tensor(self.repeats[i], dtype=torch.bool)
        return batch


def make_dataloader(
    ds,
    tokenizer,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    task: Task | str,
    epoch: int = 0,
    skip_batches: int = 0,
    group_by_length: bool = True,
    pad_to_max_length: bool = False,
    max_length: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    token_dropout: float = 0.0,
    augment: str | None = None,
) -> torch.utils.data.DataLoader:
    """Deterministic DataLoader over a tokenized split, yielding dicts of tensors.

    * Order: :func:`global_batch_order` of ``(seed, epoch)`` (length-grouped when ``shuffle`` and
      ``group_by_length``; file order when not ``shuffle``). Rank ``r`` takes global batches
      ``r, r + W, r + 2W, ...``; with W > 1 the order is padded by repeating rows so every rank
      gets the same number of full batches (eval: those rows have ``repeat`` set).
    * ``skip_batches``: drop this rank's first batches (already consumed before a resume); the
      remaining batches are bitwise the same as in an uninterrupted epoch. ``len(loader)`` is the
      number of batches this loader yields.
    * Padding: to the longest row of the batch (capped at ``max_length``), or to ``max_length``
      with ``pad_to_max_length``; pad id = pad token (else EOS), side = ``tokenizer.padding_side``.
    * ``labels``: what ``task.collate_labels`` makes (long (B,) single-label, float (B, C)
      multi-label, float (B,) regression; causal LM: ``input_ids`` with padding = -100, unshifted).
    * ``index`` / ``repeat``: each row's dataset index, and whether it is order padding.
    * ``token_dropout`` (pass it for the train loader only): each non-special, non-pad token is
      replaced by the unk token (mask token if there is no unk) with this probability, seeded by
      (seed, epoch, global batch index), so resumes see the same masks. Labels keep the original tokens.
    * Image tasks (:mod:`~fastft.train.data.modalities`: input kinds without tokens): ``tokenizer``
      is the image processor (or processor); batches are not length-grouped; each batch's images are decoded here, ``augment`` (the
      ``--augment`` presets; pass it for the train loader only) is applied per row seeded by (seed,
      epoch, dataset row), and ``task.collate_inputs`` makes ``pixel_values`` (+ its text inputs).
    """
    task = get_task(task) if isinstance(task, str) else task
    if not 0 <= token_dropout < 1:
        raise ValueError(f"token_dropout must be in [0, 1), got {token_dropout}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank/world_size: {rank}/{world_size}")
    modality = modality_of(task)
    lengths = modality.batch_lengths(ds)
    if lengths is None:  # no lengths to group by (images): one per row
        lengths, group_by_length = [1] * len(ds), False
    batches = global_batch_order(
        lengths,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        group_by_length=group_by_length,
        world_size=world_size,
    )
    ids = list(range(rank, len(batches), world_size))[max(0, skip_batches) :]
    keep = [
        c
        for c in ds.column_names
        if c in MODEL_COLUMNS or (c == "labels" and task.label_in_dataset) or c in task.batch_columns
    ]
    n = len(ds)
    # eval order padding (no shuffle) sits at positions >= n of the batch-contiguous order
    repeats = [[not shuffle and b * batch_size + j >= n for j in range(len(batches[b]))] for b in ids]
    text_opts = dict(pad_to_max_length=pad_to_max_length, max_length=max_length, token_dropout=token_dropout)
    collate = modality.collator(tokenizer, task, augment=augment, seed=seed, epoch=epoch, **text_opts)
    # with_format(None): python lists whatever format the caller set on the dataset.
    view = _Batches(
        ds.select_columns(keep).with_format(None), [batches[i] for i in ids], ids, repeats, collate
    )
    return torch.utils.data.DataLoader(view, batch_size=None, shuffle=False, num_workers=0)
