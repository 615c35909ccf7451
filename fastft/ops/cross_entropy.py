"""Fused softmax cross-entropy: :func:`cross_entropy`, like ``F.cross_entropy`` on ``(N, V)`` /
``(..., V)`` logits, as the custom op ``fastft::cross_entropy`` (re-exported by
:mod:`fastft.functional`).

The gradient is computed in the forward, in the same pass over the row as the loss; the shared
design and conventions are in :mod:`fastft.ops._losses_common`. The per-row helpers here
(:func:`_ce_rows`) also serve :mod:`fastft.ops.linear_cross_entropy`.
"""

import torch

from fastft import _backend
from fastft.ops._losses_common import (
    _EMPTY,
    _acc,
    _check_rows,
    _class_weight,
    _finish,
    _flatten,
    _kernel_unsupported,
    _needs_grad,
    _reduce,
    _reduction_code,
    _scale_tensor,
    register_rows_autograd,
    rows_fake,
)

__all__ = ["cross_entropy"]


# ----------------------------------------------------------------------------- rows
def _ce_rows_torch(x, target, ignore_index, eps, scale, compute_grad, weight=None):
    """Reference for one block of rows: (loss_rows fp32 (n,), grad (n, V) in x.dtype or None).

    ``scale`` is None, a 0-dim tensor, or an (n,) tensor of per-row factors applied to the grad.
    ``weight``: None or (V,) class weights; the math is in :class:`_CrossEntropyInplace`.
    """
    if weight is not None:
        return _ce_rows_torch_weighted(x, target, ignore_index, eps, scale, compute_grad, weight)
    xf = x.to(_acc(x.dtype))
    V = xf.shape[1]
    valid = target != ignore_index
    tgt = torch.where(valid, target, torch.zeros_like(target)).long()
    lse = torch.logsumexp(xf, dim=1)
    xt = xf.gather(1, tgt[:, None]).squeeze(1)
    loss = lse - xt if eps == 0.0 else lse - (1.0 - eps) * xt - eps * xf.mean(dim=1)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if not compute_grad:
        return loss, None
    g = torch.sub(xf, lse[:, None]).exp_()
    if eps != 0.0:
        g -= eps / V
    g.scatter_add_(1, tgt[:, None], torch.full_like(xt, -(1.0 - eps))[:, None])
    w = valid.to(xf.dtype)
    if scale is not None:
        w = w * scale.to(xf.dtype)
    g *= w[:, None]
    return loss, g.to(x.dtype)


def _ce_rows_torch_weighted(x, target, ignore_index, eps, scale, compute_grad, weight):
    """:func:`_ce_rows_torch` with class weights w (torch's definition, W = sum_j w_j):
    loss = (1-eps) w_y (lse - x_y) + eps/V (W lse - sum_j w_j x_j)."""
    xf = x.to(_acc(x.dtype))
    w = weight.to(xf.dtype)
    V = xf.shape[1]
    valid = target != ignore_index
    tgt = torch.where(valid, target, torch.zeros_like(target)).long()
    lse = torch.logsumexp(xf, dim=1)
    xt = xf.gather(1, tgt[:, None]).squeeze(1)
    wt = w[tgt]
    loss = wt * (lse - xt)
    if eps != 0.0:
        loss = (1.0 - eps) * loss + (eps / V) * (w.sum() * lse - xf @ w)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if not compute_grad:
        return loss, None
    a = (1.0 - eps) * wt + (eps / V) * w.sum()
    g = torch.sub(xf, lse[:, None]).exp_().mul_(a[:, None])
    if eps != 0.0:
        g -= (eps / V) * w
    g.scatter_add_(1, tgt[:, None], (-(1.0 - eps) * wt)[:, None])
    r = valid.to(xf.dtype)
    if scale is not None:
        r = r * scale.to(xf.dtype)
    g *= r[:, None]
    return loss, g.to(x.dtype)


def _ce_rows(x, target, ignore_index, eps, scale, compute_grad, grad_out=None, must_write=False, weight=None):
    """Loss rows (+ grad). The kernel writes the grad into ``grad_out`` when given (it may alias
    ``x``); the torch path returns a fresh tensor unless ``must_write`` (saves a copy)."""
    if _backend.use_triton("cross_entropy", x, unsupported=_kernel_unsupported(x)):
        from fastft.kernels.cross_entropy import cross_entropy_forward

        if compute_grad and grad_out is None:
            grad_out = torch.empty_like(x)
        loss = cross_entropy_forward(
            x,
            target,
            ignore_index=ignore_index,
            label_smoothing=eps,
            scale=scale,
            grad_out=grad_out if compute_grad else None,
            weight=weight,
        )
        return loss, grad_out if compute_grad else None
    loss, g = _ce_rows_torch(x, target, ignore_index, eps, scale, compute_grad, weight)
    if g is not None and grad_out is not None and must_write:
        grad_out.copy_(g)
        g = grad_out
    return loss, g


# ----------------------------------------------------------------------------- op
@torch.library.custom_op("fastft::cross_entropy", mutates_args=())
def _cross_entropy_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    reduction: int,
    compute_grad: bool,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (fp32 loss (reduced, or (N,) for none), grad (N, V) in logits.dtype or empty)."""
    scale = _scale_tensor(target, logits.shape[0], ignore_index, reduction, logits, weight)
    loss, grad = _ce_rows(logits, target, ignore_index, label_smoothing, scale, compute_grad, weight=weight)
    return _reduce(loss, target, ignore_index, reduction, weight), grad if compute_grad else _EMPTY(logits)


@_cross_entropy_op.register_fake
def _(logits, target, ignore_index, label_smoothing, reduction, compute_grad, weight=None):
    return rows_fake(logits, reduction, compute_grad)


register_rows_autograd(_cross_entropy_op, reduction_at=4, n_inputs=7)


class _CrossEntropyInplace(torch.autograd.Function):
    """Eager-only variant that writes the gradient over the logits' storage (saves N*V memory).

    Forward: loss as in :func:`cross_entropy`; dlogits = scale * (softmax(x) - (1-eps) onehot - eps/V)
    is written into ``logits`` itself. Backward: dlogits * grad_loss (row-wise for ``none``).

    With class weights w (W = sum_j w_j, y the target, p = softmax(x)), per row
    loss = (1-eps) w_y (lse - x_y) + eps/V (W lse - sum_j w_j x_j), hence
    dloss/dx_k = ((1-eps) w_y + eps W/V) p_k - (1-eps) w_y [k = y] - eps/V w_k;
    ``mean`` divides by sum_i w_{y_i} over non-ignored rows (torch's ``weight=`` semantics).
    The logits' version counter is bumped so that any other autograd user of the logits fails
    loudly instead of silently reading gradients.
    """

    @staticmethod
    def forward(ctx, logits, target, ignore_index, label_smoothing, reduction, weight=None):
        scale = _scale_tensor(target, logits.shape[0], ignore_index, reduction, logits, weight)
        with torch.no_grad():
            loss, grad = _ce_rows(
                logits, target, ignore_index, label_smoothing, scale, True, grad_out=logits, must_write=True,
                weight=weight,
            )  # fmt: skip
        torch.autograd.graph.increment_version(logits)
        ctx.reduction = reduction
        ctx.save_for_backward(grad.detach())
        return _reduce(loss, target, ignore_index, reduction, weight)

    @staticmethod
    def backward(ctx, grad_loss):
        # the saved gradient already lives in the caller's logits: scale it there too, so the
        # whole loss costs no N x V buffer (a second backward through it fails the version check)
        (grad,) = ctx.saved_tensors
        grad.mul_(grad_loss[:, None] if ctx.reduction == 0 else grad_loss)
        return grad, None, None, None, None, None


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    inplace_backward: bool = False,
    fp32_loss: bool = False,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy of class-index targets, computed in one fused pass.

    Args:
        logits: ``(N, V)`` or ``(..., V)`` scores, fp32/fp16/bf16 (fp64 takes the torch path).
        target: ``(N,)`` or ``(...)`` int64 class indices in ``[0, V)`` or ``ignore_index``.
        reduction: ``"mean"`` (over non-ignored rows; nan if all are ignored, like torch),
            ``"sum"``, or ``"none"`` (shape of ``target``, 0 at ignored rows).
        weight: optional ``(V,)`` per-class weights, exactly torch's ``F.cross_entropy(weight=)``:
            row loss ``w[y] * nll`` (with label smoothing ``eps``:
            ``(1-eps) w[y] nll + eps/V * sum_j w[j] * (-log p_j)``); ``"mean"`` divides by
            ``sum_i w[y_i]`` over non-ignored rows, ``"sum"``/``"none"`` do not normalise. Any
            float dtype (used in fp32); no gradient flows to it.
        inplace_backward: overwrite ``logits`` with its gradient during the forward (saves one
            ``N x V`` buffer). Only when nothing else reads the logits afterwards; ignored under
            ``torch.compile``.
        fp32_loss: return the loss in fp32 instead of the logits' dtype.
    Returns the loss; its gradient flows to ``logits`` only.
    """
    code = _reduction_code(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]; got {label_smoothing}")
    lead = target.shape
    x, t = _flatten(logits, target)
    _check_rows(x, t)
    need = _needs_grad(logits)
    if inplace_backward and need and logits.is_leaf:
        raise ValueError(
            "inplace_backward=True would overwrite a leaf tensor; pass the logits an op produced"
        )
    w = _class_weight(weight, x)
    if inplace_backward and need and not torch.compiler.is_compiling():
        loss = _CrossEntropyInplace.apply(x, t, int(ignore_index), float(label_smoothing), code, w)
    else:
        loss, _ = _cross_entropy_op(x, t, int(ignore_index), float(label_smoothing), code, need, w)
    return _finish(loss, lead, code, logits.dtype, fp32_loss)
