"""A family's ``layers="a|b"``: the first path that exists. ViT's blocks moved from ``encoder.layer``
(older transformers) to ``layers``; every installed version has one layout, so the other is built here
by moving the blocks, and both must give the same blocks, depths and freezing."""

from __future__ import annotations

import pytest
from torch import nn

from fastft.nn.families import blocks, family_of
from fastft.train import strategies
from tests.train.tasks import imgdata


def _vit(layout: str):
    import transformers as T

    model = T.ViTForImageClassification(imgdata._config("vit", num_labels=3)[0])
    bb = model.vit
    current = bb.layers if hasattr(bb, "layers") else bb.encoder.layer
    for attr in ("layers", "encoder"):
        if hasattr(bb, attr):
            delattr(bb, attr)
    if layout == "layers":
        bb.layers = current
    else:  # the older layout: backbone.encoder.layer
        bb.encoder = nn.Module()
        bb.encoder.layer = current
    return model, list(current)


@pytest.mark.parametrize("layout", ["layers", "encoder.layer"])
def test_either_vit_layout_gives_the_blocks(layout):
    model, expected = _vit(layout)
    assert "|" in family_of(model).layers
    got = blocks(model)
    assert len(got) == 2 and all(a is b for a, b in zip(got, expected))
    prefix = "vit.layers" if layout == "layers" else "vit.encoder.layer"
    depths = strategies.param_depths(model)
    assert {d for n, d in depths.items() if n.startswith(f"{prefix}.0.")} == {2}
    assert {d for n, d in depths.items() if n.startswith(f"{prefix}.1.")} == {1}
    assert {d for n, d in depths.items() if n.startswith("vit.embeddings.")} == {3}
    strategies.apply_freeze(model, 1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith((f"{prefix}.0.", "vit.embeddings.")) for n in frozen)
    assert any(n.startswith(f"{prefix}.0.") for n in frozen)


def test_neither_layout_names_both_paths():
    model, _ = _vit("layers")
    del model.vit.layers
    with pytest.raises(ValueError, match=r"no 'layers\|encoder.layer'"):
        blocks(model)
