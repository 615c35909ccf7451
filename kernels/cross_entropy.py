"""Online-softmax cross-entropy and knowledge-distillation kernels over rows of logits (N, V).

One program per row. The vocabulary is walked in ``BLOCK_V`` chunks (V may be 2 or 256k):

* pass 1: running max ``m`` and running sum ``s = sum(exp(x - m))`` in fp32 (the online softmax),
  plus the row sum of the logits for label smoothing and, for KD, the teacher statistics;
* pass 2 (only when a gradient is wanted): re-reads the row and writes
  ``dlogits = scale * (softmax(x) - (1 - eps) * onehot(target) - eps / V)`` in the logits' dtype.
  ``grad`` may alias ``logits`` (each block is read before it is overwritten), which is how the
  fused linear+CE reuses its logits buffer; no fp32 copy of the probabilities ever exists.

Optional per-class weights w (fp32, (V,)) follow torch's ``F.cross_entropy(weight=)`` (see the
row kernel's docstring). Rows are walked so that the bulk of the loads are 16-byte vectors whatever
V and the row stride are (see "row walking" below).

Small vocabularies (V <= 1024: classification heads) use a tiled variant that handles a block of
whole rows per program in one read. There is no backward kernel: the gradient is produced by
the forward (backward is a multiplication by the upstream gradient, done by torch).

Row offsets are int64 (N * V overflows int32 at 16k tokens x 256k vocab).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastft.kernels._utils import INTERPRET, next_pow2

# ----------------------------------------------------------------------------- helpers


@triton.jit
def _online_update(m, s, x):
    """Fold a block ``x`` (fp32, masked entries = -inf) into the running (max, sum of exp)."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    # a row (so far) of -inf would give exp(-inf - -inf) = nan: shift by 0 instead
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), axis=0)
    return m_new, s


@triton.jit
def _load_scale(SCALE, row, SCALE_MODE: tl.constexpr):
    """SCALE_MODE 0: none (1.0); 1: one fp32 scalar at SCALE; 2: per-row fp32 SCALE[row]."""
    if SCALE_MODE == 0:
        scale = 1.0
    elif SCALE_MODE == 1:
        scale = tl.load(SCALE).to(tl.float32)
    else:
        scale = tl.load(SCALE + row).to(tl.float32)
    return scale


# ----------------------------------------------------------------------------- configs


def _config(V: int, elem_size: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps) for a row length.

    The kernels are bandwidth-bound; a block of 4-8k elements with 8-16 warps keeps enough
    loads in flight on Hopper. Not autotuned on purpose: the gradient may be written over the
    logits, and re-running a config on clobbered data would tune on garbage. In the interpreter
    one big block per row is fastest (numpy work per op, not per element).
    """
    if INTERPRET:
        return min(next_pow2(V), 16384), 1
    block = min(next_pow2(V), 8192 if elem_size <= 2 else 4096)
    # 8 warps at most: 16 warps (512 threads) cap a thread at 128 registers and the fwd spills there
    warps = 4 if block <= 1024 else 8
    return block, warps


#: Rows with V <= _SMALL_V go to the tiled kernel (whole rows, _SMALL_TILE elements per program).
_SMALL_V = 1024
_SMALL_TILE = 4096

# ----------------------------------------------------------------------------- row walking
# A row of V columns starting at element offset ``base`` is walked as
#   head: the < 16 columns that bring ``base`` to a multiple of 16 elements (one masked 16-wide load),
#   main: ``n_full`` whole BLOCK_V chunks, unmasked, with a multiple-of-16 hint on the offset,
#   tail: the < BLOCK_V columns left: a masked BLOCK_V load whose bound is the multiple of 16 below
#         what is left (so the mask is constant over aligned runs of 16: still vector loads), then
#         one masked 16-wide load for the last < 16 columns.
# Helpers take ``n_valid``, the number of in-bounds columns of their chunk (MASKED chunks only).
# Hints are applied in the kernel body: a jit helper's argument is a function parameter until
# inlining, and a ``multiple_of`` on it is lost. Other rows (grad, teacher) share the hinted offset
# plus a shift that is the constant 0 when their stride equals the first one's (SAME_STRIDE).
# Without the split every load carries ``cols < V`` and, when V is not a multiple of 16 (GPT-2's
# 50257, BERT's 30522), the compiler cannot prove any 16-byte run is in bounds or aligned: it emits
# 2-byte loads. The hint is true by construction; it yields vector loads when the tensor's base
# pointer is 16-byte aligned (which the JIT checks and specialises on), scalar ones otherwise.
_HEAD = tl.constexpr(16)


@triton.jit
def _row_split(base, V, BLOCK_V: tl.constexpr):
    """(head, n_full) for a row at element offset ``base`` (int64); see the comment above."""
    head = tl.minimum((16 - base % 16) % 16, V)
    n_full = (V - head) // BLOCK_V
    return head, n_full


@triton.jit
def _tail16(c, V):
    """Columns left after ``c`` (an aligned offset), rounded down to a multiple of 16, hinted."""
    return tl.multiple_of((V - c) // 16 * 16, 16)


@triton.jit
def _ce_fold(X, W, off, c, cols, n_valid, m, s, sx, sw,
             HAS_SMOOTHING: tl.constexpr, HAS_WEIGHT: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """Fold columns ``c + cols`` (logits at ``X + off + cols``) into the row statistics:
    (max, sum exp) always; with smoothing sx = sum w_j x_j and sw = sum w_j (w = 1 unweighted)."""
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
def _ce_grad(X, G, W, off, goff, c, cols, n_valid, tgt, lse, a, b, eps_v, scale,
             HAS_SMOOTHING: tl.constexpr, HAS_WEIGHT: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """dlogits of columns ``c + cols``: scale * (a p_k - b [k = y] - eps/V w_k), written at G + goff."""
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
        tl.store(G + goff + cols, g.to(G.dtype.element_ty), mask=mask)
    else:
        tl.store(G + goff + cols, g.to(G.dtype.element_ty))


@triton.jit
def _zero_row(G, gbase, V, BLOCK_V: tl.constexpr):
    """Zeros over one gradient row (ignored targets), walked head / main / tail like the loads."""
    head, n_full = _row_split(gbase, V, BLOCK_V)
    cols16 = tl.arange(0, 16)
    zero = tl.zeros([BLOCK_V], tl.float32).to(G.dtype.element_ty)
    tl.store(G + gbase + cols16, tl.zeros([16], tl.float32).to(G.dtype.element_ty), mask=cols16 < head)
    cols = tl.arange(0, BLOCK_V)
    for i in range(0, n_full):
        tl.store(G + tl.multiple_of(gbase + head + i * BLOCK_V, 16) + cols, zero)
    c = head + n_full * BLOCK_V
    tl.store(G + tl.multiple_of(gbase + c, 16) + cols, zero, mask=cols < _tail16(c, V))
    c2 = c + _tail16(c, V)
    tl.store(G + gbase + c2 + cols16, tl.zeros([16], tl.float32).to(G.dtype.element_ty), mask=cols16 < V - c2)


# ----------------------------------------------------------------------------- forward kernels


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
        cols = tl.arange(0, BLOCK_V)
        cols16 = tl.arange(0, _HEAD)
        head, n_full = _row_split(xbase, V, BLOCK_V)
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        sx = tl.zeros((), tl.float32)
        sw = tl.zeros((), tl.float32)
        m, s, sx, sw = _ce_fold(X, WEIGHT, xbase, 0, cols16, head, m, s, sx, sw,
                                HAS_SMOOTHING, HAS_WEIGHT, True)  # fmt: skip
        for i in range(0, n_full):
            c = head + i * BLOCK_V
            m, s, sx, sw = _ce_fold(X, WEIGHT, tl.multiple_of(xbase + c, 16), c, cols, V, m, s, sx, sw,
                                    HAS_SMOOTHING, HAS_WEIGHT, False)  # fmt: skip
        c = head + n_full * BLOCK_V
        m, s, sx, sw = _ce_fold(X, WEIGHT, tl.multiple_of(xbase + c, 16), c, cols, _tail16(c, V), m, s, sx, sw,
                                HAS_SMOOTHING, HAS_WEIGHT, True)  # fmt: skip
        c2 = c + _tail16(c, V)
        m, s, sx, sw = _ce_fold(X, WEIGHT, xbase + c2, c2, cols16, V - c2, m, s, sx, sw,
                                HAS_SMOOTHING, HAS_WEIGHT, True)  # fmt: skip
        lse = m + tl.log(s)
        xt = tl.load(X + xbase + tgt).to(tl.float32)
        if HAS_WEIGHT:
            wt = tl.load(WEIGHT + tgt).to(tl.float32)
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
        tl.store(LOSS + row, loss)
        if COMPUTE_GRAD:
            scale = _load_scale(SCALE, row, SCALE_MODE)
            eps_v = eps / V
            _ce_grad(X, GRAD, WEIGHT, xbase, gbase, 0, cols16, head, tgt, lse, a, b, eps_v, scale,
                     HAS_SMOOTHING, HAS_WEIGHT, True)  # fmt: skip
            for i in range(0, n_full):
                c = head + i * BLOCK_V
                xoff = tl.multiple_of(xbase + c, 16)
                _ce_grad(X, GRAD, WEIGHT, xoff, xoff + gshift, c, cols, V, tgt, lse, a, b, eps_v, scale,
                         HAS_SMOOTHING, HAS_WEIGHT, False)  # fmt: skip
            c = head + n_full * BLOCK_V
            xoff = tl.multiple_of(xbase + c, 16)
            _ce_grad(X, GRAD, WEIGHT, xoff, xoff + gshift, c, cols, _tail16(c, V), tgt, lse, a, b, eps_v, scale,
                     HAS_SMOOTHING, HAS_WEIGHT, True)  # fmt: skip
            c2 = c + _tail16(c, V)
            _ce_grad(X, GRAD, WEIGHT, xbase + c2, gbase + c2, c2, cols16, V - c2, tgt, lse, a, b, eps_v, scale,
                     HAS_SMOOTHING, HAS_WEIGHT, True)  # fmt: skip


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


@triton.jit
def _kd_fold(S, T, soff, toff, c, cols, n_valid, inv_temp, m1, s1, m2, s2, m3, s3, acc,
             HAS_TARGET: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """Fold columns ``c + cols`` of the student (S + soff) and teacher (T + toff) rows into the
    online statistics of :func:`_kd_fwd_kernel`."""
    if MASKED:
        mask = cols < n_valid
        xs = tl.load(S + soff + cols, mask=mask, other=float("-inf")).to(tl.float32)
        xt = tl.load(T + toff + cols, mask=mask, other=float("-inf")).to(tl.float32)
        sp = tl.where(mask, xs * inv_temp, 0.0)
    else:
        xs = tl.load(S + soff + cols).to(tl.float32)
        xt = tl.load(T + toff + cols).to(tl.float32)
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
def _kd_grad(S, T, G, soff, toff, goff, c, cols, n_valid, tgt, inv_temp, lse1, lse2, lse3, w_kl, alpha, scale,
             HAS_TARGET: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """Student dlogits of columns ``c + cols``, written at G + goff (see :func:`_kd_fwd_kernel`)."""
    k = c + cols
    if MASKED:
        mask = cols < n_valid
        xs = tl.load(S + soff + cols, mask=mask, other=0.0).to(tl.float32)
        xt = tl.load(T + toff + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        xs = tl.load(S + soff + cols).to(tl.float32)
        xt = tl.load(T + toff + cols).to(tl.float32)
    q = tl.exp(xs * inv_temp - lse2)
    p = tl.exp(xt * inv_temp - lse3)
    g = w_kl * (q - p)
    if HAS_TARGET:
        g += (1.0 - alpha) * tl.exp(xs - lse1)
        g = tl.where(k == tgt, g - (1.0 - alpha), g)
    if MASKED:
        tl.store(G + goff + cols, (g * scale).to(G.dtype.element_ty), mask=mask)
    else:
        tl.store(G + goff + cols, (g * scale).to(G.dtype.element_ty))


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
    tbase = row * stride_t
    gbase = row * stride_g
    if SAME_STRIDE:
        tshift = 0
        gshift = 0
    else:
        tshift = tbase - sbase
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
        cols = tl.arange(0, BLOCK_V)
        cols16 = tl.arange(0, _HEAD)
        head, n_full = _row_split(sbase, V, BLOCK_V)
        m1 = tl.full((), float("-inf"), tl.float32)  # student (T = 1)
        s1 = tl.zeros((), tl.float32)
        m2 = tl.full((), float("-inf"), tl.float32)  # student / T
        s2 = tl.zeros((), tl.float32)
        m3 = tl.full((), float("-inf"), tl.float32)  # teacher / T
        s3 = tl.zeros((), tl.float32)
        acc = tl.zeros((), tl.float32)  # sum e^(t' - m3) (t' - s')
        m1, s1, m2, s2, m3, s3, acc = _kd_fold(S, T, sbase, tbase, 0, cols16, head, inv_temp,
                                               m1, s1, m2, s2, m3, s3, acc, HAS_TARGET, True)  # fmt: skip
        for i in range(0, n_full):
            c = head + i * BLOCK_V
            soff = tl.multiple_of(sbase + c, 16)
            m1, s1, m2, s2, m3, s3, acc = _kd_fold(S, T, soff, soff + tshift, c, cols, V, inv_temp,
                                                   m1, s1, m2, s2, m3, s3, acc, HAS_TARGET, False)  # fmt: skip
        c = head + n_full * BLOCK_V
        soff = tl.multiple_of(sbase + c, 16)
        m1, s1, m2, s2, m3, s3, acc = _kd_fold(S, T, soff, soff + tshift, c, cols, _tail16(c, V), inv_temp,
                                               m1, s1, m2, s2, m3, s3, acc, HAS_TARGET, True)  # fmt: skip
        c2 = c + _tail16(c, V)
        m1, s1, m2, s2, m3, s3, acc = _kd_fold(S, T, sbase + c2, tbase + c2, c2, cols16, V - c2, inv_temp,
                                               m1, s1, m2, s2, m3, s3, acc, HAS_TARGET, True)  # fmt: skip
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
            _kd_grad(S, T, GRAD, sbase, tbase, gbase, 0, cols16, head, tgt, inv_temp, lse1, lse2, lse3, w_kl,
                     alpha, scale, HAS_TARGET, True)  # fmt: skip
            for i in range(0, n_full):
                c = head + i * BLOCK_V
                soff = tl.multiple_of(sbase + c, 16)
                _kd_grad(S, T, GRAD, soff, soff + tshift, soff + gshift, c, cols, V, tgt, inv_temp, lse1, lse2,
                         lse3, w_kl, alpha, scale, HAS_TARGET, False)  # fmt: skip
            c = head + n_full * BLOCK_V
            soff = tl.multiple_of(sbase + c, 16)
            _kd_grad(S, T, GRAD, soff, soff + tshift, soff + gshift, c, cols, _tail16(c, V), tgt, inv_temp,
                     lse1, lse2, lse3, w_kl, alpha, scale, HAS_TARGET, True)  # fmt: skip
            c2 = c + _tail16(c, V)
            _kd_grad(S, T, GRAD, sbase + c2, tbase + c2, gbase + c2, c2, cols16, V - c2, tgt, inv_temp, lse1, lse2,
                     lse3, w_kl, alpha, scale, HAS_TARGET, True)  # fmt: skip


# ----------------------------------------------------------------------------- launchers


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, V); got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{name}: the kernel takes fp32/fp16/bf16; got {x.dtype}")
    return x if x.stride(1) == 1 else x.contiguous()


def _scale_args(scale: torch.Tensor | None, n: int, device) -> tuple[torch.Tensor | None, int]:
    if scale is None:
        return None, 0
    if scale.dim() == 0 or scale.numel() == 1:
        return scale.reshape(()).to(device=device, dtype=torch.float32), 1
    if scale.shape != (n,):
        raise ValueError(f"scale must be a scalar or ({n},); got {tuple(scale.shape)}")
    return scale.to(device=device, dtype=torch.float32).contiguous(), 2


def _check_targets(target: torch.Tensor, V: int, ignore_index: int) -> None:
    """Out-of-range targets would read outside the row. Checked where it is free (CPU: the
    interpreter); on CUDA it would cost a host sync, so there the kernel's device_assert
    (active with TRITON_DEBUG=1) is the check."""
    if target.is_cuda or target.numel() == 0:
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= V))
    if bool(bad.any()):
        raise ValueError(f"target holds class indices outside [0, {V}) (and != ignore_index={ignore_index})")


def _grad_arg(grad_out: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    if grad_out is None:
        return None
    if grad_out.shape != x.shape or grad_out.stride(1) != 1 or grad_out.dtype != x.dtype:
        raise ValueError("grad_out must be (N, V) with unit column stride and the logits' dtype")
    return grad_out


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
