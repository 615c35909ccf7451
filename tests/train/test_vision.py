"""Image data: augmentation on the train split only, seeded per (seed, epoch, row) so a resume and a
re-run see the same pixels; grayscale / RGBA images converted with one note; the preset parser."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from fastft.train.config import ConfigError, TrainConfig
from fastft.train.data import make_dataloader, prepare_data
from fastft.train.vision import build_augment, load_image_processor, open_image, parse_augment, pixel_values
from tests.train.tasks import imgdata


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("vision")
    model = imgdata.save_model(str(d / "vit"), "vit", num_labels=3)
    return {
        "d": d,
        "folder": imgdata.image_folder(str(d / "imgs"), per_class=6),
        "proc": load_image_processor(model),
    }


def _data(ws, augment=None):
    cfg = TrainConfig(task="image_classification", train_file=ws["folder"], augment=augment, seed=7)
    return prepare_data(cfg, ws["proc"])


def _loader(ws, ds, *, train, augment, epoch=0, skip=0):
    return make_dataloader(ds, ws["proc"], batch_size=4, shuffle=train, seed=7, task="image_classification",
                           epoch=epoch, skip_batches=skip, augment=augment)  # fmt: skip


def _pixels(loader) -> list[torch.Tensor]:
    return [b["pixel_values"] for b in loader]


def test_augment_train_only_seeded_and_resumable(ws):
    aug = "flip,crop,rotate=20,color"
    data = _data(ws, aug)
    train = data.splits["train"]
    torch.manual_seed(0)
    plain = _pixels(_loader(ws, train, train=True, augment=None))
    after_plain = torch.get_rng_state()
    torch.manual_seed(0)
    first = _pixels(_loader(ws, train, train=True, augment=aug))
    # augmentation never moves the global RNG (the DataLoader's own seed draw is the same either way)
    assert torch.equal(torch.get_rng_state(), after_plain)
    again = _pixels(_loader(ws, train, train=True, augment=aug))
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # same seed -> same pixels
    resumed = _pixels(_loader(ws, train, train=True, augment=aug, skip=1))
    assert all(torch.equal(a, b) for a, b in zip(first[1:], resumed))  # resume mid-epoch: bitwise
    assert not any(torch.equal(a, b) for a, b in zip(first, plain))  # the presets do change pixels
    other_epoch = _pixels(_loader(ws, train, train=True, augment=aug, epoch=1))
    order0 = [b["index"] for b in _loader(ws, train, train=True, augment=None)]
    order1 = [b["index"] for b in _loader(ws, train, train=True, augment=None, epoch=1)]
    by_row0 = {int(i): p for idx, px in zip(order0, first) for i, p in zip(idx, px)}
    by_row1 = {int(i): p for idx, px in zip(order1, other_epoch) for i, p in zip(idx, px)}
    assert (
        sum(torch.equal(by_row0[r], by_row1[r]) for r in by_row0) < len(by_row0) / 2
    )  # new epoch, new draws
    # validation/test: never augmented -- exactly the processor on the decoded file
    val = data.splits["validation"]
    batch = next(iter(_loader(ws, val, train=False, augment=None)))
    refs = [val["image_ref"][int(i)] for i in batch["index"]]
    expected = pixel_values(ws["proc"], [open_image(r) for r in refs])
    assert torch.equal(batch["pixel_values"], expected)
    assert batch["pixel_values"].shape[1:] == (3, imgdata.SIZE, imgdata.SIZE)


def test_train_loader_of_the_trainer_gets_the_presets(ws, tmp_path, monkeypatch):
    """The trainer passes --augment to the train loader only (eval loaders get none)."""
    from fastft.train import trainer as T

    seen = []
    real = T.make_dataloader
    monkeypatch.setattr(
        T, "make_dataloader", lambda *a, **k: seen.append((k["shuffle"], k["augment"])) or real(*a, **k)
    )
    model = imgdata.save_model(str(tmp_path / "m"), "vit", num_labels=3)
    cfg = TrainConfig(task="image_classification", train_file=ws["folder"], model=model, augment="flip",
                      max_steps=1, batch_size=4, output_dir=str(tmp_path / "out"))  # fmt: skip
    T.Trainer(cfg).train()
    assert {a for shuffle, a in seen if shuffle} == {"flip"} and {
        a for shuffle, a in seen if not shuffle
    } == {None}


def test_grayscale_rgba_palette_converted_with_one_note(ws, tmp_path, caplog):
    rng = np.random.default_rng(3)
    root = tmp_path / "modes"
    for c, mode in (("red", "L"), ("green", "RGBA"), ("blue", "P")):
        os.makedirs(root / c)
        for i in range(5):
            imgdata.colour_image(c, rng, mode=mode).save(root / c / f"{i}.png")
    cfg = TrainConfig(task="image_classification", train_file=str(root))
    with caplog.at_level(logging.WARNING, logger="fastft"):
        data = prepare_data(cfg, ws["proc"])
    notes = [r.getMessage() for r in caplog.records if "not RGB" in r.getMessage()]
    assert len(notes) == 1 and "5 grayscale" in notes[0] and "5 RGBA" in notes[0] and "5 palette" in notes[0]
    assert data.report["image_modes"] == {"L": 5, "RGBA": 5, "P": 5}
    batch = next(iter(_loader(ws, data.splits["train"], train=False, augment=None)))
    assert batch["pixel_values"].shape[1] == 3


def test_parse_augment_presets():
    assert parse_augment("flip, rotate=30,randaugment") == [
        ("flip", None),
        ("rotate", 30.0),
        ("randaugment", None),
    ]
    assert parse_augment(None) == [] and parse_augment("none") == []
    for bad, msg in (("blur", "unknown augment"), ("flip=2", "only rotate"), ("rotate=x", "number")):
        with pytest.raises(ConfigError, match=msg):
            parse_augment(bad)
    t = build_augment("crop", (8, 8))
    assert t(open_image_from_array()).size == (8, 8)  # crop outputs the processor's size


def open_image_from_array():
    from PIL import Image

    return Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))


def test_resume_with_augmentation_is_exact(ws, tmp_path):
    """Stopped mid-epoch and resumed: the same augmented pixels, losses and final weights as one run."""
    from fastft.train import Trainer
    from fastft.train.checkpoint import load_state_dict_file
    from tests.train.trainutil import train_losses

    model = imgdata.save_model(str(tmp_path / "m"), "vit", num_labels=3)

    def cfg(out, **kw):
        return TrainConfig(task="image_classification", train_file=ws["folder"], model=model, epochs=2,
                           batch_size=4, lr=3e-3, augment="flip,crop,color", logging_steps=1,
                           save_total_limit=0, output_dir=str(tmp_path / out), **kw)  # fmt: skip

    Trainer(cfg("ref")).train()
    stopped = Trainer(cfg("run"))
    orig = stopped._step

    def step_then_stop(model, window):
        out = orig(model, window)
        if stopped.global_step + 1 == 2:
            stopped.request_stop()
        return out

    stopped._step = step_then_stop
    assert stopped.train()["interrupted"] == "SIGTERM"
    Trainer(cfg("run", resume="latest")).train()
    assert train_losses(str(tmp_path / "run")) == train_losses(str(tmp_path / "ref"))
    a = load_state_dict_file(str(tmp_path / "run" / "model.safetensors"))
    b = load_state_dict_file(str(tmp_path / "ref" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
