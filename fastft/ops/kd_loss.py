"""Fused knowledge distillation: :func:`kd_loss`, (1-alpha) CE + alpha T^2
KL(softmax(teacher/T) || softmax(student/T)) in one pass over the student and teacher rows, as the
custom op ``fastft::kd_loss`` (re-exported by :mod:`fastft.functional`).

The gradient is computed in the forward; the shared design and conventions are in
:mod:`fastft.ops._losses_common`. The per-row helpers here (:func:`_kd_rows`) also serve
:mod:`fastft.ops.linear_kd_loss`.
"""

import torch

from fastft import _backend
from fastft.ops._losses_common import (
    _EMPTY,
    _FLOATS,
    _acc,
    _check_rows,
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

__all__ = ["kd_loss"]


# ----------------------------------------------------------------------------- rows
def _kd_rows_torch(s, t, target, temperature, alpha, ignore_index, scale, compute_grad):
    """Reference KD for one block of rows; see :func:`kd_loss` for the math."""
    sf, tf = s.to(_acc(s.dtype)), t.to(_acc(s.dtype))
    T = temperature
    log_q = torch.log_softmax(sf / T, dim=1)
    log_p = torch.log_softmax(tf / T, dim=1)
    p = log_p.exp()
    # xlogy semantics: a teacher probability of exactly 0 contributes 0, like nn.KLDivLoss.
    kl = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=1)
    if target is None:
        loss = T * T * kl
        valid = None
    else:
        valid = target != ignore_index
        tgt = torch.where(valid, target, torch.zeros_like(target)).long()
        lse = torch.logsumexp(sf, dim=1)
        ce = lse - sf.gather(1, tgt[:, None]).squeeze(1)
        loss = (1.0 - alpha) * ce + alpha * T * T * kl
        loss = torch.where(valid, loss, torch.zeros_like(loss))
    if not compute_grad:
        return loss, None
    if target is None:
        g = T * (log_q.exp() - p)
        w = torch.ones_like(loss)
    else:
        g = (1.0 - alpha) * torch.exp(sf - lse[:, None]) + (alpha * T) * (log_q.exp() - p)
        g.scatter_add_(1, tgt[:, None], torch.full_like(loss, -(1.0 - alpha))[:, None])
        w = valid.to(sf.dtype)
    if scale is not None:
        w = w * scale.to(sf.dtype)
    g *= w[:, None]
    return loss, g.to(s.dtype)


def _kd_rows(s, t, target, temperature, alpha, ignore_index, scale, compute_grad, grad_out=None):
    """KD loss rows (+ student grad; the kernel writes it into ``grad_out`` when given, which may alias ``s``)."""
    if _backend.use_triton("kd_loss", s, unsupported=_kernel_unsupported(s, t)):
        from fastft.kernels.kd_loss import kd_forward

        if compute_grad and grad_out is None:
            grad_out = torch.empty_like(s)
        loss = kd_forward(
            s, t, target, temperature=temperature, alpha=alpha, ignore_index=ignore_index,
            scale=scale, grad_out=grad_out if compute_grad else None,
        )  # fmt: skip
        return loss, grad_out if compute_grad else None
    return _kd_rows_torch(s, t, target, temperature, alpha, ignore_index, scale, compute_grad)


# ----------------------------------------------------------------------------- op
@torch.library.custom_op("fastft::kd_loss", mutates_args=())
def _kd_op(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    temperature: float,
    alpha: float,
    ignore_index: int,
    reduction: int,
    compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    scale = _scale_tensor(target, student.shape[0], ignore_index, reduction, student)
    loss, grad = _kd_rows(student, teacher, target, temperature, alpha, ignore_index, scale, compute_grad)
    return _reduce(loss, target, ignore_index, reduction), grad if compute_grad else _EMPTY(student)


@_kd_op.register_fake
def _(student, teacher, target, temperature, alpha, ignore_index, reduction, compute_grad):
    return rows_fake(student, reduction, compute_grad)


register_rows_autograd(_kd_op, reduction_at=6, n_inputs=8)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    fp32_loss: bool = False,
) -> torch.Tensor:
    """Knowledge-distillation loss, one fused pass over the student and teacher rows.

    Per row (token / example) ``i`` with ``s = student_logits[i]``, ``t = teacher_logits[i]``::

        loss_i = (1 - alpha) * CE(s, target_i) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))

    With ``target=None`` there is no CE term and ``loss_i = T^2 * KL(...)`` (alpha is unused).

    Reduction is *per item* (a row of ``(N, V)``, or a position of ``(..., V)``):
    ``"mean"`` = sum_i loss_i / n_valid, which for 2-D inputs equals
    ``(1-alpha) * F.cross_entropy + alpha * T^2 * nn.KLDivLoss(reduction="batchmean")`` (for
    ``(B, S, V)`` inputs it divides by B*S, not by B as KLDivLoss's batchmean would);
    ``"sum"`` = sum_i loss_i; ``"none"`` = loss_i with the shape of the leading dims.
    Rows whose target is ``ignore_index`` are excluded from *both* terms (loss 0, no gradient,
    not counted in n_valid); with ``target=None`` every row counts. If every row is ignored,
    ``"mean"`` gives nan with zero gradient (like torch's cross_entropy).

    The gradient flows to ``student_logits`` only (the teacher is treated as a constant).
    """
    code = _reduction_code(reduction)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same shape"
        )
    lead = student_logits.shape[:-1]
    s, t = _flatten(student_logits, target)
    te, _ = _flatten(teacher_logits.detach(), None)
    _check_rows(s, t, "student_logits")
    if te.dtype not in _FLOATS:
        raise TypeError(f"teacher_logits must be floating; got {te.dtype}")
    # the teacher keeps its own dtype (e.g. fp32 teacher, bf16 student): both are read in fp32
    need = _needs_grad(student_logits)
    loss, _ = _kd_op(s, te, t, float(temperature), float(alpha), int(ignore_index), code, need)
    return _finish(loss, lead, code, student_logits.dtype, fp32_loss)
