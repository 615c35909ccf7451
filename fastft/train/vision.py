"""Images for the trainer: augmentation presets, lazy decoding, image processors.

Reusable pieces (image classification and the image-text tasks both call them):

* :func:`parse_augment` / :func:`build_augment` -- ``--augment flip,crop,rotate,color,randaugment``
  (comma combinations, ``rotate=30`` sets the degrees) -> one :class:`~fastft.train.image_augment.Augment`
  on PIL images (Pillow only; the presets are described in :mod:`fastft.train.image_augment`).
* :func:`augment_image` -- one sample's transform, seeded by (run seed, epoch, dataset row): the same
  row in the same epoch gets the same pixels whatever the batch, worker or resume point.
* :func:`open_image` -- decode one image reference (a path or encoded bytes) to RGB with Pillow.
* :func:`load_image_processor` / :func:`pixel_values` -- the model's ``AutoImageProcessor`` (resize +
  normalise; its PIL backend when torchvision is not importable) and its call on a list of PIL images
  -> (B, C, H, W) float tensor.

Images are decoded only in the loader's collate, one batch at a time; the datasets hold references.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fastft.train.config.names import IMAGE_PRESETS, TEXT_PRESETS, parse_augment
from fastft.train.errors import ConfigError, DataError, first_line

__all__ = [
    "IMAGE_PRESETS",
    "TEXT_PRESETS",
    "parse_augment",
    "text_presets",
    "image_presets",
    "build_augment",
    "augment_image",
    "open_image",
    "image_size",
    "processor_backend_kwargs",
    "load_image_processor",
    "pixel_values",
]

log = logging.getLogger("fastft")

_DEFAULT_DEGREES = 15.0


def text_presets(spec: str | None) -> list[tuple[str, float | None]]:
    """The presets of ``spec`` for a text task; image presets raise ConfigError naming the one that fits."""
    presets = parse_augment(spec)
    names = [n for n, _ in presets]
    if any(n in IMAGE_PRESETS for n in names):
        raise ConfigError(
            f"--augment {spec}: {', '.join(n for n in names if n in IMAGE_PRESETS)} augment images, "
            "and this is a text task; use --augment eda or drop --augment"
        )
    return presets


def image_presets(spec: str | None) -> list[tuple[str, float | None]]:
    """The presets of ``spec`` for an image task; text presets raise ConfigError naming those that fit."""
    presets = parse_augment(spec)
    if any(n in TEXT_PRESETS for n, _ in presets):
        raise ConfigError(
            f"--augment {spec}: eda edits texts, and this is an image task; use "
            f"{', '.join(IMAGE_PRESETS)} (combined with commas)"
        )
    return presets


def build_augment(spec: str | None, size: tuple[int, int]) -> Callable | None:
    """The train-split transform of ``spec``: an :class:`~fastft.train.image_augment.Augment` called
    as ``aug(image, rng)`` (``None`` without presets). ``size``: the processor's input size (height,
    width), the output size of ``crop``."""
    from fastft.train.image_augment import Augment, make_step

    presets = image_presets(spec)
    if not presets:
        return None
    steps = [make_step(name, value, size, _DEFAULT_DEGREES) for name, value in presets]
    return Augment(steps, [name if value is None else f"{name}={value:g}" for name, value in presets])


def sample_seed(seed: int, epoch: int, row: int) -> int:
    """The seed of one sample's transform: a pure function of (run seed, epoch, dataset row)."""
    keys = [int(k) & 0xFFFFFFFF for k in (seed, epoch, row, 0x1A6E)]
    return int(np.random.SeedSequence(keys).generate_state(1, dtype=np.uint64)[0] >> 1)


def augment_image(transform: Callable | None, image, seed: int, epoch: int, row: int):
    """``transform(image, rng)`` with a private ``random.Random`` seeded by :func:`sample_seed`: the
    same pixels for the same (seed, epoch, row), and the global torch / numpy / ``random`` states are
    never read or moved (augmentation cannot shift dropout or shuffling)."""
    if transform is None:
        return image
    return transform(image, random.Random(sample_seed(seed, epoch, row)))


def open_image(ref: Any):
    """An image reference (a file path, encoded bytes, or an HF ``{"bytes", "path"}`` dict) as an RGB
    PIL image. Grayscale / RGBA / palette images are converted (the data check noted them once). A file
    that no longer decodes (changed since the check) -> DataError naming it, not a traceback."""
    from PIL import Image

    from fastft.train.data.images import ref_name

    if isinstance(ref, dict):
        ref = ref.get("bytes") or ref.get("path")
    src = io.BytesIO(ref) if isinstance(ref, (bytes, bytearray)) else ref
    try:
        with warnings.catch_warnings():  # large images were counted in one note by the data check
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                return im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - unreadable / truncated / corrupt data
        raise DataError(
            f"image {ref_name(ref)} cannot be decoded ({first_line(e, 120)}); replace or remove it"
        ) from None


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


@functools.cache
def _torchvision_works() -> bool:
    """Whether torchvision imports (installed and its compiled ops load with this torch)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - e.g. a CUDA build beside a CPU torch
        return False
    return True


def processor_backend_kwargs() -> dict:
    """``from_pretrained`` keywords that ask for the PIL image processor when torchvision cannot be
    used (else ``{}``: transformers' default). transformers with backend classes (the
    ``image_processing_backends`` module) takes ``backend="pil"``; older ones take ``use_fast=False``
    (the slow, PIL/numpy classes). Asking explicitly avoids transformers' "falling back" warning."""
    if _torchvision_works():
        return {}
    if importlib.util.find_spec("transformers.image_processing_backends") is not None:
        return {"backend": "pil"}
    return {"use_fast": False}


def load_image_processor(path: str):
    """The model's ``AutoImageProcessor`` (one line naming the fix when the folder has none)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path, trust_remote_code=False, **processor_backend_kwargs())
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
