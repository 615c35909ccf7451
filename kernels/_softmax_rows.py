"""Shared by the cross-entropy and knowledge-distillation kernels: the online softmax update, the
aligned row walk, the launch config and the launchers' argument checks.

One program handles one row of V columns. Row offsets are int64 (N * V overflows int32 at 16k
tokens x 256k vocab).

Row walking: :func:`_walk_row` visits a row starting at element offset ``base`` as
  head: the < 16 columns that bring ``base`` to a multiple of 16 elements (one masked 16-wide chunk),
  main: ``n_full`` whole BLOCK_V chunks, unmasked, with a multiple-of-16 hint on the offset,
  tail: the < BLOCK_V columns left: a masked BLOCK_V chunk whose bound is the multiple of 16 below
        what is left (so the mask is constant over aligned runs of 16: still vector loads), then
        one masked 16-wide chunk for the last < 16 columns.
Without the split every load carries ``cols < V`` and, when V is not a multiple of 16 (GPT-2's
50257, BERT's 30522), the compiler cannot prove any 16-byte run is in bounds or aligned: it emits
2-byte loads. The hint is true by construction; it yields vector loads when the tensor's base
pointer is 16-byte aligned (which the JIT checks and specialises on), scalar ones otherwise.

The hint is applied in the walk, to an offset it computes: a jit helper's argument is a function
parameter until inlining, and a ``multiple_of`` on it would be lost. The per-chunk functions reach
their other rows (grad, teacher) at the hinted offset plus a shift that is the constant 0 when the
strides are equal (the kernels' SAME_STRIDE), so those rows keep the hint too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastft.kernels._utils import INTERPRET, next_pow2

_HEAD = tl.constexpr(16)


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


@triton.jit
def _row_split(base, V, BLOCK_V: tl.constexpr):
    """(head, n_full) for a row at element offset ``base`` (int64); see the module docstring."""
    head = tl.minimum((16 - base % 16) % 16, V)
    n_full = (V - head) // BLOCK_V
    return head, n_full


@triton.jit
def _tail16(c, V):
    """Columns left after ``c`` (an aligned offset), rounded down to a multiple of 16, hinted."""
    return tl.multiple_of((V - c) // 16 * 16, 16)


@triton.jit
def _walk_row(fn: tl.constexpr, state, args, base, V, BLOCK_V: tl.constexpr):
    """Fold ``fn`` over the chunks of one row, head / main / tail / last (module docstring).

    ``fn(state, args, off, c, cols, n_valid, MASKED) -> state`` handles the columns ``c + cols``
    found at element offset ``off + cols``; ``n_valid`` bounds ``cols`` in MASKED chunks. ``state``
    is a tuple of running statistics (or a dummy tensor for a pure store), ``args`` the tuple of
    everything else ``fn`` reads. Chunks are visited left to right, so reductions keep their order.
    """
    head, n_full = _row_split(base, V, BLOCK_V)
    cols16 = tl.arange(0, _HEAD)
    cols = tl.arange(0, BLOCK_V)
    state = fn(state, args, base, 0, cols16, head, True)
    for i in range(0, n_full):
        c = head + i * BLOCK_V
        state = fn(state, args, tl.multiple_of(base + c, 16), c, cols, V, False)
    c = head + n_full * BLOCK_V
    state = fn(state, args, tl.multiple_of(base + c, 16), c, cols, _tail16(c, V), True)
    c2 = c + _tail16(c, V)
    state = fn(state, args, base + c2, c2, cols16, V - c2, True)
    return state


@triton.jit
def _zero_chunk(state, args, off, c, cols, n_valid, MASKED: tl.constexpr):
    (G,) = args
    zero = tl.zeros(cols.shape, tl.float32).to(G.dtype.element_ty)
    if MASKED:
        tl.store(G + off + cols, zero, mask=cols < n_valid)
    else:
        tl.store(G + off + cols, zero)
    return state


@triton.jit
def _zero_row(G, gbase, V, BLOCK_V: tl.constexpr):
    """Zeros over one gradient row (ignored targets), walked like the loads."""
    _walk_row(_zero_chunk, tl.zeros((), tl.int32), (G,), gbase, V, BLOCK_V)


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


# ----------------------------------------------------------------------------- launcher checks


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
