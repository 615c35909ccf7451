"""Two-tower strategies (CLIP / SigLIP): per-tower depths for freeze-N / gradual / LLRD, --freeze-tower,
and the LoRA default targets (per tower, never SigLIP's MultiheadAttention pooling head)."""

from __future__ import annotations

import pytest

import fastft
from fastft.lora.inject import lora_layers, tower_lora_targets
from fastft.train import strategies as strat
from tests.clip_util import tiny_model


@pytest.fixture(scope="module", params=["clip", "siglip"])
def model(request):
    return tiny_model(request.param)


def _fresh(kind):
    return tiny_model(kind)


def test_depths_are_counted_per_tower(model):
    d = strat.param_depths(model)
    L = model.config.text_config.num_hidden_layers  # both towers have 2 blocks here
    for tower in ("text_model", "vision_model"):
        assert d[f"{tower}.encoder.layers.{L - 1}.self_attn.q_proj.weight"] == 1  # each tower's top block
        assert d[f"{tower}.encoder.layers.0.mlp.fc1.weight"] == L
        emb = next(n for n in d if n.startswith(f"{tower}.embeddings."))
        assert d[emb] == L + 1
    assert d["logit_scale"] == 0
    if model.config.model_type == "clip":
        assert d["visual_projection.weight"] == 0 and d["text_model.final_layer_norm.weight"] == 1
        assert d["vision_model.pre_layrnorm.weight"] == L + 1
    groups = strat.param_groups(model, lr=1.0, weight_decay=0.0, layer_lr_decay=0.5)
    lrs = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert (
        lrs["text_model.encoder.layers.0.mlp.fc1.weight"]
        == lrs["vision_model.encoder.layers.0.mlp.fc1.weight"]
        == 0.5**L
    )


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_freeze_n_and_freeze_tower(kind):
    m = _fresh(kind)
    strat.apply_freeze(m, 1)
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    for tower in ("text_model", "vision_model"):
        assert any(n.startswith(f"{tower}.encoder.layers.0.") for n in frozen)
        assert not any(n.startswith(f"{tower}.encoder.layers.1.") for n in frozen)
        assert any(n.startswith(f"{tower}.embeddings.") for n in frozen)
    with pytest.raises(ValueError, match="tower's 2 blocks"):
        strat.apply_freeze(_fresh(kind), 3)

    m = _fresh(kind)
    strat.apply_freeze_tower(m, "vision")
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("vision_model.", "visual_projection.")) for n in frozen)
    assert len(frozen) == sum(
        1 for n, _ in m.named_parameters() if n.startswith(("vision_model.", "visual_projection."))
    )
    assert all(
        p.requires_grad for n, p in m.named_parameters() if n.startswith("text_model.") or n == "logit_scale"
    )
    with pytest.raises(ValueError, match="towers are text, vision"):
        strat.apply_freeze_tower(m, "audio")


def test_freeze_tower_refuses_a_one_tower_model():
    from tests.models import build, tiny_bert_config

    bert = build("AutoModelForSequenceClassification", tiny_bert_config())
    with pytest.raises(ValueError, match="not a two-tower model"):
        strat.apply_freeze_tower(bert, "text")


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_lora_default_and_tower_targets(kind):
    m = _fresh(kind)
    fastft.add_lora(m, r=2)
    paths = set(lora_layers(m))
    # 2 towers x 2 blocks x (q, k, v, out, fc1, fc2); SigLIP's pooling head adds its MLP's fc1/fc2
    extra = 2 if kind == "siglip" else 0
    assert len(paths) == 2 * 2 * 6 + extra
    assert not any(
        ".head.attention." in p for p in paths
    )  # SigLIP's MultiheadAttention reads out_proj.weight
    vision = tower_lora_targets(_fresh(kind), ["vision"])
    assert all(p.startswith("vision_model.") for p in vision) and len(vision) == 12 + extra
    with pytest.raises(ValueError, match="towers"):
        tower_lora_targets(_fresh(kind), ["audio"])
