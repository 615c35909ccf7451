"""Fused LoRA linear: ``y = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ`` and its backward.

Design (one GEMM kernel serves the forward and the input gradient):

* ``_lora_gemm_kernel`` computes, per (BLOCK_M, BLOCK_O) tile,
  ``out = X·Wmat + bias + s·(Xd·Down)·Up [⊙ keep/(1-p)]``. The rank-r product ``Xd·Down`` is
  accumulated in the *same* K loop from the X tile already in registers (X is read once), and the
  low-rank update is added in the epilogue, so ``y`` is written once and never re-read. The
  ``(M, r)`` intermediate is stored by the ``pid_o == 0`` programs for the backward. Recomputing
  it per output tile costs r/BLOCK_O extra MMA work (12% at r=16, BLOCK_O=128).
  - forward:  X = x, Wmat = Wᵀ, Down = Aᵀ, Up = Bᵀ, dropout on the rank-r input (DROP_IN);
  - backward: X = dy, Wmat = W, Down = B, Up = A, dropout mask on the low-rank output (DROP_OUT),
    which is the same (row, k) mask as the forward's: ``dx = dy·W + s·((dy·B)·A) ⊙ keep/(1-p)``.
  Both weight layouts are handled by strides (``nn.Linear`` (N, K), ``Conv1D`` (K, N)): no copies.
* ``_lora_bwd_factor_kernel`` computes a factor gradient ``s·Tᵀ·Xd`` (r, L), reducing over M in
  SPLIT chunks into an fp32 workspace (deterministic, no atomics); ``dA = s·tᵀ·drop(x)`` with
  t = dy·B from the GEMM, ``dB = s·(uᵀ·dy)ᵀ``.

Dropout keeps element (m, k) iff ``tl.rand(seed, m*K + k) >= p`` (Philox, int64 offsets), so the
backward regenerates exactly the forward's mask from the seed; no mask tensor is stored.

The backward thus reads dy twice (GEMM + dB), x once (dA) and W once; the forward reads x and W once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastft.kernels._utils import INTERPRET, dot_dtype, next_pow2, tl_dtype

__all__ = ["lora_forward", "lora_backward", "lora_keep_mask"]

MAX_RANK = 128

# ----------------------------------------------------------------------------- helpers


@triton.jit
def _keep(seed, offs_m, offs_k, K, p):
    """Dropout keep-mask for rows ``offs_m`` x cols ``offs_k`` of an (M, K) input (int64 offsets)."""
    offs = offs_m.to(tl.int64)[:, None] * K + offs_k[None, :]
    return tl.rand(seed, offs) >= p


@triton.jit
def _mask_kernel(OUT, M, K, seed, p, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """Materialise the keep-mask (M, K) as uint8 (tests / debugging only; the op never stores it)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    keep = _keep(seed, offs_m, offs_k, K, p)
    ptr = OUT + offs_m.to(tl.int64)[:, None] * K + offs_k[None, :]
    tl.store(ptr, keep.to(tl.uint8), mask=(offs_m[:, None] < M) & (offs_k[None, :] < K))


# ----------------------------------------------------------------------------- configs


def _gemm_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_O": 32, "BLOCK_L": 32, "GROUP_M": 4}, num_warps=4)]
    # Hopper, pruned: big tiles for the compute-bound main GEMM, a narrower one for small O
    cfgs = []
    for bm, bo, bl, w, s in [
        (128, 128, 64, 8, 3),
        (128, 256, 64, 8, 3),
        (128, 128, 32, 4, 4),
        (64, 128, 64, 4, 4),
        (128, 64, 64, 4, 4),
    ]:
        cfgs.append(
            triton.Config(
                {"BLOCK_M": bm, "BLOCK_O": bo, "BLOCK_L": bl, "GROUP_M": 8}, num_warps=w, num_stages=s
            )
        )
    return cfgs


def _factor_config(M: int, L: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_L, SPLIT, num_warps) of the factor-gradient reduction (bandwidth-bound)."""
    if INTERPRET:
        return 32, 32, max(1, min(2, triton.cdiv(M, 32))), 4
    bm, bl = 64, 128
    n_l = triton.cdiv(L, bl)
    # ~4 waves of programs on 132 SMs, each reducing >= 4 row blocks
    split = max(1, min(triton.cdiv(528, n_l), triton.cdiv(M, 4 * bm)))
    return bm, bl, split, 4


# ----------------------------------------------------------------------------- forward kernel


@triton.autotune(configs=_gemm_configs(), key=["L", "O", "R_PAD", "DROP_IN", "DROP_OUT"])
@triton.jit
def _lora_gemm_kernel(
    X,
    W,
    BIAS,
    DOWN,
    UP,
    OUT,
    U,
    M,
    L,
    O,
    R,
    stride_xm,
    stride_xl,
    stride_wl,
    stride_wo,
    stride_dl,
    stride_dj,
    stride_uj,
    stride_uo,
    stride_om,
    stride_oo,
    stride_tm,
    stride_tj,
    seed,
    p,
    scaling,
    HAS_BIAS: tl.constexpr,
    DROP_IN: tl.constexpr,
    DROP_OUT: tl.constexpr,
    STORE_U: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    R_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_L: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """``OUT = X·Wmat + BIAS + scaling·(Xd·Down)·Up`` (⊙ keep/(1-p) if DROP_OUT); ``U = Xd·Down``.

    X: (M, L) input, strides (stride_xm, stride_xl).
    W: Wmat (L, O) addressed as ``W + l*stride_wl + o*stride_wo`` (a view of the frozen weight).
    BIAS: (O,) contiguous, read only if HAS_BIAS.
    DOWN: Down (L, R) addressed with (stride_dl, stride_dj).
    UP: Up (R, O) addressed with (stride_uj, stride_uo).
    OUT: (M, O) output, strides (stride_om, stride_oo), X's dtype.
    U: (M, R) rank-r intermediate (strides stride_tm, stride_tj), written by pid_o == 0 if STORE_U.
    DROP_IN: Xd = X ⊙ keep(m, l)/(1-p) in the low-rank path; DROP_OUT: the low-rank output is masked
    with keep(m, o)/(1-p). keep(m, c) = rand(seed, m*C + c) >= p with C = L (DROP_IN) or O (DROP_OUT).
    DOT: dtype fed to tl.dot; PRECISION: tl.dot input_precision for fp32 ("ieee" or "tf32").
    R_PAD: R rounded up to a power of two >= 16 (tl.dot minimum).
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_o = tl.cdiv(O, BLOCK_O)
    # grouped launch order: GROUP_M row blocks share the W column block while it is in L2
    group = GROUP_M * num_o
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_o = (pid % group) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_j = tl.arange(0, R_PAD)
    offs_m64 = offs_m.to(tl.int64)
    mask_m = offs_m < M
    mask_o = offs_o < O
    mask_j = offs_j < R

    acc = tl.zeros((BLOCK_M, BLOCK_O), dtype=tl.float32)
    u = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        x = tl.load(
            X + offs_m64[:, None] * stride_xm + offs_l[None, :] * stride_xl,
            mask=mask_m[:, None] & mask_l[None, :],
            other=0.0,
        )
        w = tl.load(
            W + offs_l[:, None] * stride_wl + offs_o[None, :] * stride_wo,
            mask=mask_l[:, None] & mask_o[None, :],
            other=0.0,
        )
        d = tl.load(
            DOWN + offs_l[:, None] * stride_dl + offs_j[None, :] * stride_dj,
            mask=mask_l[:, None] & mask_j[None, :],
            other=0.0,
        )
        x = x.to(DOT)
        acc = tl.dot(x, w.to(DOT), acc, input_precision=PRECISION)
        if DROP_IN:
            x = tl.where(_keep(seed, offs_m, offs_l, L, p), x, 0.0)
        u = tl.dot(x, d.to(DOT), u, input_precision=PRECISION)
    if DROP_IN:
        u = u * (1.0 / (1.0 - p))
    u_lp = u.to(U.dtype.element_ty)  # rounded like torch's (M, r) intermediate in the input dtype
    if STORE_U:
        if pid_o == 0:
            tl.store(
                U + offs_m64[:, None] * stride_tm + offs_j[None, :] * stride_tj,
                u_lp,
                mask=mask_m[:, None] & mask_j[None, :],
            )
    up = tl.load(
        UP + offs_j[:, None] * stride_uj + offs_o[None, :] * stride_uo,
        mask=mask_j[:, None] & mask_o[None, :],
        other=0.0,
    )
    lo = tl.dot(u_lp.to(DOT), up.to(DOT), input_precision=PRECISION) * scaling
    if DROP_OUT:
        lo = tl.where(_keep(seed, offs_m, offs_o, O, p), lo * (1.0 / (1.0 - p)), 0.0)
    acc += lo
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_o, mask=mask_o, other=0.0).to(tl.float32)[None, :]
    tl.store(
        OUT + offs_m64[:, None] * stride_om + offs_o[None, :] * stride_oo,
        acc.to(OUT.dtype.element_ty),
        mask=mask_m[:, None] & mask_o[None, :],
    )


# ----------------------------------------------------------------------------- backward kernel


@triton.jit
def _lora_bwd_factor_kernel(
    T,
    X,
    WS,
    M,
    L,
    R,
    rows_per_split,
    stride_tm,
    stride_tj,
    stride_xm,
    stride_xl,
    stride_ws,
    stride_wj,
    seed,
    p,
    scale,
    DROP: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    R_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Partial factor gradient ``WS[split] = scale · T[rows]ᵀ · Xd[rows]`` (R, L), fp32.

    T: (M, R) rank-r tensor (t = dy·B for dA, u for dB), strides (stride_tm, stride_tj).
    X: (M, L) (x for dA, dy for dB), strides (stride_xm, stride_xl); Xd = X ⊙ keep if DROP
       (the 1/(1-p) factor is folded into ``scale`` by the launcher).
    WS: (SPLIT, R, L) contiguous-in-L fp32 workspace, strides (stride_ws, stride_wj, 1).
    Program (pid_l, split) reduces rows [split*rows_per_split, (split+1)*rows_per_split).
    """
    pid_l = tl.program_id(0)
    split = tl.program_id(1)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_j = tl.arange(0, R_PAD)
    mask_l = offs_l < L
    mask_j = offs_j < R
    acc = tl.zeros((R_PAD, BLOCK_L), dtype=tl.float32)
    start = split * rows_per_split
    end = tl.minimum(start + rows_per_split, M)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < end
        offs_m64 = offs_m.to(tl.int64)
        t = tl.load(
            T + offs_m64[:, None] * stride_tm + offs_j[None, :] * stride_tj,
            mask=mask_m[:, None] & mask_j[None, :],
            other=0.0,
        )
        x = tl.load(
            X + offs_m64[:, None] * stride_xm + offs_l[None, :] * stride_xl,
            mask=mask_m[:, None] & mask_l[None, :],
            other=0.0,
        )
        x = x.to(DOT)
        if DROP:
            x = tl.where(_keep(seed, offs_m, offs_l, L, p), x, 0.0)
        acc = tl.dot(tl.trans(t.to(DOT)), x, acc, input_precision=PRECISION)
    ptr = WS + split.to(tl.int64) * stride_ws + offs_j[:, None] * stride_wj + offs_l[None, :]
    tl.store(ptr, acc * scale, mask=mask_j[:, None] & mask_l[None, :])


# ----------------------------------------------------------------------------- launchers


def _precision(dtype: torch.dtype) -> str:
    # torch's fp32 matmul is IEEE unless the user allowed TF32; follow that choice
    if dtype == torch.float32 and not INTERPRET and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _check(x: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, conv1d: bool):
    if x.dim() != 2:
        raise ValueError(f"lora kernel: x must be 2-D (M, K), got {tuple(x.shape)}")
    dt = x.dtype
    if dt not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"lora kernel: dtype {dt} unsupported; use fp16, bf16 or fp32")
    for name, t in (("weight", weight), ("lora_a", a), ("lora_b", b)):
        if t.dtype != dt or t.device != x.device:
            raise TypeError(
                f"lora kernel: {name} is {t.dtype} on {t.device}, x is {dt} on {x.device}; cast it first"
            )
    K, N = tuple(weight.shape) if conv1d else tuple(reversed(weight.shape))
    r = a.shape[0]
    if not 1 <= r <= MAX_RANK:
        raise ValueError(
            f"lora kernel: rank {r} not in 1..{MAX_RANK}; use the torch path (fastft.backend('torch'))"
        )
    if x.shape[1] != K or tuple(a.shape) != (r, K) or tuple(b.shape) != (N, r):
        raise ValueError(
            f"lora kernel: shapes x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"a {tuple(a.shape)}, b {tuple(b.shape)} do not fit"
        )
    return K, N, r


def _w_strides(weight: torch.Tensor, conv1d: bool, transpose: bool) -> tuple[int, int]:
    """Strides of Wmat = Wᵀ (K, N) for the forward, or W (N, K) for dx (transpose=True)."""
    s0, s1 = weight.stride()
    kn = (s0, s1) if conv1d else (s1, s0)  # (stride along K, stride along N)
    return (kn[1], kn[0]) if transpose else kn


def _gemm(
    X,
    weight,
    bias,
    down_strides,
    down,
    up_strides,
    up,
    out,
    store,
    L,
    O,
    R,
    w_strides,
    scaling,
    p,
    seed,
    drop_in,
    drop_out,
):
    M = X.shape[0]
    dt = X.dtype
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(O, meta["BLOCK_O"]),)
    _lora_gemm_kernel[grid](
        X,
        weight,
        bias if bias is not None else X,
        down,
        up,
        out,
        store,
        M,
        L,
        O,
        R,
        X.stride(0),
        X.stride(1),
        *w_strides,
        *down_strides,
        *up_strides,
        out.stride(0),
        out.stride(1),
        store.stride(0),
        store.stride(1),
        seed,
        p,
        scaling,
        HAS_BIAS=bias is not None,
        DROP_IN=drop_in,
        DROP_OUT=drop_out,
        STORE_U=True,
        DOT=tl_dtype(dot_dtype(dt)),
        PRECISION=_precision(dt),
        R_PAD=max(16, next_pow2(R)),
    )


def lora_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    dropout_p: float,
    seed: int,
    conv1d: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> (y (M, N), u = drop(x)·Aᵀ (M, r)), one kernel launch.

    weight: (N, K) (``conv1d=False``) or (K, N) (``conv1d=True``), any strides; bias (N,) or None;
    lora_a (r, K); lora_b (N, r); all in x's dtype. ``seed`` drives the dropout mask (p > 0).
    """
    K, N, r = _check(x, weight, lora_a, lora_b, conv1d)
    if x.stride(1) != 1:
        x = x.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    M = x.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    u = torch.empty(M, r, device=x.device, dtype=x.dtype)
    drop = dropout_p > 0.0
    _gemm(
        x,
        weight,
        bias,
        (lora_a.stride(1), lora_a.stride(0)),
        lora_a,
        (lora_b.stride(1), lora_b.stride(0)),
        lora_b,
        y,
        u,
        K,
        N,
        r,
        _w_strides(weight, conv1d, False),
        scaling,
        dropout_p,
        seed,
        drop,
        False,
    )
    return y, u


def _factor_grad(
    T: torch.Tensor, X: torch.Tensor, scale: float, p: float, seed: int, drop: bool
) -> torch.Tensor:
    """``scale · Tᵀ·Xd`` as (R, L) fp32 (deterministic split-M reduction)."""
    M, L = X.shape
    R = T.shape[1]
    bm, bl, split, warps = _factor_config(M, L)
    rows = triton.cdiv(triton.cdiv(M, split), bm) * bm
    split = triton.cdiv(M, rows)
    ws = torch.empty(split, R, L, device=X.device, dtype=torch.float32)
    if drop:
        scale = scale / (1.0 - p)
    _lora_bwd_factor_kernel[(triton.cdiv(L, bl), split)](
        T,
        X,
        ws,
        M,
        L,
        R,
        rows,
        T.stride(0),
        T.stride(1),
        X.stride(0),
        X.stride(1),
        ws.stride(0),
        ws.stride(1),
        seed,
        p,
        scale,
        DROP=drop,
        DOT=tl_dtype(dot_dtype(X.dtype)),
        PRECISION=_precision(X.dtype),
        R_PAD=max(16, next_pow2(R)),
        BLOCK_M=bm,
        BLOCK_L=bl,
        num_warps=warps,
    )
    return ws[0] if split == 1 else ws.sum(0)


def lora_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    u: torch.Tensor,
    scaling: float,
    dropout_p: float,
    seed: int,
    conv1d: bool,
    *,
    need_dx: bool = True,
    need_ab: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx (M, K), dA (r, K), dB (N, r)); a gradient not asked for comes back as an empty tensor.

    dy (M, N); x, weight, lora_a, lora_b as in :func:`lora_forward`; u the forward's (M, r).
    """
    K, N, r = _check(x, weight, lora_a, lora_b, conv1d)
    if dy.stride(1) != 1:
        dy = dy.contiguous()
    if x.stride(1) != 1:
        x = x.contiguous()
    M = x.shape[0]
    drop = dropout_p > 0.0
    dx = dy.new_empty(0)
    da = dy.new_empty(0)
    db = dy.new_empty(0)
    if need_dx:
        dx = torch.empty(M, K, device=x.device, dtype=x.dtype)
        t = torch.empty(M, r, device=x.device, dtype=x.dtype)
        _gemm(
            dy,
            weight,
            None,
            (lora_b.stride(0), lora_b.stride(1)),
            lora_b,
            (lora_a.stride(0), lora_a.stride(1)),
            lora_a,
            dx,
            t,
            N,
            K,
            r,
            _w_strides(weight, conv1d, True),
            scaling,
            dropout_p,
            seed,
            False,
            drop,
        )
    elif need_ab:
        t = dy @ lora_b
    if need_ab:
        da = _factor_grad(t, x, scaling, dropout_p, seed, drop).to(lora_a.dtype)
        db = _factor_grad(u, dy, scaling, 0.0, 0, False).t().contiguous().to(lora_b.dtype)
    return dx, da, db


def lora_keep_mask(shape: tuple[int, int], p: float, seed: int, device: torch.device) -> torch.Tensor:
    """The kernel's dropout keep-mask for an (M, K) input (bool), for tests: never used by the op."""
    M, K = shape
    out = torch.empty(M, K, device=device, dtype=torch.uint8)
    _mask_kernel[(triton.cdiv(M, 32), triton.cdiv(K, 32))](out, M, K, seed, p, BLOCK_M=32, BLOCK_K=32)
    return out.bool()
