"""``nn.Module`` wrappers of the fused losses in :mod:`fastft.ops` (cross_entropy, kd_loss, linear_cross_entropy, contrastive)."""

from __future__ import annotations

import torch
from torch import nn

from fastft.ops.contrastive import clip_loss, siglip_loss
from fastft.ops.cross_entropy import cross_entropy
from fastft.ops.kd_loss import kd_loss
from fastft.ops.linear_cross_entropy import linear_cross_entropy

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss", "KDLoss", "ContrastiveLoss"]


class CrossEntropyLoss(nn.Module):
    """Drop-in for ``nn.CrossEntropyLoss`` (class-index targets).

    ``weight``: optional ``(C,)`` per-class weights with torch's semantics (see
    :func:`fastft.functional.cross_entropy`); kept as a buffer, so ``.to(device)`` moves it and it
    is saved in the ``state_dict`` like torch's.
    ``forward(logits (N, C) or (..., C), target (N,) or (...)) -> loss``.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ):
        super().__init__()
        if weight is not None and (not isinstance(weight, torch.Tensor) or weight.dim() != 1):
            raise ValueError("weight must be a 1-D tensor with one weight per class")
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(
            logits,
            target,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            weight=self.weight,
        )

    def extra_repr(self) -> str:
        w = "" if self.weight is None else f"weight=({self.weight.shape[0]},), "
        return f"{w}ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"


class LinearCrossEntropyLoss(nn.Module):
    """CE of ``hidden @ weight.T + bias`` without the full logits (see :func:`linear_cross_entropy`).

    The head's parameters are passed in (so a model's own ``lm_head`` can be used):
    ``forward(hidden (..., H), weight (V, H), target (...), bias=None) -> loss``.
    """

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        chunk_size: int | None = None,
        class_weight: torch.Tensor | None = None,
    ):
        super().__init__()
        self.register_buffer("class_weight", class_weight)  # (V,) per-class weights or None
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.chunk_size = chunk_size

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        target: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return linear_cross_entropy(
            hidden,
            weight,
            target,
            bias,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
            class_weight=self.class_weight,
        )

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"


class KDLoss(nn.Module):
    """Distillation loss (see :func:`kd_loss` for the math and the per-item reduction).

    ``forward(student_logits, teacher_logits, target=None) -> loss``; the teacher gets no gradient.
    """

    def __init__(
        self,
        *,
        temperature: float = 2.0,
        alpha: float = 0.5,
        ignore_index: int = -100,
        reduction: str = "mean",
    ):
        super().__init__()
        self.temperature = temperature
        self.alpha = alpha
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        return kd_loss(
            student_logits,
            teacher_logits,
            target,
            temperature=self.temperature,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, reduction={self.reduction!r}"


class ContrastiveLoss(nn.Module):
    """Image-text contrastive loss: CLIP's symmetric InfoNCE (``kind="clip"``) or SigLIP's sigmoid loss
    (``kind="siglip"``); see :func:`fastft.functional.clip_loss` / :func:`~fastft.functional.siglip_loss`.

    ``forward(image_emb (B, D), text_emb (B, D), logit_scale, logit_bias=None) -> loss``; the temperature
    (and SigLIP's bias) are the model's parameters, passed in so they get their gradients.
    ``gather=True`` scores the local rows against the global batch under torchrun.
    """

    def __init__(self, kind: str = "clip", *, fused: bool = True, gather: bool = False):
        super().__init__()
        if kind not in ("clip", "siglip"):
            raise ValueError(f"kind must be 'clip' or 'siglip'; got {kind!r}")
        self.kind, self.fused, self.gather = kind, fused, gather

    def forward(
        self,
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.kind == "clip":
            return clip_loss(image_emb, text_emb, logit_scale, fused=self.fused, gather=self.gather)
        if logit_bias is None:
            raise ValueError("ContrastiveLoss(kind='siglip') needs the model's logit_bias")
        return siglip_loss(image_emb, text_emb, logit_scale, logit_bias, gather=self.gather)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, fused={self.fused}, gather={self.gather}"
