"""Helpers shared by the kernel modules."""

from __future__ import annotations

import os

import torch
import triton

#: True when kernels run in the Triton CPU interpreter (``TRITON_INTERPRET=1``).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else triton.next_power_of_2(n)


def dot_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype to feed ``tl.dot`` with.

    The Triton 3.9 interpreter returns garbage for ``tl.dot`` on bf16 operands (fp16/fp32 are
    fine), so in interpreter mode bf16 operands are upcast to fp32; on a GPU they stay bf16.
    """
    if INTERPRET and dtype == torch.bfloat16:
        return torch.float32
    return dtype


def tl_dtype(dtype: torch.dtype):
    import triton.language as tl

    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]
