"""Fused LoRA linear: ``y = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ`` and its backward.

Design (one GEMM kernel serves the forward and the input gradient):

* ``_lora_gemm_kernel`` computes, per (BLOCK_M, BLOCK_O) tile,
  ``out = X·Wmat + bias + s·(X·Down)·Up [⊙ keep/(1-p)]``. The rank-r product ``X·Down`` is
  accumulated in the *same* K loop from the X tile already in registers (X is read once), and the
  low-rank update is added in the epilogue, so ``y`` is written once and never re-read. The
  ``(M, r)`` intermediate is stored by the ``pid_o == 0`` programs for the backward. Recomputing
  it per output tile costs r/BLOCK_O extra MMA work (12% at r=16, BLOCK_O=128).
  - forward:  X = x, Wmat = Wᵀ, Down = Aᵀ, Up = Bᵀ (input dropout: u comes from ``_lora_down_kernel``);
  - backward: X = dy, Wmat = W, Down = B, Up = A, dropout mask on the low-rank output (DROP_OUT),
    which is the same (row, k) mask as the forward's: ``dx = dy·W + s·((dy·B)·A) ⊙ keep/(1-p)``.
  Both weight layouts are handled by strides (``nn.Linear`` (N, K), ``Conv1D`` (K, N)): no copies.
* ``_lora_down_kernel`` computes ``u = drop(x)·Aᵀ`` (or ``t = dy·B``) on its own when it is not
  fused: with dropout (the Philox mask is then drawn once per element of x instead of once per
  output tile) and for r > FUSE_MAX_RANK.
* ``_lora_bwd_factor_kernel`` computes a factor gradient ``s·Tᵀ·Xd`` (r, L), reducing over M in
  SPLIT chunks into an fp32 workspace (deterministic, no atomics); ``dA = s·tᵀ·drop(x)`` with
  t = dy·B from the GEMM, ``dB = s·(uᵀ·dy)ᵀ``.

Dropout keeps element (m, k) iff ``tl.rand(seed, m*K + k) >= p`` (Philox, int64 offsets), so the
backward regenerates exactly the forward's mask from the seed; no mask tensor is stored.
The dropout epilogue tunes over its own smaller-per-thread tiles (``_gemm_drop_configs``: register use).

The backward thus reads dy twice (GEMM + dB), x once (dA) and W once; the forward reads x and W once.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fastft.kernels._utils import INTERPRET, dot_dtype, next_pow2, tl_dtype

__all__ = ["lora_forward", "lora_backward", "lora_keep_mask"]

MAX_RANK = 128
#: up to this rank the rank-r product is recomputed inside the main GEMM (r/BLOCK_O extra MMA work);
#: above it (and with input dropout) a separate pass computes it once.
FUSE_MAX_RANK = 32

# ----------------------------------------------------------------------------- helpers


@triton.jit
def _keep(seed, offs_m, offs_k, K, p):
    """Dropout keep-mask for rows ``offs_m`` x cols ``offs_k`` of an (M, K) input (int64 offsets)."""
    offs = offs_m.to(tl.int64)[:, None] * K + offs_k[None, :]
    return tl.rand(seed, offs) >= p


@triton.jit(do_not_specialize=["seed"])
def _lora_mask_kernel(OUT, M, K, seed, p, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
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
    # Hopper, pruned with sm_90 AOT compiles (tests/kernels/test_sm90_compile.py): these use wgmma + a
    # 3-4 stage cp.async pipeline without register spills at r <= 128; 128x256 tiles and BLOCK_L=32
    # with 4 warps spill.
    return [
        _cfg(*c)
        for c in ((128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4))
    ]


def _gemm_drop_configs():
    """Configs of the dropout epilogue (DROP_OUT: the backward dx with lora_dropout > 0).

    The mask costs one Philox draw (4 x 32-bit state, 10 rounds) per output element, and the compiler
    runs every element of a thread's tile at once: at 64 accumulator elements per thread (all of the
    tiles above) that alone needs ~256 registers and every config spilled 88-568 B. 32 per thread
    (BLOCK_M * BLOCK_O / (32 * num_warps)) compiles at 165-176 registers, no spill, bf16 and fp16.
    """
    if INTERPRET:
        return []
    return [
        _cfg(*c) for c in ((128, 64, 64, 8, 3), (128, 64, 64, 8, 4), (64, 128, 64, 8, 4), (64, 64, 64, 4, 4))
    ]


def _cfg(bm: int, bo: int, bl: int, warps: int, stages: int) -> triton.Config:
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_O": bo, "BLOCK_L": bl, "GROUP_M": 8}, num_warps=warps, num_stages=stages
    )


_DENSE_CONFIGS = _gemm_configs()
_DROP_CONFIGS = _gemm_drop_configs()


#: sm_90's 227 KB of shared memory per block, less room for the fused down/up tiles and the epilogue.
_PIPELINE_SMEM = 232448 - 16384


def _pipeline_bytes(cfg: triton.Config, elem_size: int) -> int:
    """Shared memory of the X and W tiles over the cp.async stages (the dominant term)."""
    k = cfg.kwargs
    return cfg.num_stages * (k["BLOCK_M"] + k["BLOCK_O"]) * k["BLOCK_L"] * elem_size


def _prune_gemm(configs, named_args, **kwargs):
    """The dropout epilogue gets its own smaller-per-thread tiles (see ``_gemm_drop_configs``); fp32
    (TF32) inputs drop the tiles whose pipeline needs more shared memory than a block has (128x128x64 in
    4 stages: 278,528 B measured). ``elem_size`` may be given instead of the ``X`` tensor (tests)."""
    want = _DROP_CONFIGS if kwargs.get("DROP_OUT", named_args.get("DROP_OUT", False)) else _DENSE_CONFIGS
    keys = {_cfg_key(c) for c in want}
    x = named_args.get("X")
    elem = kwargs.get("elem_size") or (x.element_size() if hasattr(x, "element_size") else 2)
    return [c for c in configs if _cfg_key(c) in keys and _pipeline_bytes(c, elem) <= _PIPELINE_SMEM]


def _cfg_key(c: triton.Config) -> tuple:
    return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages


def _skinny_config(dtype: torch.dtype, r_pad: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_L, num_warps, num_stages) of the bandwidth-bound rank-r kernels (down, factor).

    Wide BLOCK_L only for 16-bit inputs at r <= 32: fp32 or larger ranks spill registers with it.
    """
    if INTERPRET:
        return 32, 32, 4, 1
    wide = dtype != torch.float32 and r_pad <= 32
    return 64, 128 if wide else 64, 8, 3


def _factor_split(M: int, L: int, bm: int, bl: int) -> int:
    """Row chunks of the factor-gradient reduction: ~4 waves of programs on 132 SMs, >= 4 row blocks each."""
    if INTERPRET:
        return max(1, min(2, triton.cdiv(M, bm)))
    return max(1, min(triton.cdiv(528, triton.cdiv(L, bl)), triton.cdiv(M, 4 * bm)))


# ----------------------------------------------------------------------------- forward kernel


# restore_value: with ACCUMULATE the tuner's repeated runs would otherwise add the update several times
@triton.autotune(
    configs=_DENSE_CONFIGS + _DROP_CONFIGS,
    key=["L", "O", "R_PAD", "DROP_OUT", "FUSE_DOWN", "ACCUMULATE"],
    restore_value=["OUT"],
    prune_configs_by=None if INTERPRET else {"early_config_prune": _prune_gemm},
)
@triton.jit(do_not_specialize=["seed"])
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
    DROP_OUT: tl.constexpr,
    FUSE_DOWN: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    R_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_L: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """``OUT = X·Wmat + BIAS + scaling·U·Up`` (the low-rank term ⊙ keep/(1-p) if DROP_OUT).

    X: (M, L) input, strides (stride_xm, stride_xl).
    W: Wmat (L, O) addressed as ``W + l*stride_wl + o*stride_wo`` (a view of the frozen weight).
    BIAS: (O,) contiguous, read only if HAS_BIAS.
    DOWN: Down (L, R) addressed with (stride_dl, stride_dj).
    UP: Up (R, O) addressed with (stride_uj, stride_uo).
    OUT: (M, O) output, strides (stride_om, stride_oo), X's dtype.
    U: (M, R) rank-r intermediate U = X·Down, strides (stride_tm, stride_tj). FUSE_DOWN: computed in
       the main loop from the X tiles already loaded and stored by the pid_o == 0 programs; else read
       (precomputed by ``_lora_down_kernel``, e.g. with the input dropout applied).
    DROP_OUT: the low-rank term is masked with keep(m, o)/(1-p), keep(m, o) = rand(seed, m*O + o) >= p.
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
        x = x.to(DOT)
        acc = tl.dot(x, w.to(DOT), acc, input_precision=PRECISION)
        if FUSE_DOWN:
            d = tl.load(
                DOWN + offs_l[:, None] * stride_dl + offs_j[None, :] * stride_dj,
                mask=mask_l[:, None] & mask_j[None, :],
                other=0.0,
            )
            u = tl.dot(x, d.to(DOT), u, input_precision=PRECISION)
    u_ptr = U + offs_m64[:, None] * stride_tm + offs_j[None, :] * stride_tj
    if FUSE_DOWN:
        u_lp = u.to(U.dtype.element_ty)  # rounded like torch's (M, r) intermediate in the input dtype
        if pid_o == 0:
            tl.store(u_ptr, u_lp, mask=mask_m[:, None] & mask_j[None, :])
    else:
        u_lp = tl.load(u_ptr, mask=mask_m[:, None] & mask_j[None, :], other=0.0)
    up = tl.load(
        UP + offs_j[:, None] * stride_uj + offs_o[None, :] * stride_uo,
        mask=mask_j[:, None] & mask_o[None, :],
        other=0.0,
    )
    lo = tl.dot(u_lp.to(DOT), up.to(DOT), input_precision=PRECISION) * scaling
    if DROP_OUT:
        lo = tl.where(_keep(seed, offs_m, offs_o, O, p), lo * (1.0 / (1.0 - p)), 0.0)
    acc += lo
    out_ptr = OUT + offs_m64[:, None] * stride_om + offs_o[None, :] * stride_oo
    if ACCUMULATE:  # OUT already holds X·Wmat (from cuBLAS, L == 0 here): add the low-rank term
        acc += tl.load(out_ptr, mask=mask_m[:, None] & mask_o[None, :], other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_o, mask=mask_o, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr, acc.to(OUT.dtype.element_ty), mask=mask_m[:, None] & mask_o[None, :])


@triton.jit(do_not_specialize=["seed"])
def _lora_down_kernel(
    X,
    DOWN,
    U,
    M,
    L,
    R,
    stride_xm,
    stride_xl,
    stride_dl,
    stride_dj,
    stride_tm,
    stride_tj,
    seed,
    p,
    DROP: tl.constexpr,
    DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    R_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """``U = Xd·Down`` (M, R), Xd = X ⊙ keep(m, l)/(1-p) if DROP: the rank-r input of the forward
    when it is not fused into the main GEMM (dropout: the mask is drawn once per element here, not once
    per output tile; large r: no per-tile recomputation).

    X: (M, L), strides (stride_xm, stride_xl). DOWN: Down (L, R) with (stride_dl, stride_dj).
    U: (M, R) output in X's dtype, strides (stride_tm, stride_tj). One program per BLOCK_M rows.
    """
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = tl.arange(0, R_PAD)
    offs_m64 = offs_m.to(tl.int64)
    mask_m = offs_m < M
    mask_j = offs_j < R
    u = tl.zeros((BLOCK_M, R_PAD), dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        x = tl.load(
            X + offs_m64[:, None] * stride_xm + offs_l[None, :] * stride_xl,
            mask=mask_m[:, None] & mask_l[None, :],
            other=0.0,
        ).to(DOT)
        if DROP:
            x = tl.where(_keep(seed, offs_m, offs_l, L, p), x, 0.0)
        d = tl.load(
            DOWN + offs_l[:, None] * stride_dl + offs_j[None, :] * stride_dj,
            mask=mask_l[:, None] & mask_j[None, :],
            other=0.0,
        )
        u = tl.dot(x, d.to(DOT), u, input_precision=PRECISION)
    if DROP:
        u = u * (1.0 / (1.0 - p))
    tl.store(
        U + offs_m64[:, None] * stride_tm + offs_j[None, :] * stride_tj,
        u.to(U.dtype.element_ty),
        mask=mask_m[:, None] & mask_j[None, :],
    )


# ----------------------------------------------------------------------------- backward kernel


@triton.jit(do_not_specialize=["seed"])
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
    w_strides,
    bias,
    down,
    down_strides,
    up,
    up_strides,
    out,
    u,
    L,
    O,
    R,
    scaling,
    p,
    seed,
    drop_out,
    fuse_down,
    accumulate=False,
):
    """Launch ``_lora_gemm_kernel`` (see its docstring for the roles of the arguments)."""
    M = X.shape[0]
    dt = X.dtype
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(O, meta["BLOCK_O"]),)
    _lora_gemm_kernel[grid](
        X, weight, bias if bias is not None else X, down, up, out, u,
        M, L, O, R,
        X.stride(0), X.stride(1), *w_strides, *down_strides, *up_strides,
        out.stride(0), out.stride(1), u.stride(0), u.stride(1),
        seed, p, scaling,
        HAS_BIAS=bias is not None, DROP_OUT=drop_out, FUSE_DOWN=fuse_down, ACCUMULATE=accumulate,
        DOT=tl_dtype(dot_dtype(dt)), PRECISION=_precision(dt), R_PAD=_rpad(R),
    )  # fmt: skip


def _down(X, down, down_strides, u, L, R, p, seed, drop):
    """Launch ``_lora_down_kernel``: ``u = drop(X)·Down``."""
    M = X.shape[0]
    bm, bl, warps, stages = _skinny_config(X.dtype, _rpad(R))
    _lora_down_kernel[(triton.cdiv(M, bm),)](
        X, down, u, M, L, R,
        X.stride(0), X.stride(1), *down_strides, u.stride(0), u.stride(1),
        seed, p,
        DROP=drop, DOT=tl_dtype(dot_dtype(X.dtype)), PRECISION=_precision(X.dtype), R_PAD=_rpad(R),
        BLOCK_M=bm, BLOCK_L=bl, num_warps=warps, num_stages=stages,
    )  # fmt: skip


def main_gemm() -> str:
    """Who runs the big frozen GEMM: ``"triton"`` (default: one fused kernel, the rank-r update in its
    epilogue) or ``"cublas"`` (torch.mm, then a Triton pass adds the rank-r update in place: one
    extra read+write of the output). ``$FASTFT_LORA_MAIN_GEMM`` selects, so both designs can be
    measured on the same GPU (bench/bench_lora.py runs both)."""
    v = os.environ.get("FASTFT_LORA_MAIN_GEMM", "triton").strip().lower() or "triton"
    if v not in ("triton", "cublas"):
        raise ValueError(f"FASTFT_LORA_MAIN_GEMM={v!r}: use 'triton' or 'cublas'")
    return v


def _rpad(r: int) -> int:
    return max(16, next_pow2(r))


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
    """x (M, K) -> (y (M, N), u = drop(x)·Aᵀ (M, r)).

    weight: (N, K) (``conv1d=False``) or (K, N) (``conv1d=True``), any strides; bias (N,) or None;
    lora_a (r, K); lora_b (N, r); all in x's dtype. ``seed`` drives the dropout mask (p > 0).
    One launch when r <= FUSE_MAX_RANK and p == 0 (u computed in the GEMM's K loop); otherwise
    ``_lora_down_kernel`` computes u first (mask drawn once per element) and the GEMM reads it.
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
    fuse = not drop and r <= FUSE_MAX_RANK
    a_strides = (lora_a.stride(1), lora_a.stride(0))  # Down = Aᵀ (K, r)
    b_strides = (lora_b.stride(1), lora_b.stride(0))  # Up = Bᵀ (r, N)
    if main_gemm() == "cublas":
        wt = weight if conv1d else weight.t()  # views, no copies
        torch.addmm(bias, x, wt, out=y) if bias is not None else torch.mm(x, wt, out=y)
        _down(x, lora_a, a_strides, u, K, r, dropout_p, seed, drop)
        _gemm(x, weight, (0, 0), None, lora_a, a_strides, lora_b, b_strides, y, u, 0, N, r, scaling,
              dropout_p, seed, False, False, accumulate=True)  # fmt: skip
        return y, u
    if not fuse:
        _down(x, lora_a, a_strides, u, K, r, dropout_p, seed, drop)
    _gemm(x, weight, _w_strides(weight, conv1d, False), bias, lora_a, a_strides,
          lora_b, b_strides, y, u, K, N, r, scaling, dropout_p, seed, False, fuse)  # fmt: skip
    return y, u


def _factor_grad(
    T: torch.Tensor, X: torch.Tensor, scale: float, p: float, seed: int, drop: bool
) -> torch.Tensor:
    """``scale · Tᵀ·Xd`` as (R, L) fp32 (deterministic split-M reduction)."""
    M, L = X.shape
    R = T.shape[1]
    bm, bl, warps, stages = _skinny_config(X.dtype, _rpad(R))
    split = _factor_split(M, L, bm, bl)
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
        num_stages=stages,
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
        fuse = r <= FUSE_MAX_RANK
        b_strides = (lora_b.stride(0), lora_b.stride(1))  # Down = B (N, r)
        a_strides = (lora_a.stride(0), lora_a.stride(1))  # Up = A (r, K)
        if main_gemm() == "cublas":
            torch.mm(dy, weight.t() if conv1d else weight, out=dx)
            _down(dy, lora_b, b_strides, t, N, r, 0.0, 0, False)
            _gemm(dy, weight, (0, 0), None, lora_b, b_strides, lora_a, a_strides, dx, t, 0, K, r, scaling,
                  dropout_p, seed, drop, False, accumulate=True)  # fmt: skip
        else:
            if not fuse:
                _down(dy, lora_b, b_strides, t, N, r, 0.0, 0, False)
            _gemm(dy, weight, _w_strides(weight, conv1d, True), None, lora_b, b_strides,
                  lora_a, a_strides, dx, t, N, K, r, scaling, dropout_p, seed, drop, fuse)  # fmt: skip
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
    _lora_mask_kernel[(triton.cdiv(M, 32), triton.cdiv(K, 32))](out, M, K, seed, p, BLOCK_M=32, BLOCK_K=32)
    return out.bool()
