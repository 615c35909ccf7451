"""Fused linear + knowledge distillation: :func:`linear_kd_loss`, the KD loss of
``hidden @ weight.T + bias`` against ``teacher_hidden @ teacher_weight.T + teacher_bias`` without
materialising either logits, as the custom ops ``fastft::linear_kd_loss`` and its ``_backward``
(re-exported by :mod:`fastft.functional`). Chunked by the driver it shares with
:mod:`fastft.ops.linear_cross_entropy` (:mod:`fastft.ops._losses_common`).
"""

import torch

from fastft.ops._losses_common import (
    _check_rows,
    _finish,
    _grads_or_empty,
    _linear_fake,
    _reduce,
    _reduction_code,
    _scale_tensor,
    autocast_head,
    choose_chunk_rows,
    linear_backward,
    linear_bwd_fake,
    linear_forward,
    need_flags,
    register_linear_autograd,
)
from fastft.ops.kd_loss import _kd_rows

__all__ = ["linear_kd_loss"]


def _kd_rows_fn(teacher_hidden, teacher_weight, teacher_bias, target, temperature, alpha, ignore_index):
    def rows(start, end, logits, sc, compute):
        th = teacher_hidden[start:end]
        with torch.no_grad():
            tl = (
                torch.addmm(teacher_bias, th, teacher_weight.t())
                if teacher_bias is not None
                else th @ teacher_weight.t()
            )
        tgt = target[start:end] if target is not None else None
        return _kd_rows(logits, tl, tgt, temperature, alpha, ignore_index, sc, compute, grad_out=logits)

    return rows


@torch.library.custom_op("fastft::linear_kd_loss", mutates_args=())
def _linear_kd_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    target: torch.Tensor | None,
    bias: torch.Tensor | None,
    teacher_bias: torch.Tensor | None,
    temperature: float,
    alpha: float,
    ignore_index: int,
    reduction: int,
    chunk: int,
    need_h: bool,
    need_w: bool,
    need_b: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, grad_hidden, grad_weight (fp32), grad_bias (fp32)); like ``fastft::linear_cross_entropy``."""
    scale = _scale_tensor(target, hidden.shape[0], ignore_index, reduction, hidden)
    rows = _kd_rows_fn(teacher_hidden, teacher_weight, teacher_bias, target, temperature, alpha, ignore_index)
    loss, gh, gw, gb = linear_forward(
        hidden, weight, bias, rows, scale, reduction, (need_h, need_w, need_b), chunk
    )
    return (_reduce(loss, target, ignore_index, reduction), *_grads_or_empty(hidden, gh, gw, gb))


@_linear_kd_op.register_fake
def _(hidden, weight, teacher_hidden, teacher_weight, target, bias, teacher_bias, temperature, alpha,
      ignore_index, reduction, chunk, need_h, need_w, need_b):  # fmt: skip
    return _linear_fake(hidden, weight, bias, reduction, need_h, need_w, need_b)


@torch.library.custom_op("fastft::linear_kd_loss_backward", mutates_args=())
def _linear_kd_bwd_op(
    grad_rows: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    target: torch.Tensor | None,
    bias: torch.Tensor | None,
    teacher_bias: torch.Tensor | None,
    temperature: float,
    alpha: float,
    ignore_index: int,
    chunk: int,
    need_h: bool,
    need_w: bool,
    need_b: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of ``reduction="none"``: recompute each chunk with dlogits scaled per row."""
    rows = _kd_rows_fn(teacher_hidden, teacher_weight, teacher_bias, target, temperature, alpha, ignore_index)
    return linear_backward(hidden, weight, bias, rows, grad_rows, (need_h, need_w, need_b), chunk)


@_linear_kd_bwd_op.register_fake
def _(grad_rows, hidden, weight, teacher_hidden, teacher_weight, target, bias, teacher_bias, temperature, alpha,
      ignore_index, chunk, need_h, need_w, need_b):  # fmt: skip
    return linear_bwd_fake(hidden, weight, bias, need_h, need_w, need_b)


register_linear_autograd(_linear_kd_op, _linear_kd_bwd_op, reduction_at=10, bias_at=5, need_at=(12, 13, 14))


def linear_kd_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    target: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int | None = None,
    fp32_loss: bool = False,
) -> torch.Tensor:
    """:func:`kd_loss` of ``hidden @ weight.T + bias`` (student) against
    ``teacher_hidden @ teacher_weight.T + teacher_bias`` without materialising either logits.

    Shapes: hidden ``(..., H)``, weight ``(V, H)``; teacher_hidden ``(..., Ht)`` with the same
    leading dims, teacher_weight ``(V, Ht)``; target ``(...)`` or None. Same math, reduction and
    ignore_index semantics as :func:`kd_loss`; gradients flow to hidden/weight/bias only (the
    teacher is a constant). Chunked like :func:`linear_cross_entropy`, with two logits buffers.
    """
    code = _reduction_code(reduction)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"weight must be (V, H) with H = {hidden.shape[-1]}; got {tuple(weight.shape)}")
    if teacher_weight.dim() != 2 or teacher_weight.shape[0] != weight.shape[0]:
        raise ValueError(
            f"teacher_weight must be (V={weight.shape[0]}, Ht); got {tuple(teacher_weight.shape)}"
        )
    if teacher_hidden.shape[:-1] != hidden.shape[:-1] or teacher_hidden.shape[-1] != teacher_weight.shape[1]:
        raise ValueError(
            f"teacher_hidden {tuple(teacher_hidden.shape)} must be {tuple(hidden.shape[:-1])} + "
            f"({teacher_weight.shape[1]},)"
        )
    hidden, weight, bias = autocast_head(hidden, weight, bias)
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise TypeError(f"hidden ({hidden.dtype}), weight ({weight.dtype}) and bias must share a dtype")
    # the teacher's logits are computed in the student's dtype (the kernel reads both rows alike)
    th = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1]).to(hidden.dtype).contiguous()
    tw = teacher_weight.detach().to(hidden.dtype)
    tb = teacher_bias.detach().to(hidden.dtype) if teacher_bias is not None else None
    lead = hidden.shape[:-1]
    h = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    t = target.reshape(-1) if target is not None else None
    _check_rows(h, t, "hidden")
    V, H = weight.shape
    chunk = (
        int(chunk_size)
        if chunk_size
        else choose_chunk_rows(h.shape[0], max(H, th.shape[1]), 2 * V, h.element_size())
    )
    need_h, need_w, need_b = need_flags(hidden, weight, bias)
    loss, *_ = _linear_kd_op(
        h, weight, th, tw, t, bias, tb, float(temperature), float(alpha), int(ignore_index), code, chunk,
        need_h, need_w, need_b,
    )  # fmt: skip
    return _finish(loss, lead, code, hidden.dtype, fp32_loss)
