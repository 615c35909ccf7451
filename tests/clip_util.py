"""Tiny random CLIP / SigLIP models, a real-vocabulary CLIP tokenizer and colour-square image-caption
pairs, shared by the contrastive tests (no pretrained weights can be downloaded here)."""

from __future__ import annotations

import csv
import os

import torch

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 30),
    "purple": (140, 30, 160),
    "cyan": (30, 210, 210),
    "orange": (240, 140, 20),
    "grey": (128, 128, 128),
}
SHAPES = ("square", "circle")
WORDS = ("a", "photo", "of", "the", "bright", *COLOURS, *SHAPES, "dark", "small", "big")
TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)


def image_processor_class(name: str):
    """transformers' PIL image processor ``<name>Pil`` where it exists (transformers >= 5 without
    torchvision warns when the plain name falls back to it), else the plain (slow) class."""
    import transformers

    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def clip_tokenizer(words=WORDS):
    """A CLIP BPE tokenizer whose vocabulary holds every word of ``words`` whole (distinct ids).

    Special tokens first: <|startoftext|> = 0, <|endoftext|> = 1 (also pad, like CLIP's own).
    """
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges: list[tuple[str, str]] = []

    def add(tok: str) -> None:
        vocab.setdefault(tok, len(vocab))

    for w in words:
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        for p in pieces:
            add(p)
        while len(pieces) > 1:  # merge left to right: "r e", "re d</w>"
            merge = (pieces[0], pieces[1])
            if merge not in merges:
                merges.append(merge)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            add(pieces[0])
    return CLIPTokenizer(vocab=vocab, merges=merges)


def tiny_config(kind: str = "clip", vocab_size: int = 128):
    text = dict(vocab_size=vocab_size, max_position_embeddings=16, **TINY)
    vision = dict(image_size=32, patch_size=8, **TINY)
    if kind == "clip":
        from transformers import CLIPConfig

        text.update(bos_token_id=0, eos_token_id=1, pad_token_id=1)
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    from transformers import SiglipConfig

    text.update(pad_token_id=1, eos_token_id=1, bos_token_id=0)
    return SiglipConfig(text_config=text, vision_config=vision)


def tiny_model(kind: str = "clip", seed: int = 0):
    from transformers import CLIPModel, SiglipModel

    torch.manual_seed(seed)
    cls = CLIPModel if kind == "clip" else SiglipModel
    return cls(tiny_config(kind)).eval()


def processor(kind: str = "clip"):
    from transformers import CLIPProcessor, SiglipProcessor

    tok = clip_tokenizer()
    size = {"shortest_edge": 32} if kind == "clip" else {"height": 32, "width": 32}
    if kind == "clip":
        ip = image_processor_class("CLIPImageProcessor")(size=size, crop_size={"height": 32, "width": 32})
        return CLIPProcessor(image_processor=ip, tokenizer=tok)
    ip = image_processor_class("SiglipImageProcessor")(size=size)
    return SiglipProcessor(image_processor=ip, tokenizer=tok)


def save_tiny(path: str, kind: str = "clip", seed: int = 0) -> str:
    """A random tiny CLIP/SigLIP + its processor saved to ``path`` (loads with AutoModel/AutoProcessor)."""
    os.makedirs(path, exist_ok=True)
    tiny_model(kind, seed).save_pretrained(path)
    processor(kind).save_pretrained(path)
    return path


def square(colour: str, shape: str = "square", size: int = 32, shade: int = 0):
    from PIL import Image, ImageDraw

    rgb = tuple(max(0, min(255, c + shade)) for c in COLOURS[colour])
    img = Image.new("RGB", (size, size), (255, 255, 255) if shape == "circle" else rgb)
    if shape == "circle":
        ImageDraw.Draw(img).ellipse((4, 4, size - 4, size - 4), fill=rgb)
    return img


def write_pairs(
    folder: str, n: int = 64, name: str = "pairs.csv", seed: int = 0, classes: bool = False
) -> str:
    """``n`` colour images (PNG) + a CSV (image, caption[, colour]); caption "a photo of a red square"."""
    import random

    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    path = os.path.join(folder, name)
    cols = list(COLOURS)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption", *(["colour"] if classes else [])])
        for i in range(n):
            c, s = cols[i % len(cols)], SHAPES[(i // len(cols)) % 2]
            rel = f"img/{name[:-4]}-{i:03d}.png"
            square(c, s, shade=rng.randint(-20, 20)).save(os.path.join(folder, rel))
            w.writerow([rel, f"a photo of a {c} {s}", *([c] if classes else [])])
    return path
