"""Image data: the Pillow augmentation presets (what each does to the pixels), augmentation on the
train split only, seeded per (seed, epoch, row) so a resume and a re-run see the same pixels and the
global RNGs never move; grayscale / RGBA images converted with one note; the preset parser; the PIL
image processor asked for explicitly; undecodable and oversized images stopped up front."""

from __future__ import annotations

import logging
import os
import random
import warnings

import numpy as np
import pytest
import torch

from fastft.train import image_augment as A
from fastft.train import vision
from fastft.train.config import TrainConfig
from fastft.train.data.loader import make_dataloader
from fastft.train.data.pipeline import prepare_data
from fastft.train.errors import ConfigError, DataError
from fastft.train.vision import (
    augment_image,
    build_augment,
    image_size,
    load_image_processor,
    open_image,
    parse_augment,
    pixel_values,
)
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
    from fastft.train import setup as S
    from fastft.train import trainer as T

    seen = []
    real = S.make_dataloader
    monkeypatch.setattr(
        S, "make_dataloader", lambda *a, **k: seen.append((k["shuffle"], k["augment"])) or real(*a, **k)
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
    from tests.train.test_resume import _stop_at

    stopped = _stop_at(Trainer(cfg("run")), 2)
    assert stopped.train()["interrupted"] == "SIGTERM"
    Trainer(cfg("run", resume="latest")).train()
    assert train_losses(str(tmp_path / "run")) == train_losses(str(tmp_path / "ref"))
    a = load_state_dict_file(str(tmp_path / "run" / "model.safetensors"))
    b = load_state_dict_file(str(tmp_path / "ref" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ augmentation presets
def _noise(h: int = 20, w: int = 30, seed: int = 0):
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _runs(spec: str, image, size=(8, 8), seed: int = 5, epoch: int = 0, rows=range(16)) -> list[np.ndarray]:
    t = build_augment(spec, size)
    return [np.asarray(augment_image(t, image, seed, epoch, r)) for r in rows]


def test_flip_mirrors_pixels_exactly_or_keeps_them():
    image = _noise()
    a = np.asarray(image)
    outs = _runs("flip", image)
    mirrored = [np.array_equal(o, a[:, ::-1]) for o in outs]
    kept = [np.array_equal(o, a) for o in outs]
    assert all(m != k for m, k in zip(mirrored, kept))  # every row: exactly one of the two
    assert any(mirrored) and any(kept)  # p = 1/2 (these seeds are fixed: not flaky)


def test_crop_outputs_the_processor_size_from_random_boxes(ws):
    size = image_size(ws["proc"])
    assert size == (imgdata.SIZE, imgdata.SIZE)
    outs = _runs("crop", _noise(40, 60), size=size)
    assert all(o.shape == (*size, 3) for o in outs)
    assert len({o.tobytes() for o in outs}) == len(outs)  # a new box per row
    assert np.asarray(build_augment("crop", (8, 12))(_noise())).shape == (8, 12, 3)  # (height, width)
    for w, h in ((1000, 10), (10, 1000), (1, 1), (37, 23)):  # every box lies inside the image
        for r in range(20):
            left, top, bw, bh = A.crop_box(w, h, random.Random(r))
            assert 0 <= left and 0 <= top and 0 < bw and 0 < bh and left + bw <= w and top + bh <= h


def test_rotate_by_a_fixed_angle_and_the_preset_range():
    from PIL import Image

    square = _noise(16, 16)
    assert np.array_equal(
        np.asarray(A.rotate(square, 90)), np.asarray(square.transpose(Image.Transpose.ROTATE_90))
    )
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    turned = np.asarray(A.rotate(white, 45))
    assert turned[0, 0].tolist() == [0, 0, 0] and turned[16, 16].tolist() == [255, 255, 255]  # black corners
    assert all(np.array_equal(o, np.asarray(white)) for o in _runs("rotate=0", white))  # rotate=0: no-op
    outs = _runs("rotate=30", white)
    assert all(o[16, 16].tolist() == [255, 255, 255] for o in outs)  # about the centre
    assert sum(o[0, 0].tolist() == [0, 0, 0] for o in outs) > len(outs) // 2  # corners leave the frame


def test_color_jitter_changes_statistics_and_hue_rotates():
    from PIL import Image

    image = _noise(24, 24)
    a = np.asarray(image).astype(float)
    for o in _runs("color", image):
        assert o.shape == a.shape
        assert abs(o.mean() - a.mean()) > 0.5 or abs(o.std() - a.std()) > 0.5
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    r, g, b = np.asarray(A.adjust_hue(red, 1 / 3))[0, 0].tolist()  # a third of the circle: red -> green
    assert g > 200 and r < 20 and b < 20
    assert A.adjust_hue(red, 0.0) is red


def test_randaugment_seeded_per_sample_and_every_op_runs():
    image = _noise(24, 24)
    first = _runs("randaugment", image)
    assert all(np.array_equal(a, b) for a, b in zip(first, _runs("randaugment", image)))  # same seeds
    other = _runs("randaugment", image, seed=6)
    assert sum(not np.array_equal(a, b) for a, b in zip(first, other)) > len(first) // 2  # other seed
    assert len({o.tobytes() for o in first}) > len(first) // 2  # rows differ too
    a = np.asarray(image)
    for name in A.RANDAUGMENT_OPS:
        out = A.randaugment_op(image, name)
        assert out.size == image.size and out.mode == "RGB", name
        assert np.array_equal(np.asarray(out), a) == (name in ("identity", "autocontrast")), name
    for name in ("shear_x", "translate_y", "rotate", "brightness"):  # signed ops: the sign matters
        plus, minus = (np.asarray(A.randaugment_op(image, name, sign=s)) for s in (1, -1))
        assert not np.array_equal(plus, minus), name


def test_augment_image_is_a_pure_function_of_seed_epoch_row():
    image = _noise()
    t = build_augment("flip,crop,rotate=20,color,randaugment", (8, 8))
    torch.manual_seed(123)
    np.random.seed(9)
    random.seed(4)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    runs = [[np.asarray(augment_image(t, image, 7, e, r)) for r in range(6)] for e in (0, 0, 1)]
    assert torch.equal(torch.get_rng_state(), states[0])  # no global RNG read or moved
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert all(not np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))  # a new epoch, new draws
    reversed_rows = [np.asarray(augment_image(t, image, 7, 0, r)) for r in reversed(range(6))]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], reversed(reversed_rows)))  # order-free
    assert augment_image(None, image, 7, 0, 0) is image


# -------------------------------------------------------------------------------------- image processors
def test_image_processor_pil_backend_asked_explicitly(monkeypatch):
    monkeypatch.setattr(vision, "_torchvision_works", lambda: True)
    assert vision.processor_backend_kwargs() == {}  # torchvision importable: transformers' default
    monkeypatch.setattr(vision, "_torchvision_works", lambda: False)
    has_backends = vision.importlib.util.find_spec("transformers.image_processing_backends") is not None
    assert vision.processor_backend_kwargs() == ({"backend": "pil"} if has_backends else {"use_fast": False})
    monkeypatch.setattr(vision.importlib.util, "find_spec", lambda name: None)  # no backend classes
    assert vision.processor_backend_kwargs() == {"use_fast": False}


def test_image_processor_loads_without_a_fallback_warning(ws):
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: transformers' default backend is used")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        proc = load_image_processor(str(ws["d"] / "vit"))
    finally:
        logger.removeHandler(handler)
    assert not [m for m in records if "torchvision" in m or "falling back" in m.lower()], records
    assert type(proc).__name__ in ("ViTImageProcessorPil", "ViTImageProcessor")


# ------------------------------------------------------------------------------------------ large images
def test_large_images_one_note_no_warning_and_huge_ones_stop(ws, tmp_path, monkeypatch, caplog):
    """Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that: one counted note for the
    first, a DataError naming the file (once) for the second; no DecompressionBombWarning leaks."""
    from PIL import Image

    folder = imgdata.image_folder(str(tmp_path / "imgs"), per_class=4)  # 20 x 20 = 400 pixels each
    cfg = TrainConfig(task="image_classification", train_file=folder)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.WARNING, logger="fastft"):
        warnings.simplefilter("always")
        data = prepare_data(cfg, ws["proc"])
        assert (
            next(iter(_loader(ws, data.splits["train"], train=True, augment="flip")))["pixel_values"].ndim
            == 4
        )
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    notes = [r.getMessage() for r in caplog.records if "over Pillow's limit of 300 pixels" in r.getMessage()]
    assert len(notes) == 1 and "12 images" in notes[0] and "20x20" in notes[0], notes
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150)
    with pytest.raises(DataError, match=r"too large to decode safely \(Image size \(400 pixels\)") as e:
        prepare_data(cfg, ws["proc"])
    assert str(e.value).count(os.path.join("blue", "0.png")) == 1, str(e.value)
