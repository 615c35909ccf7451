"""Fused losses: softmax cross-entropy, knowledge distillation, and linear + cross-entropy.

Public functions (re-exported by :mod:`fastft.functional`):

* :func:`cross_entropy` -- like ``F.cross_entropy`` on ``(N, V)`` / ``(..., V)`` logits.
* :func:`kd_loss` -- (1-alpha) CE + alpha T^2 KL(softmax(teacher/T) || softmax(student/T)).
* :func:`linear_cross_entropy` -- CE of ``hidden @ weight.T + bias`` without ever holding the
  full ``(tokens, V)`` logits (chunks of rows: GEMM -> CE kernel in place -> two GEMMs).
* :func:`linear_kd_loss` -- the same for KD, from the student's and the teacher's hidden states.

Design (shared by all): the gradient with respect to the logits is computed in the
*forward* pass, in the same pass over the row that computes the loss (the softmax is needed for
both), already multiplied by the reduction's scale (1/n_valid for ``mean``). Backward is then only
a multiplication by the upstream gradient. No fp32 copy of the probabilities is kept: the saved
gradient has the logits' dtype. Statistics are accumulated in fp32 whatever the input dtype.

Every op is a ``torch.library.custom_op`` (``fastft::cross_entropy``, ``fastft::kd_loss``,
``fastft::linear_cross_entropy``, ``fastft::linear_kd_loss`` and their backwards) with ``register_autograd`` and
``register_fake``, so ``torch.compile`` (fullgraph) treats it as one opaque node. Inside, each
call picks the Triton kernel or the plain-torch reference through
:func:`fastft._backend.use_triton`; both compute the same math in fp32.

Conventions (all match ``torch.nn.functional.cross_entropy``):

* ``reduction="mean"`` divides by the number of non-ignored rows. If every row is ignored the
  loss is ``nan`` (0/0) and the gradient is zero, exactly like torch.
* ``label_smoothing=eps``: loss = (1-eps) * nll + eps * mean_j(-log p_j); ignored rows excluded.
* Class weights: ``cross_entropy(..., weight=w)`` / ``nn.CrossEntropyLoss(w)`` /
  ``linear_cross_entropy(..., class_weight=w)`` take a ``(V,)`` tensor with torch's ``weight=``
  semantics: row loss w[y] * nll, smoothed (1-eps) w[y] nll + eps/V sum_j w[j] (-log p_j), and
  ``mean`` = sum of row losses / sum_i w[y_i] over non-ignored rows (``sum``/``none``: unnormalised).
  The weights are constants (no gradient). KD has no class weights.
* The loss has the logits' (hidden's) dtype, like torch (fp32 under autocast, or with
  ``fp32_loss=True``); it is always computed in fp32.
* Low precision: the gradient is rounded to the logits' dtype once, in the forward; an upstream
  gradient that is not a power of two rounds it a second time in backward (<= 1 ulp instead of
  torch's 1/2 ulp). Training's upstream gradient is 1 (or a power-of-two loss scale): exact.
"""

import torch

from fastft import _backend

__all__ = ["cross_entropy", "kd_loss", "linear_cross_entropy", "linear_kd_loss", "linear_ce_wgrad_path"]

_REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _reduction_code(reduction: str) -> int:
    try:
        return _REDUCTIONS[reduction]
    except KeyError:
        raise ValueError(f"reduction={reduction!r} is not supported: use 'mean', 'sum' or 'none'") from None


def _check_rows(logits: torch.Tensor, target: torch.Tensor | None, name: str = "logits") -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} must be (N, V) after flattening; got shape {tuple(logits.shape)}")
    if logits.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a floating tensor (fp32/fp16/bf16/fp64); got {logits.dtype}")
    if target is not None:
        if target.dim() != 1 or target.shape[0] != logits.shape[0]:
            raise ValueError(
                f"target must have shape ({logits.shape[0]},) to match {name} {tuple(logits.shape)}; "
                f"got {tuple(target.shape)} (class-probability targets are not supported)"
            )
        if target.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"target must hold class indices (int64/int32); got {target.dtype}")


def _weight_sum(target: torch.Tensor, ignore_index: int, weight: torch.Tensor, dtype) -> torch.Tensor:
    """sum_i w[y_i] over non-ignored rows: the denominator of torch's weighted mean."""
    valid = target != ignore_index
    w_rows = weight.to(dtype)[torch.where(valid, target, torch.zeros_like(target)).long()]
    return torch.where(valid, w_rows, torch.zeros_like(w_rows)).sum()


def _scale_tensor(
    target: torch.Tensor | None, n_rows: int, ignore_index: int, code: int, ref, weight=None
) -> torch.Tensor:
    """Gradient scale of the reduction as a 0-dim fp32 tensor (no host sync).

    mean: 1/max(n_valid, 1) -- the clamp gives zero gradients when every row is ignored (torch's
    behaviour), while the loss itself is still divided by the true count (nan for 0/0). With class
    weights the count is sum_i w[y_i] (non-ignored), and a zero sum gives zero gradients.
    """
    dtype, device = _acc(ref.dtype), ref.device
    if code != 1:
        return torch.ones((), dtype=dtype, device=device)
    if target is None:
        return torch.full((), 1.0 / max(n_rows, 1), dtype=dtype, device=device)
    if weight is not None:
        den = _weight_sum(target, ignore_index, weight, dtype)
        return torch.where(den == 0, torch.zeros_like(den), 1.0 / den)
    n_valid = (target != ignore_index).sum().to(dtype)
    return 1.0 / n_valid.clamp(min=1.0)


def _reduce(
    loss_rows: torch.Tensor, target: torch.Tensor | None, ignore_index: int, code: int, weight=None
) -> torch.Tensor:
    """fp32 reduction of per-row losses (ignored rows hold 0); mean divides by sum_i w[y_i] with
    class weights, by the number of non-ignored rows without."""
    if code == 0:
        return loss_rows
    total = loss_rows.sum()
    if code == 2:
        return total
    if target is None:
        return total / loss_rows.shape[0]
    if weight is not None:
        return total / _weight_sum(target, ignore_index, weight, total.dtype)
    return total / (target != ignore_index).sum().to(total.dtype)


# ----------------------------------------------------------------------------- torch reference rows
def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: fp32, or fp64 for fp64 inputs (so a float64 check is exact)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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


# ----------------------------------------------------------------------------- dispatch
def _kernel_unsupported(*tensors: torch.Tensor) -> str | None:
    for t in tensors:
        if t is not None and t.dtype not in _KERNEL_DTYPES:
            return f"dtype {t.dtype} (kernel handles fp32/fp16/bf16)"
    return None


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


def _kd_rows(s, t, target, temperature, alpha, ignore_index, scale, compute_grad, grad_out=None):
    """KD loss rows (+ student grad; the kernel writes it into ``grad_out`` when given, which may alias ``s``)."""
    if _backend.use_triton("kd_loss", s, unsupported=_kernel_unsupported(s, t)):
        from fastft.kernels.cross_entropy import kd_forward

        if compute_grad and grad_out is None:
            grad_out = torch.empty_like(s)
        loss = kd_forward(
            s, t, target, temperature=temperature, alpha=alpha, ignore_index=ignore_index,
            scale=scale, grad_out=grad_out if compute_grad else None,
        )  # fmt: skip
        return loss, grad_out if compute_grad else None
    return _kd_rows_torch(s, t, target, temperature, alpha, ignore_index, scale, compute_grad)


_EMPTY = lambda ref: ref.new_empty(0)  # stands in for "no gradient computed" in op outputs


# ----------------------------------------------------------------------------- cross_entropy op
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
    loss = logits.new_empty((logits.shape[0],) if reduction == 0 else (), dtype=_acc(logits.dtype))
    return loss, torch.empty_like(logits) if compute_grad else logits.new_empty(0)


def _ce_setup(ctx, inputs, output):
    ctx.reduction = inputs[4]
    ctx.save_for_backward(output[1])


def _scaled_grad(ctx, grad_loss):
    """The one backward of every loss op: the saved, pre-scaled gradient times the upstream one."""
    (grad,) = ctx.saved_tensors
    if grad.numel() == 0:
        raise RuntimeError(
            "fastft loss: backward called but the forward ran without grad (compute_grad=False)"
        )
    if ctx.reduction == 0:
        return grad * grad_loss[:, None]
    return grad * grad_loss


def _ce_backward(ctx, grad_loss, _grad_grad):
    return _scaled_grad(ctx, grad_loss), None, None, None, None, None, None


_cross_entropy_op.register_autograd(_ce_backward, setup_context=_ce_setup)


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


def _flatten(logits: torch.Tensor, target: torch.Tensor | None):
    V = logits.shape[-1]
    x = logits.reshape(-1, V)
    if not x.is_contiguous() and x.stride(-1) != 1:
        x = x.contiguous()
    t = None if target is None else target.reshape(-1)
    return x, t


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _finish(loss: torch.Tensor, lead_shape, code: int, dtype: torch.dtype, keep_fp32: bool) -> torch.Tensor:
    """Shape the loss; return it in ``dtype`` like torch, or fp32 when asked or under autocast
    (torch autocasts cross_entropy to fp32)."""
    if code == 0:
        loss = loss.reshape(lead_shape)
    if keep_fp32 or torch.is_autocast_enabled(loss.device.type):
        return loss
    return loss.to(dtype)


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


def _class_weight(weight: torch.Tensor | None, x: torch.Tensor, name: str = "weight") -> torch.Tensor | None:
    """Validated (V,) class weights, detached, in the accumulation dtype on the logits' device."""
    if weight is None:
        return None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or weight.shape[0] != x.shape[1]:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be a 1-D tensor of {x.shape[1]} class weights; got {shape}")
    if not weight.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor; got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"{name} is on {weight.device} but the logits are on {x.device}; move it first")
    return weight.detach().to(_acc(x.dtype)).contiguous()


# ----------------------------------------------------------------------------- kd_loss op
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
    loss = student.new_empty((student.shape[0],) if reduction == 0 else (), dtype=_acc(student.dtype))
    return loss, torch.empty_like(student) if compute_grad else student.new_empty(0)


def _kd_setup(ctx, inputs, output):
    ctx.reduction = inputs[6]
    ctx.save_for_backward(output[1])


def _kd_backward(ctx, grad_loss, _grad_grad):
    return _scaled_grad(ctx, grad_loss), None, None, None, None, None, None, None


_kd_op.register_autograd(_kd_backward, setup_context=_kd_setup)


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


# ----------------------------------------------------------------------------- linear + CE
#: Bytes the chunk of logits may occupy (at least); the chunk grows with the hidden states.
_MIN_CHUNK_BYTES = 64 << 20


def choose_chunk_rows(n_rows: int, hidden: int, vocab: int, elem_size: int) -> int:
    """Rows of logits computed at once: the chunk of logits is about 2x the hidden states and at
    least 64 MiB (big enough for an efficient GEMM), rounded to a multiple of 64 rows."""
    budget = max(2 * n_rows * hidden * elem_size, _MIN_CHUNK_BYTES)
    rows = budget // max(vocab * elem_size, 1)
    if rows >= 64:
        rows = rows // 64 * 64
    return int(max(1, min(n_rows, rows)))


#: (device type, input dtype) -> does ``aten::addmm.dtype_out`` really accumulate in fp32 there?
_DTYPE_OUT_OK: dict[tuple[str, torch.dtype], bool] = {}
#: The weight-gradient accumulation path the last mixed-dtype call took (see linear_ce_wgrad_path).
_WGRAD_PATH: str | None = None


def linear_ce_wgrad_path() -> str | None:
    """How the fused linear losses accumulated the head's weight gradient last (None: not yet):

    * ``"same-dtype"``: fp32 (or fp64) inputs, ``addmm_`` into the fp32 buffer;
    * ``"addmm-dtype-out"``: 16-bit inputs, cuBLAS writes the fp32 sum directly
      (``aten::addmm.dtype_out``, verified once per device/dtype to keep the fp32 bits);
    * ``"fp32-upcast"``: 16-bit inputs, the chunk's operands are cast to fp32 and ``addmm_``-ed
      (CPU, or a torch whose ``dtype_out`` is missing or rounds to 16 bits). Never a 16-bit product.
    """
    return _WGRAD_PATH


def _dtype_out_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Probe once (one host sync per process and dtype) that ``addmm.dtype_out`` keeps fp32 bits:
    1 + 2^-12 is exact in fp32 but rounds to 1 in bf16 and fp16."""
    key = (device.type, dtype)
    if key not in _DTYPE_OUT_OK:
        a = torch.ones(1, 2, dtype=dtype, device=device)
        b = torch.tensor([[1.0], [2.0**-12]], dtype=dtype, device=device)
        acc = torch.zeros(1, 1, dtype=torch.float32, device=device)
        try:
            torch.ops.aten.addmm.dtype_out(acc, a, b, torch.float32, out=acc)
            _DTYPE_OUT_OK[key] = acc.item() == 1.0 + 2.0**-12
        except (RuntimeError, AttributeError, NotImplementedError, TypeError):
            _DTYPE_OUT_OK[key] = False
    return _DTYPE_OUT_OK[key]


def _accumulate_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with ``acc`` fp32 and a, b possibly 16-bit, always accumulated in fp32.

    ``acc += a @ b`` in 16 bits would round every chunk's product to 8 (bf16) mantissa bits
    before the fp32 sum. On CUDA cuBLAS can write the fp32 result directly
    (``aten::addmm.dtype_out``, torch >= 2.8); otherwise the operands are upcast (costs an fp32
    copy of the chunk's dlogits, 2x the 16-bit chunk).
    """
    global _WGRAD_PATH
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
        _WGRAD_PATH = "same-dtype"
        return
    if acc.is_cuda and _dtype_out_ok(acc.device, a.dtype):
        torch.ops.aten.addmm.dtype_out(acc, a, b, acc.dtype, out=acc)
        _WGRAD_PATH = "addmm-dtype-out"
        return
    acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))
    _WGRAD_PATH = "fp32-upcast"


def _linear_loop(hidden, weight, bias, rows_fn, scale, need_h, need_w, need_b, chunk):
    """Chunked linear + loss. Returns (loss_rows, grad_hidden, grad_weight, grad_bias).

    For each chunk of rows: logits = h_c @ W^T + b (one GEMM, in the input dtype); ``rows_fn``
    (the CE or KD kernel) turns them into per-row losses and, in place, into dlogits scaled by
    ``scale``; then grad_h_c = dlogits @ W, grad_W += dlogits^T @ h_c, grad_b += sum(dlogits).
    grad_W/grad_b accumulate in fp32 and are returned unrounded (the caller rounds once, after
    applying the upstream gradient).
    """
    with torch.autocast(hidden.device.type, enabled=False):  # dtypes were settled by the caller
        N = hidden.shape[0]
        compute = need_h or need_w or need_b
        acc = _acc(hidden.dtype)
        loss = hidden.new_empty(N, dtype=acc)
        gh = torch.empty_like(hidden) if need_h else None
        gw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        gb = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        for start in range(0, N, chunk):
            end = min(start + chunk, N)
            h = hidden[start:end]
            logits = torch.addmm(bias, h, weight.t()) if bias is not None else h @ weight.t()
            sc = scale if scale is None or scale.dim() == 0 else scale[start:end]
            # the chunk of logits is our own buffer: the kernel writes dlogits over it
            loss[start:end], g = rows_fn(start, end, logits, sc, compute)
            if not compute:
                continue
            if need_h:
                torch.mm(g, weight, out=gh[start:end])
            if need_w:
                _accumulate_mm(gw, g.t(), h)
            if need_b:
                gb += g.sum(dim=0, dtype=acc)
            del logits, g
    return loss, gh, gw, gb


def _ce_rows_fn(target, ignore_index, eps, class_weight=None):
    def rows(start, end, logits, sc, compute):
        tgt = target[start:end]
        return _ce_rows(logits, tgt, ignore_index, eps, sc, compute, grad_out=logits, weight=class_weight)

    return rows


def _linear_ce_loop(
    hidden, weight, target, bias, ignore_index, eps, scale, need_h, need_w, need_b, chunk, class_weight=None
):
    rows = _ce_rows_fn(target, ignore_index, eps, class_weight)
    return _linear_loop(hidden, weight, bias, rows, scale, need_h, need_w, need_b, chunk)


def _grads_or_empty(ref, gh, gw, gb):
    return (
        gh if gh is not None else _EMPTY(ref),
        gw if gw is not None else _EMPTY(ref),
        gb if gb is not None else _EMPTY(ref),
    )


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
    eager = reduction != 0
    scale = _scale_tensor(target, hidden.shape[0], ignore_index, reduction, hidden, class_weight)
    loss, gh, gw, gb = _linear_ce_loop(
        hidden,
        weight,
        target,
        bias,
        ignore_index,
        label_smoothing,
        scale,
        need_h and eager,
        need_w and eager,
        need_b and eager,
        chunk,
        class_weight,
    )
    return (
        _reduce(loss, target, ignore_index, reduction, class_weight),
        *_grads_or_empty(hidden, gh, gw, gb),
    )


def _linear_fake(hidden, weight, bias, reduction, need_h, need_w, need_b):
    """Fake outputs shared by the linear CE and linear KD ops: (loss, grad_h, grad_w, grad_b);
    the grads are empty placeholders unless computed eagerly (reduction != "none")."""
    loss = hidden.new_empty((hidden.shape[0],) if reduction == 0 else (), dtype=_acc(hidden.dtype))
    eager = reduction != 0
    return (
        loss,
        torch.empty_like(hidden) if need_h and eager else hidden.new_empty(0),
        torch.empty_like(weight, dtype=_acc(weight.dtype)) if need_w and eager else hidden.new_empty(0),
        bias.new_empty(bias.shape, dtype=_acc(bias.dtype))
        if bias is not None and need_b and eager
        else hidden.new_empty(0),
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
    _, gh, gw, gb = _linear_ce_loop(
        hidden, weight, target, bias, ignore_index, label_smoothing, grad_rows, need_h, need_w, need_b, chunk,
        class_weight,
    )  # fmt: skip
    gw = gw.to(weight.dtype) if gw is not None else None
    gb = gb.to(bias.dtype) if gb is not None else None
    return _grads_or_empty(hidden, gh, gw, gb)


@_linear_ce_bwd_op.register_fake
def _(grad_rows, hidden, weight, target, bias, ignore_index, label_smoothing, chunk, need_h, need_w, need_b,
      class_weight=None):  # fmt: skip
    return (
        torch.empty_like(hidden) if need_h else hidden.new_empty(0),
        torch.empty_like(weight) if need_w else hidden.new_empty(0),
        bias.new_empty(bias.shape) if bias is not None and need_b else hidden.new_empty(0),
    )


def _lce_setup(ctx, inputs, output):
    hidden, weight, target, bias, ii, eps, reduction, chunk, need_h, need_w, need_b, cw = inputs
    ctx.args = (ii, eps, chunk, need_h, need_w, need_b)
    ctx.class_weight = cw
    ctx.reduction = reduction
    ctx.has_bias = bias is not None
    ctx.w_dtype = weight.dtype
    if reduction == 0:
        ctx.save_for_backward(hidden, weight, target, bias)
    else:
        ctx.save_for_backward(*output[1:])


def _lce_backward(ctx, grad_loss, _g1, _g2, _g3):
    ii, eps, chunk, need_h, need_w, need_b = ctx.args
    if ctx.reduction == 0:
        hidden, weight, target, bias = ctx.saved_tensors
        gh, gw, gb = _linear_ce_bwd_op(
            grad_loss, hidden, weight, target, bias, ii, eps, chunk, need_h, need_w, need_b, ctx.class_weight
        )
    else:
        gh, gw, gb = ctx.saved_tensors
        gh = gh * grad_loss
        # fp32-accumulated grads are scaled before their single rounding to the parameter dtype
        gw = (gw * grad_loss).to(ctx.w_dtype) if need_w else gw
        gb = (gb * grad_loss).to(ctx.w_dtype) if need_b and ctx.has_bias else gb
    return (
        gh if need_h else None,
        gw if need_w else None,
        None,
        gb if need_b and ctx.has_bias else None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


_linear_ce_op.register_autograd(_lce_backward, setup_context=_lce_setup)


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
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        # like F.linear under autocast: the GEMMs run in the autocast dtype (the casts are autograd
        # ops, so fp32 master weights still get their gradient); the loss math stays fp32
        cast = torch.get_autocast_dtype(dev)
        hidden, weight = hidden.to(cast), weight.to(cast)
        bias = bias.to(cast) if bias is not None else None
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
    grad_on = torch.is_grad_enabled()
    need_h = grad_on and hidden.requires_grad
    need_w = grad_on and weight.requires_grad
    need_b = grad_on and bias is not None and bias.requires_grad
    cw = _class_weight(class_weight, h.new_empty(0, V), "class_weight")
    loss, *_ = _linear_ce_op(
        h, weight, t, bias, int(ignore_index), float(label_smoothing), code, chunk, need_h, need_w, need_b, cw
    )
    return _finish(loss, lead, code, hidden.dtype, fp32_loss)


# ----------------------------------------------------------------------------- linear + KD
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
    eager = reduction != 0
    scale = _scale_tensor(target, hidden.shape[0], ignore_index, reduction, hidden)
    rows = _kd_rows_fn(teacher_hidden, teacher_weight, teacher_bias, target, temperature, alpha, ignore_index)
    loss, gh, gw, gb = _linear_loop(
        hidden, weight, bias, rows, scale, need_h and eager, need_w and eager, need_b and eager, chunk
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
    _, gh, gw, gb = _linear_loop(hidden, weight, bias, rows, grad_rows, need_h, need_w, need_b, chunk)
    gw = gw.to(weight.dtype) if gw is not None else None
    gb = gb.to(bias.dtype) if gb is not None else None
    return _grads_or_empty(hidden, gh, gw, gb)


@_linear_kd_bwd_op.register_fake
def _(grad_rows, hidden, weight, teacher_hidden, teacher_weight, target, bias, teacher_bias, temperature, alpha,
      ignore_index, chunk, need_h, need_w, need_b):  # fmt: skip
    return (
        torch.empty_like(hidden) if need_h else hidden.new_empty(0),
        torch.empty_like(weight) if need_w else hidden.new_empty(0),
        bias.new_empty(bias.shape) if bias is not None and need_b else hidden.new_empty(0),
    )


def _lkd_setup(ctx, inputs, output):
    (hidden, weight, th, tw, target, bias, tb, T, alpha, ii, reduction, chunk, need_h, need_w, need_b) = (
        inputs
    )
    ctx.args = (T, alpha, ii, chunk, need_h, need_w, need_b)
    ctx.reduction = reduction
    ctx.has_bias = bias is not None
    ctx.w_dtype = weight.dtype
    if reduction == 0:
        ctx.save_for_backward(hidden, weight, th, tw, target, bias, tb)
    else:
        ctx.save_for_backward(*output[1:])


def _lkd_backward(ctx, grad_loss, _g1, _g2, _g3):
    T, alpha, ii, chunk, need_h, need_w, need_b = ctx.args
    if ctx.reduction == 0:
        gh, gw, gb = _linear_kd_bwd_op(
            grad_loss, *ctx.saved_tensors, T, alpha, ii, chunk, need_h, need_w, need_b
        )
    else:
        gh, gw, gb = ctx.saved_tensors
        gh = gh * grad_loss
        gw = (gw * grad_loss).to(ctx.w_dtype) if need_w else gw
        gb = (gb * grad_loss).to(ctx.w_dtype) if need_b and ctx.has_bias else gb
    return (
        gh if need_h else None,
        gw if need_w else None,
        None,
        None,
        None,
        gb if need_b and ctx.has_bias else None,
        *([None] * 9),
    )


_linear_kd_op.register_autograd(_lkd_backward, setup_context=_lkd_setup)


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
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        cast = torch.get_autocast_dtype(dev)
        hidden, weight = hidden.to(cast), weight.to(cast)
        bias = bias.to(cast) if bias is not None else None
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
    grad_on = torch.is_grad_enabled()
    need_h = grad_on and hidden.requires_grad
    need_w = grad_on and weight.requires_grad
    need_b = grad_on and bias is not None and bias.requires_grad
    loss, *_ = _linear_kd_op(
        h, weight, th, tw, t, bias, tb, float(temperature), float(alpha), int(ignore_index), code, chunk,
        need_h, need_w, need_b,
    )  # fmt: skip
    return _finish(loss, lead, code, hidden.dtype, fp32_loss)
