"""``nn.Module`` wrapper of fastft's attention (for code that composes modules rather than functions)."""

from __future__ import annotations

import torch
from torch import nn

from fastft.ops.attention import scaled_dot_product_attention, varlen_attention

__all__ = ["ScaledDotProductAttention"]


class ScaledDotProductAttention(nn.Module):
    """Stateless attention: ``forward(q, k, v, attention_mask=None)`` on (B, H, S, D) with a (B, S) mask.

    ``dropout`` is applied only in training mode. With ``cu_seqlens``/``max_seqlen`` given, q/k/v are
    packed (total, H, D) and :func:`fastft.functional.varlen_attention` is used.
    """

    def __init__(self, *, is_causal: bool = False, dropout: float = 0.0, scale: float | None = None) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ScaledDotProductAttention: dropout must be in [0, 1), got {dropout}")
        self.is_causal = is_causal
        self.dropout = dropout
        self.scale = scale

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        if cu_seqlens is not None:
            if attention_mask is not None:
                raise ValueError(
                    "ScaledDotProductAttention: pass either attention_mask or cu_seqlens, not both"
                )
            if max_seqlen is None:
                raise ValueError("ScaledDotProductAttention: cu_seqlens needs max_seqlen")
            return varlen_attention(q, k, v, cu_seqlens, max_seqlen, is_causal=self.is_causal, dropout_p=p,
                                    scale=self.scale)  # fmt: skip
        return scaled_dot_product_attention(
            q, k, v, attention_mask=attention_mask, is_causal=self.is_causal, dropout_p=p, scale=self.scale
        )

    def extra_repr(self) -> str:
        return f"is_causal={self.is_causal}, dropout={self.dropout}, scale={self.scale}"
