"""Tiny random vision models (saved with their image processors) and synthetic, separable images.

No pretrained vision weights are reachable offline, so every test builds a few-thousand-parameter
model from a config and saves it with ``save_pretrained``; images are drawn with numpy + Pillow.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from tests.clip_util import image_processor_class

SIZE = 16
#: one colour per class, plus noise: linearly separable from the mean pixel.
COLOURS = {"red": (210, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 210)}


def _config(kind: str, num_labels: int):
    import transformers as T

    vit = dict(image_size=SIZE, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, num_labels=num_labels)  # fmt: skip
    square = image_processor_class("ViTImageProcessor")(size={"height": SIZE, "width": SIZE})
    if kind in ("vit", "deit"):
        return (T.ViTConfig if kind == "vit" else T.DeiTConfig)(**vit), square
    if kind == "swin":
        cfg = T.SwinConfig(image_size=SIZE, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                           window_size=4, num_labels=num_labels)  # fmt: skip
        return cfg, square
    short = image_processor_class("ConvNextImageProcessor")(size={"shortest_edge": SIZE}, crop_pct=1.0)
    if kind == "convnext":
        cfg = T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=num_labels)
        return cfg, short
    if kind == "resnet":
        cfg = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                             num_labels=num_labels)  # fmt: skip
        return cfg, short
    raise ValueError(kind)


def save_model(folder: str, kind: str = "vit", num_labels: int = 2, seed: int = 0) -> str:
    """A tiny random ``<Kind>ForImageClassification`` + its image processor in ``folder``."""
    import torch
    import transformers as T

    cfg, proc = _config(kind, num_labels)
    torch.manual_seed(seed)
    names = {"vit": "ViT", "deit": "DeiT", "swin": "Swin", "convnext": "ConvNext", "resnet": "ResNet"}
    model = getattr(T, f"{names[kind]}ForImageClassification")(cfg)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def colour_image(label: str, rng: np.random.Generator, size: int = 20, mode: str = "RGB"):
    from PIL import Image

    a = np.array(COLOURS[label])[None, None] + rng.normal(0, 35, (size, size, 3))
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    return im.convert(mode) if mode != "RGB" else im


def image_folder(root: str, per_class: int = 16, seed: int = 0, classes=tuple(COLOURS)) -> str:
    """``root/<class>/<i>.png``: a separable colour problem."""
    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            colour_image(c, rng).save(os.path.join(root, c, f"{i}.png"))
    return root


def image_csv(folder: str, n: int = 30, seed: int = 1, name: str = "data.csv", column: str = "image_path",
              labels=None) -> str:  # fmt: skip
    """``folder/<name>`` with ``column`` (paths relative to the file, in ``imgs/``) and ``label``;
    ``labels``: a function row -> label value (default: the colour name)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "imgs"), exist_ok=True)
    names = list(COLOURS)
    path = os.path.join(folder, name)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([column, "label"])
        for i in range(n):
            c = names[i % len(names)]
            rel = os.path.join("imgs", f"{name}-{i}.png")
            colour_image(c, rng).save(os.path.join(folder, rel))
            w.writerow([rel, labels(i, c) if labels else c])
    return path


def undecodable_images(folder: str) -> tuple[str, str]:
    """``folder/truncated.jpg`` (the first half of a JPEG) and ``folder/garbled.png`` (random bytes as
    its image data, under a valid CRC): Pillow's ``verify()`` passes both, neither decodes."""
    import io
    import struct
    import zlib

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    image = colour_image("red", rng, size=32)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    jpg = os.path.join(folder, "truncated.jpg")
    with open(jpg, "wb") as fh:
        fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    image.save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.index(b"IDAT")  # chunk: length (4) | type (4) | payload | crc32(type + payload) (4)
    n = struct.unpack(">I", data[at - 4 : at])[0]
    payload = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    data[at + 4 : at + 8 + n] = payload + struct.pack(">I", zlib.crc32(b"IDAT" + payload))
    png = os.path.join(folder, "garbled.png")
    with open(png, "wb") as fh:
        fh.write(bytes(data))
    return jpg, png
