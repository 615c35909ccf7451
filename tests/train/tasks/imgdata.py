"""Tiny random vision models (saved with their image processors) and synthetic, separable images.

No pretrained vision weights are reachable offline, so every test builds a few-thousand-parameter
model from a config and saves it with ``save_pretrained``; images are drawn with numpy + Pillow.
"""

from __future__ import annotations

import csv
import os

import numpy as np

import fastft  # noqa: F401 - the torchvision shim before transformers' vision imports

SIZE = 16
#: one colour per class, plus noise: linearly separable from the mean pixel.
COLOURS = {"red": (210, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 210)}


def _config(kind: str, num_labels: int):
    import transformers as T

    vit = dict(image_size=SIZE, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, num_labels=num_labels)  # fmt: skip
    if kind == "vit":
        return T.ViTConfig(**vit), T.ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    if kind == "deit":
        return T.DeiTConfig(**vit), T.ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    if kind == "swin":
        cfg = T.SwinConfig(image_size=SIZE, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                           window_size=4, num_labels=num_labels)  # fmt: skip
        return cfg, T.ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    if kind == "convnext":
        cfg = T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=num_labels)
        return cfg, T.ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=1.0)
    if kind == "resnet":
        cfg = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                             num_labels=num_labels)  # fmt: skip
        return cfg, T.ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=1.0)
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
