"""``LoRALinear``: a frozen ``nn.Linear`` / GPT-2 ``Conv1D`` plus a trainable low-rank update.

Parameter names follow PEFT so an adapter maps 1:1 to PEFT's keys: ``<path>.lora_A.weight`` (r, in)
and ``<path>.lora_B.weight`` (out, r). The base weight/bias stay the *same* Parameter objects as in
the wrapped module and keep their names (``<path>.weight``, ``<path>.bias``), so the full model's
state dict still loads into the plain HF model (plus the extra ``lora_*`` keys).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fastft.ops.lora import lora_linear

__all__ = ["LoRALinear", "LoRAFactor", "is_conv1d", "supported_base"]


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 ``Conv1D``: weight (in, out), attribute ``nf`` = out features."""
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and getattr(module, "weight", None) is not None
    )


def supported_base(module: nn.Module) -> bool:
    return type(module) is nn.Linear or is_conv1d(module)


class LoRAFactor(nn.Module):
    """Holds one LoRA factor as ``.weight`` (PEFT's ``lora_A`` / ``lora_B`` naming), without being a Linear."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}"


class LoRALinear(nn.Module):
    """``y = base(x) + scaling · lora_B(lora_A(dropout(x)))`` through :func:`fastft.functional.lora_linear`.

    Args:
        base: the ``nn.Linear`` (weight (out, in)) or ``Conv1D`` (weight (in, out)) to wrap; its
            weight and bias objects are reused (not copied) and frozen.
        r: rank (>= 1).
        alpha: LoRA alpha; ``scaling = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: dropout probability on the LoRA input (training mode only).
        init: PEFT's default init (A kaiming-uniform(a=√5), B zeros: starts as the base model).
    """

    def __init__(
        self,
        base: nn.Module,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        use_rslora: bool = False,
        init: bool = True,
    ):
        super().__init__()
        if not supported_base(base):
            raise TypeError(f"LoRALinear wraps nn.Linear or transformers Conv1D, not {type(base).__name__}")
        if int(r) < 1:
            raise ValueError(f"LoRA rank r={r} must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout={dropout} must be in [0, 1)")
        self.weight_layout = "conv1d" if is_conv1d(base) else "linear"
        w = base.weight
        if self.weight_layout == "conv1d":
            self.in_features, self.out_features = w.shape[0], w.shape[1]
        else:
            self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.r = int(r)
        self.alpha = float(alpha)
        self.use_rslora = bool(use_rslora)
        self.scaling = self.alpha / (math.sqrt(self.r) if use_rslora else self.r)
        self.dropout = float(dropout)
        # the original module, not registered (it would duplicate the parameters); restored by
        # merge/remove. Its weight/bias are re-attached at restore time in case .to() swapped them.
        self.__dict__["base_layer"] = base
        w.requires_grad_(False)
        self.weight = w
        self.bias = base.bias
        # like PEFT (autocast_adapter_dtype): factors of a half-precision base are kept in fp32
        dt = (
            torch.float32
            if w.dtype in (torch.float16, torch.bfloat16) or not w.is_floating_point()
            else w.dtype
        )
        factory = {"device": w.device, "dtype": dt}
        self.lora_A = LoRAFactor(torch.empty(self.r, self.in_features, **factory))
        self.lora_B = LoRAFactor(torch.empty(self.out_features, self.r, **factory))
        if init:
            self.reset_lora_parameters()

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: Tensor) -> Tensor:
        p = self.dropout if self.training else 0.0
        return lora_linear(
            x,
            self.weight,
            self.bias,
            self.lora_A.weight,
            self.lora_B.weight,
            self.scaling,
            dropout_p=p,
            weight_layout=self.weight_layout,
        )

    @torch.no_grad()
    def delta_weight(self) -> Tensor:
        """``scaling · B·A`` in the base weight's layout and dtype (computed in fp32)."""
        d = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling
        if self.weight_layout == "conv1d":
            d = d.t()
        return d.to(self.weight.dtype)

    def restore_base(self) -> nn.Module:
        """The original module, with this layer's (possibly merged) weight and bias re-attached."""
        base = self.__dict__["base_layer"]
        base.weight = self.weight
        base.bias = self.bias
        return base

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
            f"scaling={self.scaling:g}, dropout={self.dropout}, layout={self.weight_layout}"
        )
