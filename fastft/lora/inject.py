"""LoRA injection into a HF model instance: add / merge / unmerge / remove, all reversible.

Target matching follows PEFT so an adapter config means the same thing in both libraries: a list of
names matches a module whose dotted path equals the name or ends with ``"." + name`` (a full path
therefore matches exactly that module); a single string is a regular expression that must match
the whole path; ``"all-linear"`` takes every Linear/Conv1D outside the task heads.

The bookkeeping (targets, modules_to_save, the requires_grad flags before ``add_lora``, adapters
parked by ``merge_lora``) lives in a plain attribute on the model instance, so nothing of it is a
parameter or a state-dict entry and the model class is never touched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fastft.lora.layer import LoRALinear, supported_base
from fastft.nn.families import Family, family_of

__all__ = [
    "add_lora",
    "merge_lora",
    "unmerge_lora",
    "remove_lora",
    "lora_parameters",
    "lora_layers",
    "lora_state",
    "patch_component",
    "unwrap",
    "tower_lora_targets",
]

_STATE = "_fastft_lora"
#: transformers' task classes whose head is new (trained and saved in full under LoRA).
_HEAD_TASKS = (
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
    "ForImageClassification",
)


@dataclass
class LoRAState:
    r: int
    alpha: float
    dropout: float
    use_rslora: bool
    #: full paths of the wrapped modules, in model order.
    targets: list[str]
    #: full paths of the modules trained and saved in full.
    modules_to_save: list[str]
    #: requires_grad of every parameter before add_lora (restored by remove_lora).
    requires_grad: dict[str, bool]
    #: path -> LoRALinear parked by merge_lora (its base module is back in the model, merged).
    merged: dict[str, LoRALinear] = field(default_factory=dict)


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
            continue
        return model


def lora_state(model: nn.Module) -> LoRAState | None:
    return unwrap(model).__dict__.get(_STATE)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """``{path: LoRALinear}`` of the active (unmerged) LoRA layers."""
    return {n: m for n, m in unwrap(model).named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA factors (A and B of every layer), e.g. for an optimizer param group."""
    out: list[nn.Parameter] = []
    for layer in lora_layers(model).values():
        out += [layer.lora_A.weight, layer.lora_B.weight]
    return out


# --------------------------------------------------------------------------------- matching
def _matches(path: str, spec: str | Sequence[str]) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, path) is not None
    return any(path == t or path.endswith("." + t) for t in spec)


def _default_heads(model: nn.Module, family: Family | None) -> list[str]:
    """A task model's head: its top-level modules with parameters outside the backbone (``classifier``,
    ``pre_classifier``, ``score``, ``qa_outputs``, a pooler ...), found from the model's structure rather
    than a list of names, so every family's task classes are covered whatever they call their head."""
    if not type(model).__name__.endswith(_HEAD_TASKS):
        return []
    if model.base_model is not model:
        body = {n for n, m in model.named_children() if m is model.base_model}
    else:  # the towers sit on the model itself (CLIPForImageClassification: vision_model + classifier)
        body = {path.split(".")[0] for _, path, _ in (family.towers if family else ())}
        if not body:
            return [
                h for h in (family.heads if family else ()) if isinstance(getattr(model, h, None), nn.Module)
            ]
    return [n for n, m in model.named_children() if n not in body and next(m.parameters(), None) is not None]


def _resolve_modules(model: nn.Module, spec: Sequence[str]) -> list[str]:
    """Full paths of modules matching ``spec`` (PEFT suffix rule), outermost match only."""
    out: list[str] = []
    for name, _ in model.named_modules():
        if name and _matches(name, list(spec)) and not any(name.startswith(p + ".") for p in out):
            out.append(name)
    missing = [s for s in spec if not any(p == s or p.endswith("." + s) for p in out)]
    if missing:
        raise ValueError(f"add_lora: modules_to_save {missing} match no module of {type(model).__name__}")
    return out


def _resolve_targets(model: nn.Module, spec, family: Family | None, skip: Sequence[str]) -> list[str]:
    if spec is None:
        if family is None:
            mt = getattr(getattr(model, "config", None), "model_type", None)
            raise ValueError(
                f"add_lora: no default LoRA targets for model_type {mt!r}; pass target_modules=[...]"
            )
        spec = list(family.lora_targets)
    elif not isinstance(spec, str):
        spec = list(spec)
    heads = set(family.heads if family else ()) | set(_default_heads(model, family))
    out, wrong = [], []
    for name, mod in model.named_modules():
        if not name or any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if isinstance(mod, LoRALinear) or any(isinstance(p, LoRALinear) for p in _parents(model, name)):
            continue
        if spec == "all-linear":
            if supported_base(mod) and name.split(".")[0] not in heads:
                out.append(name)
            continue
        if _matches(name, spec):
            (out if supported_base(mod) else wrong).append(name)
    if wrong:
        raise ValueError(
            f"add_lora: target modules {wrong[:4]} are {type(model.get_submodule(wrong[0])).__name__}, "
            "not nn.Linear or Conv1D; narrow target_modules"
        )
    if not out:
        avail = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if supported_base(m)})
        raise ValueError(f"add_lora: target_modules={spec!r} matches no Linear/Conv1D; candidates: {avail}")
    return out


def tower_lora_targets(model: nn.Module, towers: Sequence[str]) -> list[str]:
    """Full paths of the family's default LoRA targets inside the given towers of a two-tower model
    (CLIP/SigLIP: ``"text"``, ``"vision"``), e.g. LoRA on the vision tower only. PEFT reads a list
    of full paths as exact matches, so the adapter means the same there."""
    family = family_of(model)
    rows = {name: path for name, path, _ in (family.towers if family else ())}
    unknown = [t for t in towers if t not in rows]
    if unknown or not towers:
        raise ValueError(
            f"towers {list(towers)}: the model's towers are {', '.join(rows) or 'none (one tower)'}"
        )
    prefix = getattr(model, "base_model_prefix", "")
    base = "" if getattr(model, prefix, None) is None else prefix + "."
    inside = tuple(base + rows[t] + "." for t in towers)
    return [p for p in _resolve_targets(model, None, family, ()) if p.startswith(inside)]


def _parents(model: nn.Module, path: str) -> Iterable[nn.Module]:
    parts = path.split(".")
    for i in range(1, len(parts)):
        yield model.get_submodule(".".join(parts[:i]))


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


# --------------------------------------------------------------------------------- public API
def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] | None = None,
    modules_to_save: Sequence[str] | None = None,
    use_rslora: bool = False,
    *,
    ranks: dict[str, int] | None = None,
    alphas: dict[str, float] | None = None,
) -> nn.Module:
    """Wrap the target modules of ``model`` (in place) in :class:`LoRALinear`; returns ``model``.

    Afterwards only the LoRA factors and the ``modules_to_save`` are trainable.

    Args:
        target_modules: None = the family's defaults (``fastft.nn.families``: BERT
            query/key/value/dense, GPT-2 c_attn/c_proj/c_fc, Llama projections); a list of module
            names or paths (PEFT's suffix rule), a regex string, or ``"all-linear"``.
        modules_to_save: modules trained and saved in full. None = the task head (the top-level
            modules besides the backbone: classifier / score / pre_classifier / qa_outputs ...) of
            *ForSequenceClassification and similar task models, nothing otherwise; ``[]`` for none.
        use_rslora: scaling ``alpha / sqrt(r)`` instead of ``alpha / r``.
        ranks, alphas: per-path overrides (used when loading PEFT adapters with rank/alpha patterns).
    """
    model = unwrap(model)
    if lora_state(model) is not None:
        raise ValueError("add_lora: this model already has LoRA layers; call fastft.remove_lora(model) first")
    family = family_of(model)
    save = _resolve_modules(model, modules_to_save) if modules_to_save else []
    if modules_to_save is None:
        save = _default_heads(model, family)
    targets = _resolve_targets(model, target_modules, family, save)
    ranks, alphas = ranks or {}, alphas or {}
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    for path in targets:
        base = model.get_submodule(path)
        layer = LoRALinear(
            base, r=ranks.get(path, r), alpha=alphas.get(path, alpha), dropout=dropout, use_rslora=use_rslora
        )
        _set(model, path, layer)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in lora_layers(model).values():
        layer.lora_A.weight.requires_grad_(True)
        layer.lora_B.weight.requires_grad_(True)
    for path in save:
        for p in model.get_submodule(path).parameters():
            p.requires_grad_(True)
    model.__dict__[_STATE] = LoRAState(
        int(r), float(alpha), float(dropout), bool(use_rslora), targets, save, before
    )
    return model


def merge_lora(model: nn.Module, *, keep_adapter: bool = True) -> nn.Module:
    """Fold ``scaling·B·A`` into each base weight and put the original modules back: afterwards the
    model is a plain HF model (same classes, same state-dict keys) with the same outputs.

    With ``keep_adapter=True`` (default) the LoRA layers are parked on the instance so that
    :func:`unmerge_lora` can subtract them again and re-install them (in fp16/bf16 weights the
    round trip is exact only up to rounding). ``keep_adapter=False`` is PEFT's ``merge_and_unload``:
    the adapter is dropped and the model no longer knows it had one.
    """
    model = unwrap(model)
    st = lora_state(model)
    if st is None:
        raise ValueError("merge_lora: the model has no LoRA layers (call fastft.add_lora first)")
    for path, layer in lora_layers(model).items():
        with torch.no_grad():
            layer.weight.add_(layer.delta_weight())
        _set(model, path, layer.restore_base())
        st.merged[path] = layer
    if not keep_adapter:
        del model.__dict__[_STATE]
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`: subtract the update and re-install the LoRA layers."""
    model = unwrap(model)
    st = lora_state(model)
    if st is None or not st.merged:
        raise ValueError(
            "unmerge_lora: nothing is merged (merge_lora(model) was not called, or with keep_adapter=False)"
        )
    for path, layer in list(st.merged.items()):
        base = model.get_submodule(path)
        if base is not layer.__dict__["base_layer"]:
            raise RuntimeError(f"unmerge_lora: module {path!r} was replaced after merge_lora; cannot unmerge")
        layer.weight, layer.bias = base.weight, base.bias
        with torch.no_grad():
            layer.weight.sub_(layer.delta_weight())
        _set(model, path, layer)
        del st.merged[path]
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """Put the original modules back *without* merging and restore every parameter's requires_grad.

    A model merged with ``keep_adapter=True`` is unmerged first (the base weights return to their
    pre-LoRA values); after ``merge_lora(model, keep_adapter=False)`` there is nothing left to remove.
    """
    model = unwrap(model)
    st = lora_state(model)
    if st is None:
        return model
    if st.merged:
        unmerge_lora(model)
    for path, layer in lora_layers(model).items():
        _set(model, path, layer.restore_base())
    for n, p in model.named_parameters():
        if n in st.requires_grad:
            p.requires_grad_(st.requires_grad[n])
    del model.__dict__[_STATE]
    return model


def patch_component(model: nn.Module, family: Family | None, **kw) -> Callable[[], None]:
    """The ``fastft.patch(model, lora={...})`` component: ``add_lora(model, **kw)``, undone by ``remove_lora``."""
    if kw.get("target_modules") is None and family is not None:
        kw["target_modules"] = list(family.lora_targets)
    add_lora(model, **kw)
    return lambda: remove_lora(model)
