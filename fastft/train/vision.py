"""Images for the trainer: torchvision import, augmentation presets, lazy decoding, image processors.

Reusable pieces (image classification and the image-text tasks both call them):

* :func:`import_torchvision` -- ``torchvision.transforms.v2``, importable even when torchvision's
  compiled ops do not match this torch build (see :mod:`fastft._compat`).
* :func:`parse_augment` / :func:`build_augment` -- ``--augment flip,crop,rotate,color,randaugment``
  (comma combinations, ``rotate=30`` sets the degrees) -> one ``v2.Compose`` on PIL images.
* :func:`augment_image` -- one sample's transform, seeded by (run seed, epoch, dataset row): the same
  row in the same epoch gets the same pixels whatever the batch, worker or resume point.
* :func:`open_image` -- decode one image reference (a path or encoded bytes) to RGB with Pillow.
* :func:`load_image_processor` / :func:`pixel_values` -- the model's ``AutoImageProcessor`` (resize +
  normalise) and its call on a list of PIL images -> (B, C, H, W) float tensor.

Images are decoded only in the loader's collate, one batch at a time; the datasets hold references.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fastft.train.errors import ConfigError, DataError, first_line

__all__ = [
    "IMAGE_PRESETS",
    "TEXT_PRESETS",
    "import_torchvision",
    "parse_augment",
    "check_augment",
    "build_augment",
    "augment_image",
    "open_image",
    "image_size",
    "load_image_processor",
    "pixel_values",
]

log = logging.getLogger("fastft")

#: ``--augment`` presets for image tasks (train split only) and for text tasks.
IMAGE_PRESETS = ("flip", "crop", "rotate", "color", "randaugment")
TEXT_PRESETS = ("eda",)
_DEFAULT_DEGREES = 15.0


def import_torchvision():
    """``torchvision.transforms.v2``; one line naming the fix when torchvision is missing."""
    from fastft._compat import repair_torchvision

    repair_torchvision()
    try:
        from torchvision.transforms import v2
    except Exception as e:  # noqa: BLE001 - ImportError or a broken build
        raise ConfigError(
            f"--augment needs torchvision ({first_line(e, 120)}); run scripts/setup.sh, which installs "
            "the torchvision that matches the installed torch"
        ) from None
    return v2


def parse_augment(spec: str | None) -> list[tuple[str, float | None]]:
    """``"flip,rotate=30"`` -> ``[("flip", None), ("rotate", 30.0)]``; unknown names -> ConfigError."""
    if spec is None or not str(spec).strip() or str(spec).strip().lower() == "none":
        return []
    out = []
    for part in str(spec).lower().split(","):
        name, _, value = part.strip().partition("=")
        if name not in IMAGE_PRESETS + TEXT_PRESETS:
            raise ConfigError(
                f"unknown augment {name!r}: images take {', '.join(IMAGE_PRESETS)} (combined with "
                "commas), texts take eda"
            )
        if value and name != "rotate":
            raise ConfigError(f"--augment: only rotate takes a value (rotate=DEGREES), not {part.strip()!r}")
        try:
            out.append((name, float(value) if value else None))
        except ValueError:
            raise ConfigError(f"--augment {part.strip()!r}: the degrees must be a number") from None
    return out


def check_augment(spec: str | None, modality: str) -> list[tuple[str, float | None]]:
    """The presets of ``spec`` for a task of ``modality``; text presets on images (and the reverse)
    raise ConfigError naming the presets that fit."""
    presets = parse_augment(spec)
    names = [n for n, _ in presets]
    if modality == "text" and any(n in IMAGE_PRESETS for n in names):
        raise ConfigError(
            f"--augment {spec}: {', '.join(n for n in names if n in IMAGE_PRESETS)} augment images, "
            "and this is a text task; use --augment eda or drop --augment"
        )
    if modality != "text" and any(n in TEXT_PRESETS for n in names):
        raise ConfigError(
            f"--augment {spec}: eda edits texts, and this is an image task; use "
            f"{', '.join(IMAGE_PRESETS)} (combined with commas)"
        )
    return presets


def build_augment(spec: str | None, size: tuple[int, int]) -> Callable | None:
    """The train-split transform of ``spec`` on PIL images (``None`` without presets). ``size``:
    the processor's input size, the output size of ``crop`` (RandomResizedCrop)."""
    presets = check_augment(spec, "image")
    if not presets:
        return None
    v2 = import_torchvision()
    steps = []
    for name, value in presets:
        if name == "flip":
            steps.append(v2.RandomHorizontalFlip())
        elif name == "crop":
            steps.append(v2.RandomResizedCrop(size, antialias=True))
        elif name == "rotate":
            steps.append(v2.RandomRotation(value if value is not None else _DEFAULT_DEGREES))
        elif name == "color":
            steps.append(v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1))
        else:
            steps.append(v2.RandAugment())
    return v2.Compose(steps)


def sample_seed(seed: int, epoch: int, row: int) -> int:
    """The torch seed of one sample's transform: a pure function of (run seed, epoch, dataset row)."""
    keys = [int(k) & 0xFFFFFFFF for k in (seed, epoch, row, 0x1A6E)]
    return int(np.random.SeedSequence(keys).generate_state(1, dtype=np.uint64)[0] >> 1)


def augment_image(transform: Callable | None, image, seed: int, epoch: int, row: int):
    """``transform(image)`` under the torch RNG seeded by :func:`sample_seed` (the global RNG state is
    restored afterwards, so augmentation never shifts dropout or shuffling)."""
    if transform is None:
        return image
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sample_seed(seed, epoch, row))
        return transform(image)


def open_image(ref: Any):
    """An image reference (a file path, encoded bytes, or an HF ``{"bytes", "path"}`` dict) as an RGB
    PIL image. Grayscale / RGBA / palette images are converted (the data check noted them once)."""
    from PIL import Image

    if isinstance(ref, dict):
        ref = ref.get("bytes") or ref.get("path")
    src = io.BytesIO(ref) if isinstance(ref, (bytes, bytearray)) else ref
    with Image.open(src) as im:
        return im.convert("RGB")


def image_size(processor) -> tuple[int, int]:
    """(height, width) the processor feeds the model (crop size if it crops, else its resize size)."""
    proc = getattr(processor, "image_processor", processor)
    for attr in ("crop_size", "size"):
        s = getattr(proc, attr, None)
        if s is None:
            continue
        if isinstance(s, int):
            return (s, s)
        s = dict(s) if not isinstance(s, dict) else s
        if "height" in s and "width" in s:
            return (int(s["height"]), int(s["width"]))
        if "shortest_edge" in s:
            return (int(s["shortest_edge"]), int(s["shortest_edge"]))
    return (224, 224)


def load_image_processor(path: str):
    """The model's ``AutoImageProcessor`` (one line naming the fix when the folder has none)."""
    from fastft._compat import repair_torchvision

    repair_torchvision()  # fast image processors import torchvision
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"cannot load an image processor from {path!r} ({first_line(e, 160)}); the model folder needs "
            "its preprocessor_config.json (save the processor with the model)"
        ) from None


def pixel_values(processor, images: Sequence) -> torch.Tensor:
    """(B, C, H, W) float32 model input of a list of RGB PIL images (resize + normalise by the
    processor; an ``AutoProcessor`` is asked through its ``image_processor``)."""
    proc = getattr(processor, "image_processor", processor)
    try:
        out = proc(images=list(images), return_tensors="pt")
    except Exception as e:  # noqa: BLE001
        raise DataError(f"the image processor failed on a batch ({first_line(e, 160)})") from None
    return out["pixel_values"].float()
