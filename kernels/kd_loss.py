"""Knowledge-distillation kernel over rows of student and teacher logits (N, V).

One program per row, one pass over both rows (walked by the aligned row walk of
:mod:`fastft.kernels._softmax_rows`): online statistics of the student (T = 1 for the CE term and
at temperature T) and of the teacher at temperature T, with the KL bracket accumulated online;
then, when a gradient is wanted, a second pass writes the student's dlogits in its dtype (``grad``
may alias the student logits, as in the fused linear+KD). Statistics are fp32; row offsets int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastft.kernels._softmax_rows import (
    _check_targets,
    _config,
    _grad_arg,
    _load_scale,
    _online_update,
    _rows,
    _scale_args,
    _walk_row,
    _zero_row,
)


@triton.jit
def _kd_fold(state, args, off, c, cols, n_valid, MASKED: tl.constexpr):
    """Fold columns ``c + cols`` of the student (S + off) and teacher (T + off + tshift) rows into
    the online statistics of :func:`_kd_fwd_kernel`. A per-chunk function of :func:`_walk_row`."""
    S, T, tshift, inv_temp, HAS_TARGET = args
    m1, s1, m2, s2, m3, s3, acc = state
    if MASKED:
        mask = cols < n_valid
        xs = tl.load(S + off + cols, mask=mask, other=float("-inf")).to(tl.float32)
        xt = tl.load(T + off + tshift + cols, mask=mask, other=float("-inf")).to(tl.float32)
        sp = tl.where(mask, xs * inv_temp, 0.0)
    else:
        xs = tl.load(S + off + cols).to(tl.float32)
        xt = tl.load(T + off + tshift + cols).to(tl.float32)
        sp = xs * inv_temp
    if HAS_TARGET:
        m1, s1 = _online_update(m1, s1, xs)
    m2, s2 = _online_update(m2, s2, xs * inv_temp)
    tp = xt * inv_temp
    m3_new = tl.maximum(m3, tl.max(tp, axis=0))
    m3_safe = tl.where(m3_new == float("-inf"), 0.0, m3_new)
    e = tl.exp(tp - m3_safe)
    # e == 0 (masked or -inf teacher) contributes 0, like xlogy (avoids 0 * inf = nan)
    term = e * (tl.where(e > 0.0, tp, 0.0) - sp)
    r = tl.exp(m3 - m3_safe)
    s3 = s3 * r + tl.sum(e, axis=0)
    acc = acc * r + tl.sum(term, axis=0)
    return m1, s1, m2, s2, m3_new, s3, acc


@triton.jit
def _kd_grad(state, args, off, c, cols, n_valid, MASKED: tl.constexpr):
    """Student dlogits of columns ``c + cols``, written at ``G + off + gshift`` (see
    :func:`_kd_fwd_kernel`). A per-chunk function of :func:`_walk_row` (``state`` is a dummy)."""
    S, T, G, tshift, gshift, tgt, inv_temp, lse1, lse2, lse3, w_kl, alpha, scale, HAS_TARGET = args
    k = c + cols
    if MASKED:
        mask = cols < n_valid
        xs = tl.load(S + off + cols, mask=mask, other=0.0).to(tl.float32)
        xt = tl.load(T + off + tshift + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        xs = tl.load(S + off + cols).to(tl.float32)
        xt = tl.load(T + off + tshift + cols).to(tl.float32)
    q = tl.exp(xs * inv_temp - lse2)
    p = tl.exp(xt * inv_temp - lse3)
    g = w_kl * (q - p)
    if HAS_TARGET:
        g += (1.0 - alpha) * tl.exp(xs - lse1)
        g = tl.where(k == tgt, g - (1.0 - alpha), g)
    if MASKED:
        tl.store(G + off + gshift + cols, (g * scale).to(G.dtype.element_ty), mask=mask)
    else:
        tl.store(G + off + gshift + cols, (g * scale).to(G.dtype.element_ty))
    return state


@triton.jit
def _kd_fwd_kernel(
    S,
    stride_s,
    T,
    stride_t,
    TARGET,
    LOSS,
    GRAD,
    stride_g,
    SCALE,
    V,
    ignore_index,
    inv_temp,
    temp,
    alpha,
    BLOCK_V: tl.constexpr,
    HAS_TARGET: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    SCALE_MODE: tl.constexpr,
    SAME_STRIDE: tl.constexpr,
):
    """KD loss (and dlogits) of one row, one pass over both rows.

    S: student logits (N, V), row stride ``stride_s``; T: teacher logits (N, V), ``stride_t``.
    TARGET: (N,) class indices (unused unless HAS_TARGET). LOSS: (N,) fp32.
    GRAD: (N, V) student dlogits, row stride ``stride_g``. SCALE: see :func:`_load_scale`.
    SAME_STRIDE: stride_t == stride_g == stride_s (then all three rows share the alignment hint).
    With s' = s/T and t' = t/T (T = ``temp``):
      KL = sum p (log p - log q) = [sum_j e^(t'_j - mt) (t'_j - s'_j)] / st - lse(t') + lse(s'),
    accumulated online (the bracket is rescaled like the softmax sum when mt grows).
    loss = (1-alpha) CE(s, target) + alpha T^2 KL (with target), T^2 KL (without).
    dlogits = (1-alpha)(softmax(s) - onehot) + alpha T (q - p)  /  T (q - p).
    """
    row = tl.program_id(0).to(tl.int64)
    sbase = row * stride_s
    gbase = row * stride_g
    if SAME_STRIDE:
        tshift = 0
        gshift = 0
    else:
        tshift = row * stride_t - sbase
        gshift = gbase - sbase
    if HAS_TARGET:
        tgt = tl.load(TARGET + row).to(tl.int64)
        skip = tgt == ignore_index
    else:
        tgt = -1
        skip = False
    if skip:
        tl.store(LOSS + row, 0.0)
        if COMPUTE_GRAD:
            _zero_row(GRAD, gbase, V, BLOCK_V)
    else:
        if HAS_TARGET:
            tl.device_assert((tgt >= 0) & (tgt < V), "kd_loss: target out of [0, V)")
        ninf = tl.full((), float("-inf"), tl.float32)
        zero = tl.zeros((), tl.float32)
        # (max, sum exp) of the student (T = 1), the student / T and the teacher / T, then
        # acc = sum e^(t' - m3) (t' - s')
        state = (ninf, zero, ninf, zero, ninf, zero, zero)
        state = _walk_row(_kd_fold, state, (S, T, tshift, inv_temp, HAS_TARGET), sbase, V, BLOCK_V)
        m1, s1, m2, s2, m3, s3, acc = state
        lse2 = m2 + tl.log(s2)
        lse3 = m3 + tl.log(s3)
        kl = acc / s3 - lse3 + lse2
        if HAS_TARGET:
            lse1 = m1 + tl.log(s1)
            ce = lse1 - tl.load(S + sbase + tgt).to(tl.float32)
            loss = (1.0 - alpha) * ce + alpha * temp * temp * kl
            w_kl = alpha * temp
        else:
            lse1 = 0.0
            loss = temp * temp * kl
            w_kl = temp
        tl.store(LOSS + row, loss)
        if COMPUTE_GRAD:
            scale = _load_scale(SCALE, row, SCALE_MODE)
            args = (
                S,
                T,
                GRAD,
                tshift,
                gshift,
                tgt,
                inv_temp,
                lse1,
                lse2,
                lse3,
                w_kl,
                alpha,
                scale,
                HAS_TARGET,
            )
            _walk_row(_kd_grad, tl.zeros((), tl.int32), args, sbase, V, BLOCK_V)


# ----------------------------------------------------------------------------- launcher


def kd_forward(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
    ignore_index: int = -100,
    scale: torch.Tensor | None = None,
    grad_out: torch.Tensor | None = None,
    block_v: int | None = None,
) -> torch.Tensor:
    """Per-row KD losses (fp32, (N,)); scaled student dlogits written into ``grad_out`` if given."""
    s = _rows(student, "student_logits")
    t = _rows(teacher, "teacher_logits")
    if t.shape != s.shape:
        raise ValueError(f"teacher {tuple(t.shape)} must match student {tuple(s.shape)}")
    N, V = s.shape
    loss = torch.empty(N, dtype=torch.float32, device=s.device)
    if N == 0:
        return loss
    g = _grad_arg(grad_out, s)
    sc, mode = _scale_args(scale, N, s.device)
    tgt = target.contiguous() if target is not None else loss
    if target is not None:
        _check_targets(tgt, V, ignore_index)
    block, warps = _config(V, s.element_size())
    block = block_v or block
    same = t.stride(0) == s.stride(0) and (g is None or g.stride(0) == s.stride(0))
    _kd_fwd_kernel[(N,)](
        s, s.stride(0), t, t.stride(0), tgt, loss,
        g if g is not None else s, g.stride(0) if g is not None else s.stride(0),
        sc if sc is not None else loss,
        V, int(ignore_index), 1.0 / float(temperature), float(temperature), float(alpha),
        BLOCK_V=block, HAS_TARGET=target is not None, COMPUTE_GRAD=g is not None, SCALE_MODE=mode,
        SAME_STRIDE=same, num_warps=warps,
    )  # fmt: skip
    return loss
