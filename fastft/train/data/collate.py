"""The collates of the loader: a batch's dataset rows -> model input tensors (+ ``labels``).

:class:`TextCollator` pads tokenized rows (and applies token dropout); :class:`ImageCollator` decodes,
augments and processes image references. Which one a task's batches use is its input kind's choice
(:meth:`fastft.train.data.modalities.Modality.collator`). ``task``: a
:class:`~fastft.train.tasks.base.Task` (its ``collate_labels`` / ``collate_inputs``; tasks are a layer up).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MODEL_COLUMNS", "TextCollator", "ImageCollator", "seeded_rng"]

MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def seeded_rng(*keys: int) -> np.random.Generator:
    """A numpy generator seeded by ``keys`` (each taken mod 2**32)."""
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


class TextCollator:
    """Pads the model columns of a batch (dynamic or to ``max_length``), applies token dropout and
    asks the task for the ``labels`` tensor."""

    def __init__(
        self,
        tokenizer,
        task,
        pad_to_max_length: bool,
        max_length: int | None,
        token_dropout: float,
        seed: int,
        epoch: int,
    ):
        self.task = task
        self.pad_to_max_length, self.max_length = pad_to_max_length, max_length
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.left = getattr(tokenizer, "padding_side", "right") == "left"
        self.token_dropout, self.seed, self.epoch = float(token_dropout), seed, epoch
        if self.token_dropout > 0:
            rep = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.mask_token_id
            if rep is None:
                raise ValueError("token_dropout needs a tokenizer with an unk or mask token")
            self.replace_id = int(rep)
            self.special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)

    def _pad(self, feats: dict[str, list]) -> dict[str, np.ndarray]:
        seqs = feats["input_ids"]
        longest = max(len(s) for s in seqs)
        if self.pad_to_max_length:
            width = self.max_length or longest
        else:
            width = min(longest, self.max_length) if self.max_length else longest
        out = {}
        for k in MODEL_COLUMNS:
            if k not in feats:
                continue
            arr = np.full((len(seqs), width), self.pad_id if k == "input_ids" else 0, dtype=np.int64)
            for i, s in enumerate(feats[k]):
                s = s[:width]
                if self.left:
                    arr[i, width - len(s) :] = s
                else:
                    arr[i, : len(s)] = s
            out[k] = arr
        if "attention_mask" not in out:
            lens = np.array([min(len(s), width) for s in seqs])
            cols = np.arange(width)[None, :]
            out["attention_mask"] = (
                (cols >= width - lens[:, None]) if self.left else (cols < lens[:, None])
            ).astype(np.int64)
        return out

    def __call__(self, feats: dict[str, list], batch_id: int, rows=None) -> dict[str, torch.Tensor]:
        out = self._pad(feats)
        labels = self.task.collate_labels(feats, out, self.left)  # before dropout: LM targets stay intact
        if self.token_dropout > 0:
            ids = out["input_ids"]
            rng = seeded_rng(self.seed, self.epoch, batch_id, 0xD80)
            cand = (out["attention_mask"] == 1) & ~np.isin(ids, self.special)
            drop = cand & (rng.random(ids.shape) < self.token_dropout)
            ids[drop] = self.replace_id
        batch = {k: torch.from_numpy(v) for k, v in out.items()}
        if isinstance(labels, dict):  # a task's labels plus its per-token bookkeeping (e.g. word_start)
            batch.update(labels)
        elif labels is not None:
            batch["labels"] = labels
        return batch


class ImageCollator:
    """Image modalities: decodes each row's image (Pillow, RGB), applies the train-split augmentation
    seeded by (seed, epoch, dataset row), and asks the task for the model inputs and labels."""

    def __init__(self, processor, task, augment: str | None, seed: int, epoch: int):
        from fastft.train import vision

        self.vision, self.processor, self.task, self.seed, self.epoch = vision, processor, task, seed, epoch
        self.transform = vision.build_augment(augment, vision.image_size(processor)) if augment else None

    def __call__(self, feats: dict[str, list], batch_id: int, rows: list[int]) -> dict[str, torch.Tensor]:
        v = self.vision
        images = [
            v.augment_image(self.transform, v.open_image(ref), self.seed, self.epoch, row)
            for ref, row in zip(feats["image_ref"], rows)
        ]
        batch = dict(self.task.collate_inputs(images, feats, self.processor))
        labels = self.task.collate_labels(feats, batch, False)
        if isinstance(labels, dict):
            batch.update(labels)
        elif labels is not None:
            batch["labels"] = labels
        return batch
