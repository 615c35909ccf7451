"""Optimizers. :class:`FusedAdamW` = ``clip_grad_norm_`` + ``torch.optim.AdamW`` (+ AMP unscaling) fused."""

from fastft.optim.fused_adamw import FusedAdamW

__all__ = ["FusedAdamW"]
