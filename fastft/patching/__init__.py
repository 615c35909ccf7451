"""``fastft.patch(model)`` / ``fastft.unpatch(model)``: swap fused parts into one HF model instance.

Each part is a *component*: a function ``apply(model, family) -> undo | None`` that installs
itself through transformers' own hooks (AttentionInterface for attention, the per-model
``loss_function`` for losses, module replacement for LoRA) on this instance only, and returns
a callable that restores what it changed (None if it changed nothing). ``patch`` runs the
components and keeps their undo callables on the instance; ``unpatch`` runs them in reverse.
Patching is idempotent: a second ``patch`` on a patched model is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fastft.nn.families import FAMILIES, Family, family_of

__all__ = ["patch", "unpatch", "is_patched", "patched_parts", "FAMILIES", "Family", "family_of"]

log = logging.getLogger("fastft")
_ATTR = "_fastft_patch_state"


@dataclass
class PatchState:
    family: str | None
    #: (component name, undo callable) in the order applied.
    undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list)


def _components(attention: bool, loss: bool, lora: dict[str, Any] | None):
    if attention:
        from fastft.patching import attention as attn_mod

        yield "attention", attn_mod.apply
    if loss:
        from fastft.patching import loss as loss_mod

        yield "loss", loss_mod.apply
    if lora is not None:
        from fastft.lora import patch_component

        yield "lora", lambda model, family: patch_component(model, family, **lora)


def patch(
    model: nn.Module,
    *,
    attention: bool = True,
    loss: bool = True,
    lora: dict[str, Any] | None = None,
) -> nn.Module:
    """Install fastft's fused parts into ``model`` (in place, this instance only) and return it.

    Args:
        attention: route attention through fastft's kernel (AttentionInterface name ``"fastft"``).
        loss: replace the model's loss with fastft's fused losses (linear+CE for causal LM).
        lora: if given, kwargs for :func:`fastft.add_lora` (r, alpha, dropout, target_modules ...).
    """
    if is_patched(model):
        return model
    family = family_of(model)
    if family is None:
        log.warning(
            "fastft.patch: no family row for model_type %r; only family-independent parts are applied",
            getattr(getattr(model, "config", None), "model_type", None),
        )
    state = PatchState(family.name if family else None)
    try:
        for name, apply in _components(attention, loss, lora):
            undo = apply(model, family)
            if undo is not None:
                state.undo.append((name, undo))
    except BaseException:
        for _, undo in reversed(state.undo):
            undo()
        raise
    object.__setattr__(model, _ATTR, state)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch` on ``model``; a no-op on an unpatched model."""
    state: PatchState | None = getattr(model, _ATTR, None)
    if state is None:
        return model
    for _, undo in reversed(state.undo):
        undo()
    object.__delattr__(model, _ATTR)
    return model


def is_patched(model: nn.Module) -> bool:
    return getattr(model, _ATTR, None) is not None


def patched_parts(model: nn.Module) -> list[str]:
    """Names of the components active on ``model`` (for the trainer's start-up summary)."""
    state: PatchState | None = getattr(model, _ATTR, None)
    return [name for name, _ in state.undo] if state else []
