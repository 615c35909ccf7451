"""Train-split image augmentation on PIL images, with Pillow only (no torchvision).

The ``--augment`` presets (combined with commas, applied in the order given):

* ``flip`` -- mirror left-right with probability 1/2.
* ``crop`` -- random resized crop: a box of 8%-100% of the area and aspect ratio 3/4-4/3 (log-uniform),
  resized (bilinear, antialiased) to the processor's input size; 10 tries, else the centre box.
* ``rotate[=D]`` -- rotate by an angle uniform in [-D, D] degrees (default 15), bilinear, black corners.
* ``color`` -- brightness, contrast and saturation factors uniform in [0.6, 1.4] and a hue shift uniform
  in [-0.1, 0.1] of the hue circle, applied in a random order.
* ``randaugment`` -- RandAugment (Cubuk et al. 2019): 2 ops drawn with replacement from identity, shear
  x/y, translate x/y, rotate, brightness, color, contrast, sharpness, posterize, solarize, autocontrast
  and equalize, at magnitude 9 of 31 bins (0-30); signed ops flip their sign with probability 1/2.

Every draw comes from the ``random.Random`` the caller passes, so one seeded generator per sample makes
the result a pure function of (image, seed); nothing global (torch, numpy, ``random``) is touched.
Inputs are RGB (``open_image`` converts); geometric ops fill uncovered pixels with black.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from PIL import Image, ImageEnhance, ImageOps

__all__ = [
    "Augment",
    "RANDAUGMENT_OPS",
    "hflip",
    "crop_box",
    "resized_crop",
    "rotate",
    "adjust_hue",
    "color_jitter",
    "randaugment_op",
    "make_step",
]

Step = Callable[[Image.Image, random.Random], Image.Image]

_BILINEAR = Image.Resampling.BILINEAR
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.4  # brightness / contrast / saturation: factor in [1 - JITTER, 1 + JITTER]
HUE = 0.1  # hue shift in [-HUE, HUE] of the circle
RA_OPS_PER_IMAGE, RA_MAGNITUDE, RA_BINS = 2, 9, 31


class Augment:
    """A chain of preset steps; ``aug(image, rng)`` runs them in order with one generator."""

    def __init__(self, steps: Sequence[Step], names: Sequence[str]):
        self.steps, self.names = list(steps), list(names)

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> Image.Image:
        rng = rng if rng is not None else random.Random()
        for step in self.steps:
            image = step(image, rng)
        return image

    def __repr__(self) -> str:
        return f"Augment({', '.join(self.names)})"


def _black(image: Image.Image):
    return (0,) * len(image.getbands()) if len(image.getbands()) > 1 else 0


def hflip(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def crop_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random resized crop (area fraction in CROP_SCALE, aspect in CROP_RATIO)."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    # no fit in 10 tries (a very long image): the centre box, its aspect clamped into the range
    aspect = width / height
    w, h = width, height
    if aspect < CROP_RATIO[0]:
        h = round(width / CROP_RATIO[0])
    elif aspect > CROP_RATIO[1]:
        w = round(height * CROP_RATIO[1])
    return (width - w) // 2, (height - h) // 2, w, h


def resized_crop(image: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
    """``box`` (left, top, w, h) of ``image`` resized to ``size`` (height, width)."""
    left, top, w, h = box
    return image.resize((size[1], size[0]), _BILINEAR, box=(left, top, left + w, top + h))


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    """Counter-clockwise by ``degrees`` about the centre, same size, black outside the source."""
    return image.rotate(degrees, resample=_BILINEAR, fillcolor=_black(image))


def _affine(image: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    # coeffs map each output pixel (x, y) to the input pixel (a x + b y + c, d x + e y + f)
    return image.transform(image.size, Image.Transform.AFFINE, coeffs, _BILINEAR, fillcolor=_black(image))


def adjust_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by ``shift`` of the circle (in [-0.5, 0.5]); non-RGB images are returned as is."""
    step = round(shift * 255) % 256
    if image.mode != "RGB" or step == 0:
        return image
    h, s, v = image.convert("HSV").split()
    h = h.point([(i + step) % 256 for i in range(256)])
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(image: Image.Image, rng: random.Random) -> Image.Image:
    """Brightness, contrast, saturation and hue jitter in a random order."""
    lo, hi = 1 - JITTER, 1 + JITTER
    ops = [
        (ImageEnhance.Brightness, rng.uniform(lo, hi)),
        (ImageEnhance.Contrast, rng.uniform(lo, hi)),
        (ImageEnhance.Color, rng.uniform(lo, hi)),
        (None, rng.uniform(-HUE, HUE)),
    ]
    rng.shuffle(ops)
    for enhancer, value in ops:
        image = adjust_hue(image, value) if enhancer is None else enhancer(image).enhance(value)
    return image


def _translate(image: Image.Image, fx: float, fy: float) -> Image.Image:
    """Shift by ``fx`` of the width and ``fy`` of the height (whole pixels)."""
    return _affine(image, (1, 0, round(fx * image.width), 0, 1, round(fy * image.height)))


def _enhance(cls) -> Callable[[Image.Image, float], Image.Image]:
    return lambda image, v: cls(image).enhance(1.0 + v)


# name -> (op(image, value), value at the top bin, signed). The value at magnitude m is top * m / 30,
# except posterize (bits 8 down to 4) and solarize (threshold 255 down to 0), per the paper's table.
_RA: dict[str, tuple[Callable[[Image.Image, float], Image.Image], float, bool]] = {
    "identity": (lambda image, v: image, 0.0, False),
    "shear_x": (lambda image, v: _affine(image, (1, v, 0, 0, 1, 0)), 0.3, True),
    "shear_y": (lambda image, v: _affine(image, (1, 0, 0, v, 1, 0)), 0.3, True),
    "translate_x": (lambda image, v: _translate(image, v, 0), 150 / 331, True),
    "translate_y": (lambda image, v: _translate(image, 0, v), 150 / 331, True),
    "rotate": (rotate, 30.0, True),
    "brightness": (_enhance(ImageEnhance.Brightness), 0.9, True),
    "color": (_enhance(ImageEnhance.Color), 0.9, True),
    "contrast": (_enhance(ImageEnhance.Contrast), 0.9, True),
    "sharpness": (_enhance(ImageEnhance.Sharpness), 0.9, True),
    "posterize": (lambda image, v: ImageOps.posterize(image, int(v)), 0.0, False),
    "solarize": (lambda image, v: ImageOps.solarize(image, v), 0.0, False),
    "autocontrast": (lambda image, v: ImageOps.autocontrast(image), 0.0, False),
    "equalize": (lambda image, v: ImageOps.equalize(image), 0.0, False),
}
RANDAUGMENT_OPS = tuple(_RA)


def _ra_value(name: str, magnitude: int) -> float:
    top = RA_BINS - 1
    if name == "posterize":
        return 8 - round(magnitude / (top / 4))
    if name == "solarize":
        return 255.0 * (1 - magnitude / top)
    return _RA[name][1] * magnitude / top


def randaugment_op(
    image: Image.Image, name: str, magnitude: int = RA_MAGNITUDE, sign: int = 1
) -> Image.Image:
    """One RandAugment op at ``magnitude`` (0-30); ``sign`` -1 negates a signed op's value."""
    op, _, signed = _RA[name]
    value = _ra_value(name, magnitude)
    return op(image, -value if signed and sign < 0 else value)


def _randaugment(image: Image.Image, rng: random.Random) -> Image.Image:
    for _ in range(RA_OPS_PER_IMAGE):
        name = rng.choice(RANDAUGMENT_OPS)
        image = randaugment_op(image, name, RA_MAGNITUDE, -1 if rng.random() < 0.5 else 1)
    return image


def make_step(name: str, value: float | None, size: tuple[int, int], default_degrees: float) -> Step:
    """One preset as a step ``(image, rng) -> image``; ``size``: (height, width) of ``crop``'s output."""
    if name == "flip":
        return lambda image, rng: hflip(image) if rng.random() < 0.5 else image
    if name == "crop":
        return lambda image, rng: resized_crop(image, crop_box(image.width, image.height, rng), size)
    if name == "rotate":
        degrees = abs(value) if value is not None else default_degrees
        return lambda image, rng: rotate(image, rng.uniform(-degrees, degrees))
    if name == "color":
        return color_jitter
    if name == "randaugment":
        return _randaugment
    raise ValueError(f"unknown image preset {name!r}")
