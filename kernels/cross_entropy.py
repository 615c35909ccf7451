"""Online-softmax cross-entropy kernels over rows of logits (N, V).

One program per row. The vocabulary is walked in ``BLOCK_V`` chunks (V may be 2 or 256k) by the
aligned row walk of :mod:`fastft.kernels._softmax_rows`, so that the bulk of the loads are 16-byte
vectors whatever V and the row stride are:

* pass 1: running max ``m`` and running sum ``s = sum(exp(x - m))`` in fp32 (the online softmax),
  plus the row sum of the logits for label smoothing;
* pass 2 (only when a gradient is wanted): re-reads the row and writes
  ``dlogits = scale * (softmax(x) - (1 - eps) * onehot(target) - eps / V)`` in the logits' dtype.
  ``grad`` may alias ``logits`` (each block is read before it is overwritten), which is how the
  fused linear+CE reuses its logits buffer; no fp32 copy of the probabilities ever exists.

Optional per-class weights w (fp32, (V,)) follow torch's ``F.cross_entropy(weight=)`` (see the
row kernel's docstring). Small vocabularies (V <= 1024: classification heads) use a tiled variant
that handles a block of whole rows per program in one read. There is no backward kernel: the
gradient is produced by the forward (backward is a multiplication by the upstream gradient, done
by torch). The knowledge-distillation kernel is in :mod:`fastft.kernels.kd_loss`.
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
from fastft.kernels._utils import next_pow2

#: Rows with V <= _SMALL_V go to the tiled kernel (whole rows, _SMALL_TILE elements per program).
_SMALL_V = 1024
_SMALL_TILE = 4096


@triton.jit
def _ce_fold(state, args, off, c, cols, n_valid, MASKED: tl.constexpr):
    """Fold columns ``c + cols`` (logits at ``X + off + cols``) into the row statistics
    ``state = (max, sum exp, sx, sw)``; with smoothing sx = sum w_j x_j and sw = sum w_j (w = 1
    unweighted). A per-chunk function of :func:`_walk_row`."""
    X, W, HAS_SMOOTHING, HAS_WEIGHT = args
    m, s, sx, sw = state
    if MASKED:
        mask = cols < n_valid
        x = tl.load(X + off + cols, mask=mask, other=float("-inf")).to(tl.float32)
    else:
        x = tl.load(X + off + cols).to(tl.float32)
    m, s = _online_update(m, s, x)
    if HAS_SMOOTHING:
        if HAS_WEIGHT:
            if MASKED:
                w = tl.load(W + c + cols, mask=mask, other=0.0).to(tl.float32)
                sx += tl.sum(w * tl.where(mask, x, 0.0), axis=0)
            else:
                w = tl.load(W + c + cols).to(tl.float32)
                sx += tl.sum(w * x, axis=0)
            sw += tl.sum(w, axis=0)
        elif MASKED:
            sx += tl.sum(tl.where(mask, x, 0.0), axis=0)
        else:
            sx += tl.sum(x, axis=0)
    return m, s, sx, sw


@triton.jit
def _ce_grad(state, args, off, c, cols, n_valid, MASKED: tl.constexpr):
    """dlogits of columns ``c + cols``: scale * (a p_k - b [k = y] - eps/V w_k), written at
    ``G + off + gshift``. A per-chunk function of :func:`_walk_row` (``state`` is a dummy)."""
    X, G, W, gshift, tgt, lse, a, b, eps_v, scale, HAS_SMOOTHING, HAS_WEIGHT = args
    k = c + cols
    if MASKED:
        mask = cols < n_valid
        x = tl.load(X + off + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        x = tl.load(X + off + cols).to(tl.float32)
    g = tl.exp(x - lse) * a
    if HAS_SMOOTHING:
        if HAS_WEIGHT:
            if MASKED:
                w = tl.load(W + k, mask=mask, other=0.0).to(tl.float32)
            else:
                w = tl.load(W + k).to(tl.float32)
            g = g - eps_v * w
        else:
            g = g - eps_v
    g = tl.where(k == tgt, g - b, g) * scale
    if MASKED:
        tl.store(G + off + gshift + cols, g.to(G.dtype.element_ty), mask=mask)
    else:
        tl.store(G + off + gshift + cols, g.to(G.dtype.element_ty))
    return state


@triton.jit
def _ce_row_loss(xt, wt, lse, sx, sw, V, eps, HAS_SMOOTHING: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """(loss, a, b) of a row from its statistics: the gradient is scale * (a p_k - b [k = y] - ...)."""
    if HAS_WEIGHT:
        if HAS_SMOOTHING:
            loss = (1.0 - eps) * wt * (lse - xt) + (eps / V) * (sw * lse - sx)
            a = (1.0 - eps) * wt + eps * sw / V
        else:
            loss = wt * (lse - xt)
            a = wt
        b = (1.0 - eps) * wt
    else:
        if HAS_SMOOTHING:
            loss = lse - (1.0 - eps) * xt - eps * (sx / V)
        else:
            loss = lse - xt
        a = 1.0
        b = 1.0 - eps
    return loss, a, b


@triton.jit
def _cross_entropy_fwd_kernel(
    X,
    stride_x,
    TARGET,
    LOSS,
    GRAD,
    stride_g,
    SCALE,
    WEIGHT,
    V,
    ignore_index,
    eps,
    BLOCK_V: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    SCALE_MODE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SAME_STRIDE: tl.constexpr,
):
    """Loss (and dlogits) of one row.

    X: logits (N, V), row stride ``stride_x`` (elements), unit column stride, fp32/fp16/bf16.
    TARGET: (N,) int32/int64 class indices; ``ignore_index`` rows get loss 0 and grad 0.
    LOSS: (N,) fp32 per-row loss. GRAD: (N, V) dlogits, row stride ``stride_g``; may be X itself.
    Unused unless COMPUTE_GRAD. SCALE: gradient scale, see :func:`_load_scale`.
    WEIGHT: (V,) fp32 class weights w (HAS_WEIGHT; else w = 1). SAME_STRIDE: stride_g == stride_x.
    With eps the smoothing, y the target, p = softmax(x), W = sum_j w_j (torch's definition):
      loss = (1-eps) w_y (lse - x_y) + eps/V (W lse - sum_j w_j x_j)
      dlogits_k = scale * (((1-eps) w_y + eps W/V) p_k - (1-eps) w_y [k = y] - eps/V w_k).
    """
    row = tl.program_id(0).to(tl.int64)
    xbase = row * stride_x
    gbase = row * stride_g
    if SAME_STRIDE:
        gshift = 0
    else:
        gshift = gbase - xbase
    tgt = tl.load(TARGET + row).to(tl.int64)
    if tgt == ignore_index:
        tl.store(LOSS + row, 0.0)
        if COMPUTE_GRAD:
            _zero_row(GRAD, gbase, V, BLOCK_V)
    else:
        tl.device_assert((tgt >= 0) & (tgt < V), "cross_entropy: target out of [0, V)")
        zero = tl.zeros((), tl.float32)
        m, s, sx, sw = _walk_row(_ce_fold, (tl.full((), float("-inf"), tl.float32), zero, zero, zero),
                                 (X, WEIGHT, HAS_SMOOTHING, HAS_WEIGHT), xbase, V, BLOCK_V)  # fmt: skip
        lse = m + tl.log(s)
        xt = tl.load(X + xbase + tgt).to(tl.float32)
        if HAS_WEIGHT:
            wt = tl.load(WEIGHT + tgt).to(tl.float32)
        else:
            wt = 1.0
        loss, a, b = _ce_row_loss(xt, wt, lse, sx, sw, V, eps, HAS_SMOOTHING, HAS_WEIGHT)
        tl.store(LOSS + row, loss)
        if COMPUTE_GRAD:
            scale = _load_scale(SCALE, row, SCALE_MODE)
            args = (X, GRAD, WEIGHT, gshift, tgt, lse, a, b, eps / V, scale, HAS_SMOOTHING, HAS_WEIGHT)
            _walk_row(_ce_grad, tl.zeros((), tl.int32), args, xbase, V, BLOCK_V)


@triton.jit
def _cross_entropy_fwd_small_kernel(
    X,
    stride_x,
    TARGET,
    LOSS,
    GRAD,
    stride_g,
    SCALE,
    WEIGHT,
    N,
    V,
    ignore_index,
    eps,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    SCALE_MODE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
):
    """Small vocabularies (classification heads, V <= BLOCK_V): a tile of BLOCK_N whole rows per
    program, one read of each row. Same pointers, strides and math as
    :func:`_cross_entropy_fwd_kernel`; ``N`` bounds the last tile.
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    cols = tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    mask = row_ok[:, None] & col_ok[None, :]
    tgt = tl.load(TARGET + rows, mask=row_ok, other=ignore_index).to(tl.int64)
    valid = tgt != ignore_index
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
    m = tl.max(x, axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)  # padding rows (all masked): keep them finite
    e = tl.exp(x - m[:, None])
    ssum = tl.where(row_ok, tl.sum(e, axis=1), 1.0)
    lse = m + tl.log(ssum)
    is_t = cols[None, :] == tgt[:, None]
    xt = tl.sum(tl.where(is_t & mask, x, 0.0), axis=1)
    if HAS_WEIGHT:
        wt = tl.load(WEIGHT + tgt, mask=row_ok & valid, other=0.0).to(tl.float32)
        w = tl.load(WEIGHT + cols, mask=col_ok, other=0.0).to(tl.float32)
        if HAS_SMOOTHING:
            sw = tl.sum(w, axis=0)
            swx = tl.sum(w[None, :] * tl.where(mask, x, 0.0), axis=1)
            loss = (1.0 - eps) * wt * (lse - xt) + (eps / V) * (sw * lse - swx)
            a = (1.0 - eps) * wt + eps * sw / V
        else:
            loss = wt * (lse - xt)
            a = wt
        b = (1.0 - eps) * wt
    else:
        if HAS_SMOOTHING:
            sx = tl.sum(tl.where(mask, x, 0.0), axis=1)
            loss = lse - (1.0 - eps) * xt - eps * (sx / V)
        else:
            loss = lse - xt
    tl.store(LOSS + rows, tl.where(valid, loss, 0.0), mask=row_ok)
    if COMPUTE_GRAD:
        if SCALE_MODE == 0:
            scale = tl.full([BLOCK_N], 1.0, tl.float32)
        elif SCALE_MODE == 1:
            scale = tl.full([BLOCK_N], 1.0, tl.float32) * tl.load(SCALE).to(tl.float32)
        else:
            scale = tl.load(SCALE + rows, mask=row_ok, other=0.0).to(tl.float32)
        scale = tl.where(valid, scale, 0.0)
        g = e / ssum[:, None]
        if HAS_WEIGHT:
            g = g * a[:, None]
            if HAS_SMOOTHING:
                g = g - (eps / V) * w[None, :]
            g = tl.where(is_t, g - b[:, None], g) * scale[:, None]
        else:
            if HAS_SMOOTHING:
                g = g - eps / V
            g = tl.where(is_t, g - (1.0 - eps), g) * scale[:, None]
        tl.store(GRAD + rows[:, None] * stride_g + cols[None, :], g.to(GRAD.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launcher


def _weight_arg(weight: torch.Tensor | None, V: int, device) -> torch.Tensor | None:
    if weight is None:
        return None
    if weight.shape != (V,):
        raise ValueError(f"weight must be ({V},), one per class; got {tuple(weight.shape)}")
    return weight.to(device=device, dtype=torch.float32).contiguous()


def cross_entropy_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    scale: torch.Tensor | None = None,
    grad_out: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    block_v: int | None = None,
) -> torch.Tensor:
    """Per-row CE losses (fp32, (N,)); if ``grad_out`` is given, scaled dlogits are written into it.

    ``grad_out`` may be ``logits`` itself (in place). ``scale``: None, a 0-dim tensor (e.g.
    1/n_valid) or an (N,) tensor of per-row factors. ``weight``: None or (V,) per-class weights
    (torch's ``F.cross_entropy(weight=)`` per-row losses, unreduced). ``block_v`` overrides the
    chunk of the row-looping kernel (tests use it to exercise many chunks in the interpreter).
    """
    x = _rows(logits, "logits")
    N, V = x.shape
    target = target.contiguous()
    _check_targets(target, V, ignore_index)
    loss = torch.empty(N, dtype=torch.float32, device=x.device)
    if N == 0:
        return loss
    g = _grad_arg(grad_out, x)
    sc, mode = _scale_args(scale, N, x.device)
    w = _weight_arg(weight, V, x.device)
    if V <= _SMALL_V and block_v is None:
        bv = next_pow2(V)
        block_n = max(1, min(_SMALL_TILE // bv, next_pow2(N)))
        _cross_entropy_fwd_small_kernel[(triton.cdiv(N, block_n),)](
            x, x.stride(0), target, loss,
            g if g is not None else x, g.stride(0) if g is not None else 0,
            sc if sc is not None else loss, w if w is not None else loss,
            N, V, int(ignore_index), float(label_smoothing),
            BLOCK_N=block_n, BLOCK_V=bv, HAS_SMOOTHING=label_smoothing != 0.0,
            COMPUTE_GRAD=g is not None, SCALE_MODE=mode, HAS_WEIGHT=w is not None, num_warps=4,
        )  # fmt: skip
        return loss
    block, warps = _config(V, x.element_size())
    block = block_v or block
    _cross_entropy_fwd_kernel[(N,)](
        x, x.stride(0), target, loss,
        g if g is not None else x, g.stride(0) if g is not None else x.stride(0),
        sc if sc is not None else loss, w if w is not None else loss,
        V, int(ignore_index), float(label_smoothing),
        BLOCK_V=block, HAS_SMOOTHING=label_smoothing != 0.0, COMPUTE_GRAD=g is not None, SCALE_MODE=mode,
        HAS_WEIGHT=w is not None, SAME_STRIDE=g is None or g.stride(0) == x.stride(0), num_warps=warps,
    )  # fmt: skip
    return loss
