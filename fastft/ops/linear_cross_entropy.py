"""Fused linear + cross-entropy: :func:`linear_cross_entropy`, the CE of ``hidden @ weight.T + bias``
without ever holding the full ``(tokens, V)`` logits (chunks of rows: GEMM -> CE kernel in place ->
two GEMMs), as the custom ops ``fastft::linear_cross_entropy`` and its ``_backward`` (re-exported
by :mod:`fastft.functional`). The chunked driver is shared with :mod:`fastft.ops.linear_kd_loss`
(:mod:`fastft.ops._losses_common`).
"""

import torch

from fastft.ops._losses_common import (
    _check_rows,
    _class_weight,
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
    linear_ce_wgrad_path,
    linear_forward,
    need_flags,
    register_linear_autograd,
)
from fastft.ops.cross_entropy import _ce_rows

__all__ = ["linear_cross_entropy", "linear_ce_wgrad_path"]


def _ce_rows_fn(target, ignore_index, eps, class_weight=None):
    def rows(start, end, logits, sc, compute):
        tgt = target[start:end]
        return _ce_rows(logits, tgt, ignore_index, eps, sc, compute, grad_out=logits, weight=class_weight)

    return rows


@torch.library.custom_op("fastft::linear_cross_entropy", mutates_args=())
def _linear_ce_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    reduction: int,
    chunk: int,
    need_h: bool,
    need_w: bool,
    need_b: bool,
    class_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp32 loss, grad_hidden, grad_weight, grad_bias); grads computed here unless reduction is
    ``none`` (then backward recomputes the logits with the per-row upstream gradient)."""
    scale = _scale_tensor(target, hidden.shape[0], ignore_index, reduction, hidden, class_weight)
    rows = _ce_rows_fn(target, ignore_index, label_smoothing, class_weight)
    loss, gh, gw, gb = linear_forward(
        hidden, weight, bias, rows, scale, reduction, (need_h, need_w, need_b), chunk
    )
    return (
        _reduce(loss, target, ignore_index, reduction, class_weight),
        *_grads_or_empty(hidden, gh, gw, gb),
    )


@_linear_ce_op.register_fake
def _(hidden, weight, target, bias, ignore_index, label_smoothing, reduction, chunk, need_h, need_w, need_b,
      class_weight=None):  # fmt: skip
    return _linear_fake(hidden, weight, bias, reduction, need_h, need_w, need_b)


@torch.library.custom_op("fastft::linear_cross_entropy_backward", mutates_args=())
def _linear_ce_bwd_op(
    grad_rows: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    chunk: int,
    need_h: bool,
    need_w: bool,
    need_b: bool,
    class_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of ``reduction="none"``: recompute each chunk with dlogits scaled per row."""
    rows = _ce_rows_fn(target, ignore_index, label_smoothing, class_weight)
    return linear_backward(hidden, weight, bias, rows, grad_rows, (need_h, need_w, need_b), chunk)


@_linear_ce_bwd_op.register_fake
def _(grad_rows, hidden, weight, target, bias, ignore_index, label_smoothing, chunk, need_h, need_w, need_b,
      class_weight=None):  # fmt: skip
    return linear_bwd_fake(hidden, weight, bias, need_h, need_w, need_b)


register_linear_autograd(_linear_ce_op, _linear_ce_bwd_op, reduction_at=6, bias_at=3, need_at=(8, 9, 10))


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
    fp32_loss: bool = False,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, target)`` without materialising the logits.

    Args:
        hidden: ``(N, H)`` or ``(..., H)`` activations (the input of the LM head).
        weight: ``(V, H)`` head weight (``nn.Linear`` layout); ``bias``: ``(V,)`` or None.
        target: ``(N,)`` / ``(...)`` class indices or ``ignore_index``.
        chunk_size: rows of logits per step (default: :func:`choose_chunk_rows`, which keeps the
            chunk at ~2x the size of ``hidden`` and >= 64 MiB).
        class_weight: optional ``(V,)`` per-class weights, the ``weight=`` of
            :func:`cross_entropy` (renamed here because ``weight`` is the head's matrix).
    Memory: one ``(chunk, V)`` logits buffer (its gradient is written over it) plus the grads of
    hidden/weight/bias; never ``(N, V)``. For ``reduction="mean"/"sum"`` the grads are computed
    during the forward (3 GEMMs in all, like torch's linear + CE); for ``"none"`` backward
    recomputes the logits (4 GEMMs).
    """
    code = _reduction_code(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing}")
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"weight must be (V, H) with H = hidden.shape[-1] = {hidden.shape[-1]}; got {tuple(weight.shape)}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},); got {tuple(bias.shape)}")
    hidden, weight, bias = autocast_head(hidden, weight, bias)
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise TypeError(
            f"hidden ({hidden.dtype}), weight ({weight.dtype}) and bias must share a dtype; cast them first"
        )
    lead = target.shape
    h = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    t = target.reshape(-1)
    if t.shape[0] != h.shape[0]:
        raise ValueError(f"target has {t.shape[0]} items but hidden has {h.shape[0]} rows")
    _check_rows(h, t, "hidden")
    V, H = weight.shape
    chunk = int(chunk_size) if chunk_size else choose_chunk_rows(h.shape[0], H, V, h.element_size())
    need_h, need_w, need_b = need_flags(hidden, weight, bias)
    cw = _class_weight(class_weight, h.new_empty(0, V), "class_weight")
    loss, *_ = _linear_ce_op(
        h, weight, t, bias, int(ignore_index), float(label_smoothing), code, chunk, need_h, need_w, need_b, cw
    )
    return _finish(loss, lead, code, hidden.dtype, fp32_loss)
