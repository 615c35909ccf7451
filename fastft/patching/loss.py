"""Patch component: fastft's fused losses on one Hugging Face model instance.

Three per-instance mechanisms, all undone by the returned callable:

1. ``model.loss_function`` (transformers' own per-model hook: an instance attribute shadows
   ``LOSS_MAPPING[model.loss_type]``) is replaced for ``ForCausalLM``, ``ForMaskedLM`` and
   ``ForSequenceClassification`` by versions with HF's exact semantics (shift-by-one,
   ``num_items_in_batch``, ``ignore_index``, problem_type inference) that call
   :func:`fastft.functional.cross_entropy`.
2. Causal LM with ``labels`` (family ``causal``, an ``nn.Linear`` output embedding, no logit
   soft-capping): a forward pre-hook takes the labels out of the call, the instance's ``lm_head``
   (``get_output_embeddings()``) computes :func:`fastft.functional.linear_cross_entropy` from its
   input hidden states instead of the logits, and a forward hook puts the loss back into the
   output. The full ``(tokens, V)`` logits are never materialised and ``output.logits`` is None.
   Pass ``fastft_keep_logits=True`` to the forward call to get the logits (HF computes them and
   the loss goes through mechanism 1 instead).
3. Sequence classification models whose forward computes ``CrossEntropyLoss`` inline instead of
   calling ``self.loss_function`` (BERT, GPT-2 in transformers 5): the same pre/post hooks move
   the labels around the forward and compute the loss with HF's rules (these models ignore
   ``num_items_in_batch``, so the patched loss ignores it too).

Calls with ``return_dict=False`` or labels passed positionally keep HF's own control flow
(mechanism 1 still applies).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastft.ops.cross_entropy import cross_entropy
from fastft.ops.linear_cross_entropy import linear_cross_entropy

__all__ = ["apply", "causal_lm_loss", "masked_lm_loss", "sequence_classification_loss"]

_STATE = "_fastft_loss_state"
_KEEP_LOGITS = "fastft_keep_logits"


# ----------------------------------------------------------------------------- HF-compatible losses
def _ce_like_hf(logits, target, num_items_in_batch=None, ignore_index: int = -100) -> torch.Tensor:
    """transformers' ``fixed_cross_entropy``: mean, or sum / num_items_in_batch; fp32 loss."""
    if num_items_in_batch is None:
        return cross_entropy(logits, target, ignore_index=ignore_index, fp32_loss=True)
    loss = cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum", fp32_loss=True)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def _shift(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Position i predicts token i+1; the last position has no target."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def causal_lm_loss(
    logits,
    labels,
    vocab_size: int,
    num_items_in_batch=None,
    ignore_index: int = -100,
    shift_labels=None,
    **kwargs,
) -> torch.Tensor:
    """Drop-in for transformers' ``ForCausalLMLoss``."""
    if shift_labels is None:
        shift_labels = _shift(labels, ignore_index)
    logits = logits.reshape(-1, vocab_size)
    shift_labels = shift_labels.reshape(-1).to(logits.device)
    return _ce_like_hf(logits, shift_labels, num_items_in_batch, ignore_index)


def masked_lm_loss(
    logits, labels, vocab_size: int, num_items_in_batch=None, ignore_index: int = -100, **kwargs
) -> torch.Tensor:
    """Drop-in for transformers' ``ForMaskedLMLoss``."""
    logits = logits.reshape(-1, vocab_size)
    return _ce_like_hf(logits, labels.reshape(-1).to(logits.device), num_items_in_batch, ignore_index)


def sequence_classification_loss(labels, pooled_logits, config, **kwargs) -> torch.Tensor:
    """Drop-in for transformers' ``ForSequenceClassificationLoss`` (CE via fastft; MSE/BCE as HF)."""
    num_labels = config.num_labels
    if config.problem_type is None:  # HF infers and stores it on the config; so do we
        if num_labels == 1:
            config.problem_type = "regression"
        elif num_labels > 1 and labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    labels = labels.to(pooled_logits.device)
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(pooled_logits.squeeze(), labels.squeeze())
        return F.mse_loss(pooled_logits, labels)
    if config.problem_type == "single_label_classification":
        return _ce_like_hf(
            pooled_logits.reshape(-1, num_labels),
            labels.reshape(-1),
            kwargs.get("num_items_in_batch"),
            kwargs.get("ignore_index", -100),
        )
    if config.problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(pooled_logits, labels)
    raise RuntimeError(f"Invalid problem type: {config.problem_type}")


def _hf_signature_loss(fn: Callable) -> Callable:
    """``ForSequenceClassification`` is called as loss_function(logits=, labels=, pooled_logits=, config=)."""

    def loss_function(logits=None, labels=None, pooled_logits=None, config=None, **kwargs):
        return fn(labels, pooled_logits if pooled_logits is not None else logits, config, **kwargs)

    return loss_function


_LOSS_FUNCTIONS: dict[str, Callable] = {
    "ForCausalLM": causal_lm_loss,
    "ForConditionalGeneration": causal_lm_loss,
    "ForMaskedLM": masked_lm_loss,
    "ForSequenceClassification": _hf_signature_loss(sequence_classification_loss),
    # ViT/DeiT/Swin/ResNet call loss_function(labels, logits, config) positionally, ConvNeXt with
    # labels=, pooled_logits=, config=: both bind to this signature.
    "ForImageClassification": sequence_classification_loss,
}


# ----------------------------------------------------------------------------- hooks
@dataclasses.dataclass
class _Call:
    """One intercepted forward call (a stack, so re-entrant calls do not mix)."""

    kind: str  # "causal" | "seqcls"
    labels: torch.Tensor
    num_items_in_batch: Any = None
    ignore_index: int = -100
    shift_labels: torch.Tensor | None = None
    loss: torch.Tensor | None = None


@dataclasses.dataclass
class _State:
    model_undo: list[Callable[[], None]]
    calls: list[_Call | None] = dataclasses.field(default_factory=list)


def _uses_loss_function(model: nn.Module) -> bool:
    """Does the class's forward call ``self.loss_function``? (a name lookup in its bytecode)."""
    fwd = getattr(type(model).forward, "__wrapped__", type(model).forward)
    while hasattr(fwd, "__wrapped__"):
        fwd = fwd.__wrapped__
    code = getattr(fwd, "__code__", None)
    return code is None or "loss_function" in code.co_names


def _wants_dict(model: nn.Module, kwargs: dict) -> bool:
    rd = kwargs.get("return_dict")
    if rd is None:
        rd = getattr(model.config, "return_dict", True)
    return bool(rd)


def _rebuild(output, **changes):
    """A new ModelOutput of the same class (so that ``loss`` is first in ``to_tuple()``)."""
    if not dataclasses.is_dataclass(output):
        raise TypeError(f"fastft loss patch: unexpected model output {type(output).__name__}")
    values = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    values.update(changes)
    return type(output)(**values)


def _loss_type(model: nn.Module) -> str | None:
    """The LOSS_MAPPING key HF's ``loss_function`` property resolves to (ForCausalLM by default)."""
    from transformers.loss.loss_utils import LOSS_MAPPING

    lt = getattr(model, "loss_type", None)
    if not hasattr(type(model), "loss_function"):
        return None
    return lt if lt in LOSS_MAPPING else "ForCausalLM"


def _fused_causal_ok(model: nn.Module, family) -> nn.Linear | None:
    if family is None or not family.causal:
        return None
    if _loss_type(model) != "ForCausalLM" or not _uses_loss_function(model):
        return None
    cfg = model.config
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return None  # the logits are transformed after lm_head: the fused loss would be wrong
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if type(head) is nn.Linear else None


def apply(model: nn.Module, family) -> Callable[[], None] | None:
    """Install the fused losses on ``model`` (this instance only); returns the undo callable."""
    if getattr(model, _STATE, None) is not None:
        return None  # already patched (idempotent)
    undo: list[Callable[[], None]] = []
    loss_type = _loss_type(model)
    fn = _LOSS_FUNCTIONS.get(loss_type)
    if fn is not None:
        undo.append(_set_loss_function(model, fn))
    head = _fused_causal_ok(model, family)
    seqcls = loss_type == "ForSequenceClassification" and not _uses_loss_function(model)
    state = _State(undo)
    if head is not None or seqcls:
        undo.append(_install_label_hooks(model, "causal" if head is not None else "seqcls", state))
    if head is not None:
        undo.append(_install_fused_head(head, state))
    if not undo:
        return None
    object.__setattr__(model, _STATE, state)

    def undo_all():
        for u in reversed(undo):
            u()
        model.__dict__.pop(_STATE, None)

    return undo_all


def _set_loss_function(model: nn.Module, fn) -> Callable[[], None]:
    """transformers' per-instance ``loss_function`` hook -> the undo callable."""
    had = "_loss_function" in model.__dict__
    old = model.__dict__.get("_loss_function")
    model.loss_function = fn

    def restore():
        if had:
            model.__dict__["_loss_function"] = old
        else:
            model.__dict__.pop("_loss_function", None)

    return restore


def _install_label_hooks(model: nn.Module, kind: str, state: _State) -> Callable[[], None]:
    """Forward hooks that take ``labels`` away from HF's forward (so it computes no loss) and put the
    fused loss into its output; ``kind``: "causal" (the head computes it) or "seqcls"."""

    def pre_hook(module, args, kwargs):
        labels = kwargs.get("labels")
        keep = kwargs.pop(_KEEP_LOGITS, False)
        skip = labels is None or keep or not _wants_dict(module, kwargs)
        if skip or (kind == "causal" and kwargs.get("logits_to_keep", 0) not in (0, None)):
            state.calls.append(None)
            return args, kwargs
        kwargs = dict(kwargs)
        kwargs.pop("labels")
        call = _Call(kind, labels)
        if kind == "causal":
            call.num_items_in_batch = kwargs.get("num_items_in_batch")
            call.ignore_index = kwargs.get("ignore_index", -100)
            call.shift_labels = kwargs.get("shift_labels")
        state.calls.append(call)
        return args, kwargs

    def post_hook(module, args, kwargs, output):
        call = state.calls.pop() if state.calls else None
        if call is None or output is None:
            return None
        if call.kind == "causal":
            if call.loss is not None:
                return _rebuild(output, loss=call.loss, logits=None)
            # the patched head was not the one called (e.g. replaced after patching): HF
            # computed the logits, so take the loss from them with HF's semantics
            loss = causal_lm_loss(
                output.logits, call.labels, module.config.vocab_size, call.num_items_in_batch,
                call.ignore_index, call.shift_labels,
            )  # fmt: skip
            return _rebuild(output, loss=loss)
        loss = sequence_classification_loss(call.labels, output.logits, module.config)
        return _rebuild(output, loss=loss)

    handles = [
        model.register_forward_pre_hook(pre_hook, with_kwargs=True),
        model.register_forward_hook(post_hook, with_kwargs=True, always_call=True),
    ]
    return lambda: [h.remove() for h in handles]


def _install_fused_head(head: nn.Module, state: _State) -> Callable[[], None]:
    """The LM head's forward computes the fused linear-CE loss of the pending call instead of the
    (B, S, vocab) logits -> the undo callable."""
    head_forward = head.forward  # the bound class method (or an earlier instance wrapper)
    had_instance_forward = "forward" in head.__dict__

    def lm_head_forward(hidden: torch.Tensor, *rest, **kw):
        call = state.calls[-1] if state.calls else None
        if call is None or call.kind != "causal" or call.loss is not None:
            return head_forward(hidden, *rest, **kw)
        if call.shift_labels is not None:
            target = call.shift_labels
        else:
            target = _shift(call.labels, call.ignore_index)
        target = target.to(hidden.device).reshape(-1)
        h = hidden.reshape(-1, hidden.shape[-1])
        nib = call.num_items_in_batch
        loss = linear_cross_entropy(
            h, head.weight, target, head.bias, ignore_index=call.ignore_index,
            reduction="mean" if nib is None else "sum", fp32_loss=True,
        )  # fmt: skip
        if nib is not None:
            loss = loss / (nib.to(loss.device) if torch.is_tensor(nib) else nib)
        call.loss = loss
        # stands in for the logits HF would return; the post-hook drops it
        return hidden.new_empty((*hidden.shape[:-1], 0))

    head.forward = lm_head_forward

    def restore():
        if had_instance_forward:
            head.forward = head_forward
        else:
            head.__dict__.pop("forward", None)

    return restore
