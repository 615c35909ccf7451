"""FlashAttention-2-style scaled-dot-product attention (forward + backward) in Triton.

One set of kernels serves two layouts:

* **padded**: q (B, H, Sq, D), k/v (B, H, Sk, D) with any strides, an optional key-padding mask
  (B, Sk) (non-zero = real token; never an S x S tensor);
* **varlen**: packed, unpadded q/k/v (total, H, D) plus ``cu_seqlens`` (B + 1, int32); each program
  reads its sequence's start and length, so padding costs nothing.

Features: causal masking (bottom-right aligned: query i sees keys j <= i + Sk - Sq, the KV-cache
convention; the usual top-left when Sq == Sk), a softmax scale, head dims 1..128 (padded to
the next power of two >= 16 with masked loads), any sequence length, fp16/bf16/fp32, and attention
dropout from an in-kernel Philox stream: the keep-mask of element (b, h, i, j) is
``tl.rand(seed + b*H + h, i * RNG_STRIDE + j) > p``, recomputed bit-identically in backward. (The
same element of a padded and a varlen batch gets the same draw when RNG_STRIDE is equal.)

Numerics: scores live in the log2 domain (``exp2`` with ``scale * log2(e)``); the saved LSE is
``log2(sum_j exp2(s_ij))``, private to these kernels. **Query rows with no visible key** (all keys
padding, or causal + left padding) are defined to output 0 with LSE = +inf, so their recomputed
probabilities and all their gradients are exactly 0 -- never NaN.

Backward (FA2): a preprocess kernel computes Delta_i = rowsum(dO_i * O_i); a dK/dV kernel owns a
key block and loops over query blocks; a dQ kernel owns a query block and loops over key blocks
(no atomics). With P = softmax(S), Z the keep-mask and r = 1 / (1 - p):
    dV = (r Z * P)^T dO,   dP = dO V^T,   dS = P * (r Z * dP - Delta),   dQ = scale dS K,   dK = scale dS^T Q.
(Delta = rowsum(dO * O) equals rowsum(P * r Z * dP) also with dropout, since O = (r Z * P) V.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastft.kernels._utils import INTERPRET, dot_dtype, next_pow2, tl_dtype

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 128


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _attention_visible(
    offs_m,
    offs_n,
    seqlen_q,
    seqlen_k,
    kpm_row_ptr,
    stride_ms,
    IS_CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) bool: key n is in range, not padding, and (causal) not in the future of query m.

    Causal is bottom-right aligned: query m sees keys n <= m + (seqlen_k - seqlen_q) (the KV-cache
    convention of FlashAttention and SDPA's causal_lower_right; top-left when Sq == Sk)."""
    in_k = offs_n < seqlen_k
    keep = (offs_m[:, None] < seqlen_q) & in_k[None, :]
    if HAS_MASK:
        kpm = tl.load(kpm_row_ptr + offs_n * stride_ms, mask=in_k, other=0)
        keep = keep & (kpm != 0)[None, :]
    if IS_CAUSAL:
        keep = keep & ((offs_m[:, None] + (seqlen_k - seqlen_q)) >= offs_n[None, :])
    return keep


@triton.jit
def _attention_rng_offsets(offs_m, offs_n, rng_stride):
    """(lo, hi) uint32 halves of the int64 Philox counter ``m * rng_stride + n`` of each element.

    int64 because ``m * rng_stride`` passes 2**31 at S ~ 46k; for counters below 2**32 (hi = 0) the
    draw equals ``tl.rand(seed, counter)``, so short sequences keep their old stream."""
    off = offs_m.to(tl.int64)[:, None] * rng_stride + offs_n.to(tl.int64)[None, :]
    lo = (off & 0xFFFFFFFF).to(tl.uint32)
    hi = ((off >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return lo, hi


@triton.jit
def _attention_dropout_keep(seed_bh, offs_m, offs_n, rng_stride, dropout_p):
    """(BLOCK_M, BLOCK_N) bool keep-mask of the Philox stream of one (batch, head)."""
    lo, hi = _attention_rng_offsets(offs_m, offs_n, rng_stride)
    zero = tl.zeros_like(lo)
    r, _, _, _ = tl.random.philox(seed_bh, lo, hi, zero, zero)
    return tl.random.uint_to_uniform_float(r) > dropout_p


@triton.jit
def _attention_seq_bounds(CU, b, seqlen_q, seqlen_k, VARLEN: tl.constexpr):
    """(start, seqlen_q, seqlen_k) of sequence ``b``: from cu_seqlens when VARLEN, else (0, Sq, Sk)."""
    start = 0
    if VARLEN:
        start = tl.load(CU + b).to(tl.int64)
        n = (tl.load(CU + b + 1).to(tl.int64) - start).to(tl.int32)
        seqlen_q = n
        seqlen_k = n
    return start, seqlen_q, seqlen_k


# ----------------------------------------------------------------------------------------------------------
# inner loop (forward)
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _attention_fwd_inner(
    acc, l_i, m_i, q, k_base, v_base, kpm_row_ptr, offs_m, offs_d, start_n_hi,
    stride_ks, stride_kd, stride_vs, stride_vd, stride_ms,
    seqlen_q, seqlen_k, head_dim, qk_scale, dropout_p, seed_bh, rng_stride,
    IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    d_ok = offs_d < head_dim
    for start_n in range(0, start_n_hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < seqlen_k
        k = tl.load(k_base + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
        v = tl.load(v_base + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
        s = tl.dot(q, tl.trans(k.to(DOT_DTYPE)), input_precision=DOT_PREC) * qk_scale
        keep = _attention_visible(
            offs_m, offs_n, seqlen_q, seqlen_k, kpm_row_ptr, stride_ms, IS_CAUSAL, HAS_MASK
        )
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no visible key yet keeps m = -inf; shift by 0 so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            z = _attention_dropout_keep(seed_bh, offs_m, offs_n, rng_stride, dropout_p)
            p = tl.where(z, p / (1.0 - dropout_p), 0.0)
        acc += tl.dot(p.to(DOT_DTYPE), v.to(DOT_DTYPE), input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


# ----------------------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------------------
_SHAPES = {
    "fwd": [(128, 64, 8, 3, (64, 128)), (64, 64, 4, 3, (64, 128)), (128, 32, 4, 4, (64,))],
    "dq": [(64, 64, 8, 2, (64,)), (32, 64, 4, 3, (64,)), (64, 32, 4, 3, (64,)),
           (64, 32, 8, 2, (128,)), (32, 128, 8, 2, (128,)), (32, 64, 8, 2, (128,))],
    "dkdv": [(32, 64, 4, 3, (64,)), (64, 32, 4, 3, (64,)), (32, 64, 8, 2, (64, 128)), (32, 64, 8, 3, (128,)),
             (32, 32, 4, 2, (64, 128))],
}  # fmt: skip


def _hopper_configs(kind: str) -> list[triton.Config]:
    """Configs for sm90, pruned with sm_90 AOT compiles (tests/kernels/test_sm90_compile.py, triton 3.9,
    worst variant: mask + causal + dropout): every config kept for a head dim compiles to <= 227 KB of
    shared memory and no register spills in bf16/fp16. Entries are (BLOCK_M, BLOCK_N, warps, stages,
    head dims). Dropped: 128x128 / 64x128 forward tiles (spill with dropout even at D = 64), 64x64/4-warp
    and 128x64 backward tiles (spill at D = 64), and at D = 128 every backward tile with 64 rows per
    4 warps (255 registers plus 0.03-1.5 KB of stack): there only 32-row (dK/dV: 32 keys) tiles or
    8 warps stay under 255 registers."""
    shapes = _SHAPES[kind]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st, _ in shapes
    ]


def _head_dims(kind: str, cfg: triton.Config) -> tuple[int, ...]:
    """Padded head dims (BLOCK_D) a config is kept for: its listed dims, and <= 64 for those listing 64."""
    key = (cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.num_warps, cfg.num_stages)
    for m, n, w, st, dims in _SHAPES[kind]:
        if (m, n, w, st) == key:
            return dims
    return (64, 128)


def _prune_for(kind: str):
    def prune(configs, named_args, **kwargs):
        """Keep the configs compiled clean for this head dim, then drop tiles far larger than the sequence."""
        block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
        want = 128 if block_d > 64 else 64
        seq = named_args.get("max_seqlen", 1 << 30)
        out = [c for c in configs if want in _head_dims(kind, c)]
        if kind == "fwd" and want == 128 and kwargs.get("DOT_DTYPE") == tl.float32:
            # fp32 (TF32) operands double the tiles: 128x64 with 3 stages needs 262,144 B > 227 KB
            out = [c for c in out if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] < 128 * 64]
        small = [
            c
            for c in out
            if c.kwargs["BLOCK_M"] <= max(16, next_pow2(seq))
            and c.kwargs["BLOCK_N"] <= max(16, next_pow2(seq))
        ]
        return small or out or configs[:1]

    return prune


# The interpreter is slow per program, so one biggish tile (and never a benchmark sweep).
_PINNED = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
_FWD_CONFIGS = _PINNED if INTERPRET else _hopper_configs("fwd")
_DQ_CONFIGS = _PINNED if INTERPRET else _hopper_configs("dq")
_DKDV_CONFIGS = _PINNED if INTERPRET else _hopper_configs("dkdv")
_KEY = ["max_seqlen_bucket", "BLOCK_D", "IS_CAUSAL", "HAS_MASK", "VARLEN", "DROPOUT", "DOT_DTYPE"]
_PRUNE = {k: None if INTERPRET else {"early_config_prune": _prune_for(k)} for k in ("fwd", "dq", "dkdv")}
# Scalars that change per call or per batch shape. Triton would otherwise specialise each on
# "== 1" and "% 16 == 0" and compile a new variant whenever that flips: a fresh dropout seed every
# step, a new padded length, the varlen LSE row stride (= total tokens), the mask's batch stride.
# None of them feeds a vectorised load (Q/K/V/O strides stay specialised: H * D is stable).
_NO_SPECIALIZE = [
    "seed", "rng_stride", "seqlen_q", "seqlen_k", "max_seqlen", "max_seqlen_bucket",
    "stride_lb", "stride_lh", "stride_mb",
]  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# forward kernel
# ----------------------------------------------------------------------------------------------------------
@triton.autotune(configs=_FWD_CONFIGS, key=_KEY, prune_configs_by=_PRUNE["fwd"])
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _attention_fwd_kernel(
    Q, K, V, O, LSE, KPM, CU,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_lb, stride_lh, stride_ls,
    stride_mb, stride_ms,
    H, seqlen_q, seqlen_k, head_dim, qk_scale, dropout_p, seed, rng_stride, max_seqlen, max_seqlen_bucket,
    IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Forward: O = softmax(scale Q K^T + mask) V (with dropout), LSE = log2-sum-exp2 per query row.

    Grid: (B * H, cdiv(max query length, BLOCK_M)).
    Pointers: Q/K/V/O the tensors (padded: [B, H, S, D]; varlen: [T, H, D] with stride_*b = 0),
    LSE fp32 (padded: [B, H, Sq]; varlen: [H, T]), KPM the key-padding mask [B, Sk] (uint8, only read
    when HAS_MASK), CU cu_seqlens [B + 1] int32 (only read when VARLEN).
    Strides: stride_{q,k,v,o}{b,h,s,d} in elements (batch, head, sequence, head-dim); stride_l{b,h,s} of
    LSE; stride_m{b,s} of KPM. Scalars: H heads, seqlen_q/seqlen_k (padded layout), head_dim (true D),
    qk_scale = scale * log2(e), dropout_p, seed (Philox key base), rng_stride (RNG row stride),
    max_seqlen / max_seqlen_bucket (autotune key and pruning only).
    """
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = bh // H
    h = bh % H
    start, seqlen_q, seqlen_k = _attention_seq_bounds(CU, b, seqlen_q, seqlen_k, VARLEN)
    if pid_m * BLOCK_M >= seqlen_q:
        return
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen_q
    d_ok = offs_d < head_dim

    q_base = Q + b64 * stride_qb + h64 * stride_qh + start * stride_qs
    k_base = K + b64 * stride_kb + h64 * stride_kh + start * stride_ks
    v_base = V + b64 * stride_vb + h64 * stride_vh + start * stride_vs
    q = tl.load(q_base + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0).to(DOT_DTYPE)  # fmt: skip

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    hi = seqlen_k
    if IS_CAUSAL:  # bottom-right: the block's last query sees keys < (pid_m + 1) * BLOCK_M + Sk - Sq
        hi = tl.maximum(tl.minimum(seqlen_k, (pid_m + 1) * BLOCK_M + seqlen_k - seqlen_q), 0)
    acc, l_i, m_i = _attention_fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, KPM + b64 * stride_mb, offs_m, offs_d, hi,
        stride_ks, stride_kd, stride_vs, stride_vd, stride_ms,
        seqlen_q, seqlen_k, head_dim, qk_scale, dropout_p, seed + bh, rng_stride,
        IS_CAUSAL, HAS_MASK, DROPOUT, BLOCK_N, DOT_DTYPE, DOT_PREC,
    )  # fmt: skip

    empty = l_i == 0.0  # no visible key: defined as output 0, LSE +inf (zero probabilities in backward)
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    o_base = O + b64 * stride_ob + h64 * stride_oh + start * stride_os
    tl.store(o_base + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od,
             out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])  # fmt: skip
    l_base = LSE + b64 * stride_lb + h64 * stride_lh + start * stride_ls
    tl.store(l_base + offs_m * stride_ls, lse, mask=m_ok)


# ----------------------------------------------------------------------------------------------------------
# backward kernels
# ----------------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["stride_lb", "stride_lh", "seqlen_q"])
def _attention_bwd_preprocess_kernel(
    O, DO, DELTA, CU,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_gb, stride_gh, stride_gs, stride_gd,
    stride_lb, stride_lh, stride_ls,
    H, seqlen_q, head_dim,
    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Delta[b, h, i] = sum_d dO * O (fp32). O/DO as in the forward (strides stride_o*, stride_g*),
    DELTA laid out like LSE (stride_l*). Grid: (B * H, cdiv(max query length, BLOCK_M))."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = bh // H
    h = bh % H
    start, seqlen_q, _ = _attention_seq_bounds(CU, b, seqlen_q, seqlen_q, VARLEN)
    if pid_m * BLOCK_M >= seqlen_q:
        return
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    msk = (offs_m < seqlen_q)[:, None] & (offs_d < head_dim)[None, :]
    o = tl.load(O + b64 * stride_ob + h64 * stride_oh + (start + offs_m)[:, None] * stride_os + offs_d[None, :] * stride_od,
                mask=msk, other=0.0).to(tl.float32)  # fmt: skip
    do = tl.load(DO + b64 * stride_gb + h64 * stride_gh + (start + offs_m)[:, None] * stride_gs + offs_d[None, :] * stride_gd,
                 mask=msk, other=0.0).to(tl.float32)  # fmt: skip
    tl.store(DELTA + b64 * stride_lb + h64 * stride_lh + (start + offs_m) * stride_ls, tl.sum(o * do, 1),
             mask=offs_m < seqlen_q)  # fmt: skip


@triton.autotune(configs=_DKDV_CONFIGS, key=_KEY, prune_configs_by=_PRUNE["dkdv"])
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, KPM, CU,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_gb, stride_gh, stride_gs, stride_gd,
    stride_lb, stride_lh, stride_ls,
    stride_mb, stride_ms,
    H, seqlen_q, seqlen_k, head_dim, sm_scale, qk_scale, dropout_p, seed, rng_stride, max_seqlen, max_seqlen_bucket,
    IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """dK, dV for one key block, looping over query blocks. Grid: (B * H, cdiv(max key length, BLOCK_N)).

    Pointers as in the forward plus DO (dO, strides stride_g*), DELTA (like LSE), DK/DV laid out like
    K/V (same strides as K and V respectively). sm_scale is the softmax scale, qk_scale = sm_scale*log2(e).
    """
    bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = bh // H
    h = bh % H
    start, seqlen_q, seqlen_k = _attention_seq_bounds(CU, b, seqlen_q, seqlen_k, VARLEN)
    if pid_n * BLOCK_N >= seqlen_k:
        return
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < seqlen_k
    d_ok = offs_d < head_dim
    kv_msk = n_ok[:, None] & d_ok[None, :]
    k_base = K + b64 * stride_kb + h64 * stride_kh + start * stride_ks
    v_base = V + b64 * stride_vb + h64 * stride_vh + start * stride_vs
    k = tl.load(
        k_base + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd, mask=kv_msk, other=0.0
    ).to(DOT_DTYPE)
    v = tl.load(
        v_base + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd, mask=kv_msk, other=0.0
    ).to(DOT_DTYPE)
    q_base = Q + b64 * stride_qb + h64 * stride_qh + start * stride_qs
    g_base = DO + b64 * stride_gb + h64 * stride_gh + start * stride_gs
    l_base = LSE + b64 * stride_lb + h64 * stride_lh + start * stride_ls
    d_base = DELTA + b64 * stride_lb + h64 * stride_lh + start * stride_ls
    kpm_row = KPM + b64 * stride_mb
    seed_bh = seed + bh

    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    lo = 0
    if IS_CAUSAL:  # queries before row pid_n * BLOCK_N - (Sk - Sq) see none of this key block
        lo = (tl.maximum(pid_n * BLOCK_N - (seqlen_k - seqlen_q), 0) // BLOCK_M) * BLOCK_M
    for start_m in range(lo, seqlen_q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < seqlen_q
        q_msk = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd, mask=q_msk, other=0.0)
        do = tl.load(
            g_base + offs_m[:, None] * stride_gs + offs_d[None, :] * stride_gd, mask=q_msk, other=0.0
        )
        lse = tl.load(l_base + offs_m * stride_ls, mask=m_ok, other=float("inf"))
        delta = tl.load(d_base + offs_m * stride_ls, mask=m_ok, other=0.0)
        q = q.to(DOT_DTYPE)
        do = do.to(DOT_DTYPE)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        keep = _attention_visible(offs_m, offs_n, seqlen_q, seqlen_k, kpm_row, stride_ms, IS_CAUSAL, HAS_MASK)
        p = tl.where(keep, tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        if DROPOUT:
            z = _attention_dropout_keep(seed_bh, offs_m, offs_n, rng_stride, dropout_p)
            r = 1.0 / (1.0 - dropout_p)
            pz = tl.where(z, p * r, 0.0)
            dp = tl.where(z, dp * r, 0.0)
        else:
            pz = p
        dv += tl.dot(tl.trans(pz.to(DOT_DTYPE)), do, input_precision=DOT_PREC)
        # Delta = +inf marks a row with one visible key (set by the dQ kernel): its dS is exactly 0.
        ds = p * tl.where((delta == float("inf"))[:, None], 0.0, dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(DOT_DTYPE)), q, input_precision=DOT_PREC)
    dk = dk * sm_scale
    dk_base = DK + b64 * stride_kb + h64 * stride_kh + start * stride_ks
    dv_base = DV + b64 * stride_vb + h64 * stride_vh + start * stride_vs
    tl.store(
        dk_base + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd,
        dk.to(DK.dtype.element_ty),
        mask=kv_msk,
    )
    tl.store(
        dv_base + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd,
        dv.to(DV.dtype.element_ty),
        mask=kv_msk,
    )


@triton.autotune(configs=_DQ_CONFIGS, key=_KEY, prune_configs_by=_PRUNE["dq"])
@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _attention_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, KPM, CU,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_gb, stride_gh, stride_gs, stride_gd,
    stride_lb, stride_lh, stride_ls,
    stride_mb, stride_ms,
    H, seqlen_q, seqlen_k, head_dim, sm_scale, qk_scale, dropout_p, seed, rng_stride, max_seqlen, max_seqlen_bucket,
    IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """dQ for one query block, looping over key blocks. Grid: (B * H, cdiv(max query length, BLOCK_M)).
    Pointers/strides as in the dK/dV kernel; DQ is laid out like Q (strides stride_q*)."""
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = bh // H
    h = bh % H
    start, seqlen_q, seqlen_k = _attention_seq_bounds(CU, b, seqlen_q, seqlen_k, VARLEN)
    if pid_m * BLOCK_M >= seqlen_q:
        return
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < seqlen_q
    d_ok = offs_d < head_dim
    q_msk = m_ok[:, None] & d_ok[None, :]
    q_base = Q + b64 * stride_qb + h64 * stride_qh + start * stride_qs
    g_base = DO + b64 * stride_gb + h64 * stride_gh + start * stride_gs
    q = tl.load(q_base + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd, mask=q_msk, other=0.0).to(
        DOT_DTYPE
    )
    do = tl.load(
        g_base + offs_m[:, None] * stride_gs + offs_d[None, :] * stride_gd, mask=q_msk, other=0.0
    ).to(DOT_DTYPE)
    lse = tl.load(
        LSE + b64 * stride_lb + h64 * stride_lh + (start + offs_m) * stride_ls, mask=m_ok, other=float("inf")
    )
    delta = tl.load(
        DELTA + b64 * stride_lb + h64 * stride_lh + (start + offs_m) * stride_ls, mask=m_ok, other=0.0
    )
    k_base = K + b64 * stride_kb + h64 * stride_kh + start * stride_ks
    v_base = V + b64 * stride_vb + h64 * stride_vh + start * stride_vs
    kpm_row = KPM + b64 * stride_mb
    seed_bh = seed + bh

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = seqlen_k
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(seqlen_k, (pid_m + 1) * BLOCK_M + seqlen_k - seqlen_q), 0)
    n_vis = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_msk = (offs_n < seqlen_k)[:, None] & d_ok[None, :]
        k = tl.load(
            k_base + offs_n[:, None] * stride_ks + offs_d[None, :] * stride_kd, mask=kv_msk, other=0.0
        )
        v = tl.load(
            v_base + offs_n[:, None] * stride_vs + offs_d[None, :] * stride_vd, mask=kv_msk, other=0.0
        )
        k = k.to(DOT_DTYPE)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        keep = _attention_visible(offs_m, offs_n, seqlen_q, seqlen_k, kpm_row, stride_ms, IS_CAUSAL, HAS_MASK)
        p = tl.where(keep, tl.math.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v.to(DOT_DTYPE)), input_precision=DOT_PREC)
        if DROPOUT:
            z = _attention_dropout_keep(seed_bh, offs_m, offs_n, rng_stride, dropout_p)
            dp = tl.where(z, dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(DOT_DTYPE), k, input_precision=DOT_PREC)
        n_vis += tl.sum(keep.to(tl.int32), 1)
    # A row with one visible key has P = 1 there, so dS = dP - Delta = 0 exactly (torch gets 0), but dP
    # (a dot) and Delta (a row sum) round differently: zero it, and mark the row for the dK/dV kernel.
    single = n_vis == 1
    dq = tl.where(single[:, None], 0.0, dq * sm_scale)
    tl.store(DELTA + b64 * stride_lb + h64 * stride_lh + (start + offs_m) * stride_ls, float("inf"),
             mask=m_ok & single)  # fmt: skip
    dq_base = DQ + b64 * stride_qb + h64 * stride_qh + start * stride_qs
    tl.store(
        dq_base + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd,
        dq.to(DQ.dtype.element_ty),
        mask=q_msk,
    )


# ----------------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------------
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _strides4(x: torch.Tensor, varlen: bool) -> tuple[int, int, int, int]:
    """(batch, head, seq, dim) strides of a padded (B, H, S, D) or varlen (T, H, D) tensor."""
    if varlen:
        return 0, x.stride(1), x.stride(0), x.stride(2)
    return x.stride(0), x.stride(1), x.stride(2), x.stride(3)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, varlen: bool) -> None:
    nd = 3 if varlen else 4
    layout = "(total, H, D)" if varlen else "(B, H, S, D)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != nd:
            raise ValueError(f"attention: {name} must be {layout}, got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise TypeError(
                f"attention: {name} dtype {t.dtype} unsupported; use float16, bfloat16 or float32"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"attention: q/k/v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one dtype"
        )
    if (
        k.shape != v.shape
        or q.shape[-1] != k.shape[-1]
        or q.shape[: -3 if not varlen else -2] != k.shape[: -3 if not varlen else -2]
    ):
        raise ValueError(
            f"attention: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if q.shape[-2 if varlen else 1] != k.shape[-2 if varlen else 1]:
        raise ValueError("attention: q and k/v head counts differ; expand k/v heads (GQA) before the kernel")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim {q.shape[-1]} > {MAX_HEAD_DIM}; use the torch path")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: fp32 inputs follow torch's matmul rule (TF32 only when
    ``torch.backends.cuda.matmul.allow_tf32``); IEEE fp32 dots run on CUDA cores and spill at D = 128,
    so fastft.ops sends that case to SDPA. The interpreter (CPU tests) keeps exact fp32."""
    if dtype == torch.float32 and (INTERPRET or not torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"


def _meta(q: torch.Tensor, head_dim: int, max_seqlen: int) -> dict:
    # Under the interpreter bf16 operands are fed to tl.dot as fp32: triton 3.9's interpreter returns
    # garbage for bf16 tl.dot (see _utils.dot_dtype). On a GPU they stay bf16.
    dd = dot_dtype(q.dtype)
    return dict(
        BLOCK_D=max(16, next_pow2(head_dim)),
        DOT_DTYPE=tl_dtype(dd),
        DOT_PREC=dot_precision(q.dtype),
        max_seqlen_bucket=next_pow2(max(1, max_seqlen)),
    )


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int = 0,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel; returns (out like q, lse fp32 [B, H, Sq] or [H, total]).

    Padded when ``cu_seqlens`` is None (q (B, H, Sq, D), k/v (B, H, Sk, D), key_padding_mask (B, Sk)
    non-zero = keep); varlen otherwise (q/k/v (total, H, D), cu_seqlens (B + 1) int, max_seqlen).
    """
    varlen = cu_seqlens is not None
    _check(q, k, v, varlen)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    head_dim = q.shape[-1]
    scale = head_dim**-0.5 if scale is None else float(scale)
    if varlen:
        if key_padding_mask is not None:
            raise ValueError("attention: varlen batches are unpadded; drop key_padding_mask")
        total, H, _ = q.shape
        B = cu_seqlens.numel() - 1
        sq = sk = max_seqlen
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
        lse = torch.empty((H, total), device=q.device, dtype=torch.float32)
        lse_strides = (0, lse.stride(0), lse.stride(1))
    else:
        B, H, sq, _ = q.shape
        sk = k.shape[2]
        cu = q  # unused dummy pointer
        lse = torch.empty((B, H, sq), device=q.device, dtype=torch.float32)
        lse_strides = lse.stride()
        max_seqlen = max(sq, sk)
    _check_grid(B, H)
    kpm, m_strides = _mask_arg(key_padding_mask, q, B, sk)
    o = torch.empty_like(q)
    rng_stride = max(sk, max_seqlen)
    grid = attention_grid(B * H, sq, "BLOCK_M")
    if B * H == 0 or q.numel() == 0:
        return o.zero_(), lse.fill_(float("inf"))
    _attention_fwd_kernel[grid](
        q, k, v, o, lse, kpm, cu,
        *_strides4(q, varlen), *_strides4(k, varlen), *_strides4(v, varlen), *_strides4(o, varlen),
        *lse_strides, *m_strides,
        H, sq, sk, head_dim, scale * LOG2E, float(dropout_p), int(seed), rng_stride, max_seqlen,
        IS_CAUSAL=bool(is_causal), HAS_MASK=kpm is not q, VARLEN=varlen, DROPOUT=dropout_p > 0.0,
        **_meta(q, head_dim, max_seqlen),
    )  # fmt: skip
    return o, lse


def _check_grid(B: int, H: int) -> None:
    # B * H is grid axis 0 (2**31 - 1 programs); the sequence blocks on axis 1 stay far below 65535.
    if B * H > 2**31 - 1:
        raise ValueError(f"attention: batch x heads = {B * H} > 2**31 - 1; split the batch into chunks")


def attention_grid(bh: int, seqlen: int, block: str):
    """Launch grid (B * H, cdiv(seqlen, META[block])): batch x heads on axis 0, which CUDA allows up to
    2**31 - 1 (axes 1 and 2 stop at 65535, too few for e.g. 8192 x 12 heads)."""
    return lambda META: (bh, triton.cdiv(max(seqlen, 1), META[block]))


def _mask_arg(mask: torch.Tensor | None, q: torch.Tensor, B: int, sk: int):
    if mask is None:
        return q, (0, 0)
    if mask.shape != (B, sk):
        raise ValueError(f"attention: key_padding_mask must be (B, Sk) = {(B, sk)}, got {tuple(mask.shape)}")
    m = mask.to(device=q.device, dtype=torch.uint8) if mask.dtype != torch.uint8 else mask
    return m, (m.stride(0), m.stride(1))


def attention_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    *,
    key_padding_mask: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int = 0,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the three backward kernels; returns (dq, dk, dv) laid out like q, k, v (same arguments as forward)."""
    varlen = cu_seqlens is not None
    _check(q, k, v, varlen)
    head_dim = q.shape[-1]
    scale = head_dim**-0.5 if scale is None else float(scale)
    if varlen:
        total, H, _ = q.shape
        B = cu_seqlens.numel() - 1
        sq = sk = max_seqlen
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
        lse_strides = (0, lse.stride(0), lse.stride(1))
    else:
        B, H, sq, _ = q.shape
        sk = k.shape[2]
        cu = q
        lse_strides = lse.stride()
        max_seqlen = max(sq, sk)
    _check_grid(B, H)
    kpm, m_strides = _mask_arg(key_padding_mask, q, B, sk)
    do = do if do.stride(-1) == 1 else do.contiguous()
    # dQ/dK/dV are written through Q/K/V's strides: empty_like keeps them only for dense layouts.
    q, k, v = (
        x if x.is_contiguous() or x.transpose(-3, -2).is_contiguous() else x.contiguous() for x in (q, k, v)
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if B * H == 0 or q.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty_like(lse)
    meta = _meta(q, head_dim, max_seqlen)
    pre_block = 64 if not INTERPRET else 32
    _attention_bwd_preprocess_kernel[(B * H, triton.cdiv(max(sq, 1), pre_block))](
        o, do, delta, cu, *_strides4(o, varlen), *_strides4(do, varlen), *lse_strides,
        H, sq, head_dim, VARLEN=varlen, BLOCK_M=pre_block, BLOCK_D=meta["BLOCK_D"],
    )  # fmt: skip
    common = dict(
        IS_CAUSAL=bool(is_causal), HAS_MASK=kpm is not q, VARLEN=varlen, DROPOUT=dropout_p > 0.0, **meta
    )
    scalars = (
        H,
        sq,
        sk,
        head_dim,
        scale,
        scale * LOG2E,
        float(dropout_p),
        int(seed),
        max(sk, max_seqlen),
        max_seqlen,
    )
    strides = (*_strides4(q, varlen), *_strides4(k, varlen), *_strides4(v, varlen), *_strides4(do, varlen),
               *lse_strides, *m_strides)  # fmt: skip
    # dQ first: it marks rows with a single visible key in Delta, whose dS the dK/dV kernel then zeroes.
    _attention_bwd_dq_kernel[attention_grid(B * H, sq, "BLOCK_M")](
        q, k, v, do, lse, delta, dq, kpm, cu, *strides, *scalars, **common
    )
    _attention_bwd_dkdv_kernel[attention_grid(B * H, sk, "BLOCK_N")](
        q, k, v, do, lse, delta, dk, dv, kpm, cu, *strides, *scalars, **common
    )
    return dq, dk, dv


def attention_flops(batch: int, heads: int, seqlen: int, head_dim: int, *, causal: bool = False) -> float:
    """Forward FLOPs 4·B·H·S²·D, halved for causal (the backward is counted as 2.5x this)."""
    f = 4.0 * batch * heads * seqlen * seqlen * head_dim
    return f / 2 if causal else f


__all__ = [
    "attention_forward", "attention_backward", "attention_flops", "attention_grid", "dot_precision",
    "MAX_HEAD_DIM", "LOG2E",
]  # fmt: skip
