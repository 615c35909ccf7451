"""The per-family table: everything fastft needs to know about a model family, as data.

One row per family; every model type that shares a layout maps to the same row. The patch
layer, LoRA injection and the trainer's strategies (freeze-N, gradual unfreezing, layer-wise LR)
read this table instead of carrying per-model code. Paths are attribute paths relative to
``model.base_model`` (the backbone), except ``heads`` which are relative to the full model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Family:
    name: str
    #: ``config.model_type`` values that use this layout.
    model_types: tuple[str, ...]
    #: decoder (causal attention) or encoder.
    causal: bool
    #: embedding modules on the backbone (frozen first by freeze-N).
    embeddings: tuple[str, ...]
    #: the ModuleList of transformer blocks (or conv/Swin stages) on the backbone; ``a|b``: the first
    #: path that exists (a layout that changed between transformers versions).
    layers: str
    #: modules after the last block on the backbone (final LayerNorm), grouped with the top layer.
    final_norm: tuple[str, ...]
    #: task heads on the full model (kept trainable by head-only / LoRA).
    heads: tuple[str, ...]
    #: default LoRA targets (leaf module names).
    lora_targets: tuple[str, ...]
    #: attention goes through transformers' AttentionInterface (``config._attn_implementation``).
    attention_interface: bool = True
    #: two-tower (image-text) models: ``(tower, path on the backbone, its projection on the full model
    #: or "")`` per tower. ``embeddings``/``layers``/``final_norm`` are then relative to each tower, and
    #: freeze-N, gradual unfreezing and LLRD count blocks per tower.
    towers: tuple[tuple[str, str, str], ...] = ()
    #: the model reads the outputs at padding positions (SigLIP pools the last position, padded or
    #: not): attention must not unpad, which would leave zeros there.
    reads_padding: bool = False


FAMILIES: tuple[Family, ...] = (
    Family(
        name="bert",
        model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie"),
        causal=False,
        embeddings=("embeddings",),
        layers="encoder.layer",
        final_norm=("pooler",),
        heads=("classifier", "score", "qa_outputs", "cls", "lm_head"),
        lora_targets=("query", "key", "value", "dense"),
    ),
    Family(
        name="distilbert",
        model_types=("distilbert",),
        causal=False,
        embeddings=("embeddings",),
        layers="transformer.layer",
        final_norm=(),
        heads=("pre_classifier", "classifier", "qa_outputs", "vocab_projector", "vocab_transform"),
        lora_targets=("q_lin", "k_lin", "v_lin", "out_lin"),
    ),
    Family(
        name="gpt2",
        model_types=("gpt2",),
        causal=True,
        embeddings=("wte", "wpe"),
        layers="h",
        final_norm=("ln_f",),
        heads=("score", "lm_head"),
        lora_targets=("c_attn", "c_proj", "c_fc"),
    ),
    Family(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3"),
        causal=True,
        embeddings=("embed_tokens",),
        layers="layers",
        final_norm=("norm",),
        heads=("score", "lm_head"),
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ),
    Family(
        name="vit",
        # transformers >= 5.2x: layers/q_proj...; 5.17 (the GPU image): encoder.layer/query...
        model_types=("vit", "deit", "dinov2", "vit_msn"),
        causal=False,
        embeddings=("embeddings",),
        layers="layers|encoder.layer",
        final_norm=("layernorm", "pooler"),
        heads=("classifier", "distillation_classifier", "cls_classifier"),
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value", "dense", "fc1", "fc2"),
    ),
    Family(
        # window attention adds a relative-position bias (a float 4D mask): no dense-kernel win
        name="swin",
        model_types=("swin",),
        causal=False,
        embeddings=("embeddings",),
        layers="encoder.layers",
        final_norm=("layernorm",),
        heads=("classifier",),
        lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value", "dense", "fc1", "fc2"),
        attention_interface=False,
    ),
    Family(
        name="convnext",
        model_types=("convnext", "convnextv2"),
        causal=False,
        embeddings=("embeddings",),
        layers="encoder.stages",
        final_norm=("layernorm",),
        heads=("classifier",),
        lora_targets=("pwconv1", "pwconv2"),
        attention_interface=False,
    ),
    Family(
        # all convolutions: LoRA (Linear/Conv1D only) has no default target
        name="resnet",
        model_types=("resnet",),
        causal=False,
        embeddings=("embedder",),
        layers="encoder.stages",
        final_norm=(),
        heads=("classifier",),
        lora_targets=(),
        attention_interface=False,
    ),
)

# Two-tower image-text models (appended last; see ``towers``). CLIP's text tower is causal with a
# padding mask, its vision tower unmasked; SigLIP's text tower is bidirectional. The LoRA targets are
# dotted suffixes so SigLIP's pooling head (torch MultiheadAttention, whose out_proj is read as a
# weight, never called) is left alone. ``fastft_class_head``: --task contrastive's optional class head.
_TOWER_LORA = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "mlp.fc1",
    "mlp.fc2",
)
FAMILIES += (
    Family(
        name="clip",
        model_types=("clip",),
        causal=False,
        embeddings=("embeddings", "pre_layrnorm"),
        layers="encoder.layers",
        final_norm=("final_layer_norm", "post_layernorm"),
        heads=("fastft_class_head", "visual_projection", "text_projection"),
        lora_targets=_TOWER_LORA,
        towers=(("text", "text_model", "text_projection"), ("vision", "vision_model", "visual_projection")),
    ),
    Family(
        name="siglip",
        model_types=("siglip",),
        causal=False,
        embeddings=("embeddings",),
        layers="encoder.layers",
        final_norm=("final_layer_norm", "post_layernorm", "head"),
        heads=("fastft_class_head",),
        lora_targets=_TOWER_LORA,
        towers=(("text", "text_model", ""), ("vision", "vision_model", "")),
        reads_padding=True,
    ),
)

_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def family_of(model: nn.Module) -> Family | None:
    """The family row of a HF model (by ``config.model_type``), or None if fastft has no row for it."""
    cfg = getattr(model, "config", None)
    return _BY_TYPE.get(getattr(cfg, "model_type", None))


def get_path(root: nn.Module, path: str) -> nn.Module | None:
    """``get_path(m, "encoder.layer")`` -> ``m.encoder.layer`` or None if any step is missing."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def backbone(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def towers(model: nn.Module, family: Family | None = None) -> dict[str, nn.Module]:
    """``{tower: module}`` whose ``embeddings``/``layers``/``final_norm`` paths the family row gives:
    ``{"": backbone}`` for one-tower families, ``{"text": ..., "vision": ...}`` for CLIP/SigLIP."""
    family = family or family_of(model)
    bb = backbone(model)
    if family is None or not family.towers:
        return {"": bb}
    out = {}
    for name, path, _ in family.towers:
        root = get_path(bb, path)
        if root is None:
            raise ValueError(f"{type(model).__name__}: no {path!r} ({name} tower) on the backbone")
        out[name] = root
    return out


def tower_blocks(model: nn.Module, family: Family | None = None) -> dict[str, list[nn.Module]]:
    """The transformer blocks of each tower (see :func:`towers`), bottom to top."""
    family = family or family_of(model)
    if family is None:
        raise ValueError(
            f"fastft has no family row for model_type {getattr(model.config, 'model_type', None)!r}"
        )
    out = {}
    for name, root in towers(model, family).items():
        # "a|b": the first path that exists (module paths differ across transformers versions)
        layers = next((m for p in family.layers.split("|") if (m := get_path(root, p)) is not None), None)
        if layers is None:
            raise ValueError(f"{type(model).__name__}: no {family.layers!r} on the {name or 'backbone'}")
        out[name] = list(layers)
    return out


def blocks(model: nn.Module, family: Family | None = None) -> list[nn.Module]:
    """The transformer blocks of ``model``, bottom to top (two towers: each tower's, one after the other)."""
    return [b for layers in tower_blocks(model, family).values() for b in layers]
