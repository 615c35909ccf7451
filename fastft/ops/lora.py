"""LoRA linear: ``y = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ`` as a registered custom op with autograd.

Shapes: ``x`` (..., K); ``weight`` (N, K) for ``weight_layout="linear"`` (``nn.Linear``) or (K, N) for
``"conv1d"`` (transformers' GPT-2 ``Conv1D``, used through its strides, never transposed/copied);
``bias`` (N,) or None; ``lora_a`` (r, K); ``lora_b`` (N, r); ``y`` (..., N).

Backward math (h = drop(x) = x ⊙ m / (1-p), u = h·Aᵀ (M, r) saved by the forward, dy (M, N)):

    t  = dy·B                        (M, r)
    dB = s · dyᵀ·u                   (N, r)
    dA = s · tᵀ·h                    (r, K)
    dx = dy·W + s · (t·A) ⊙ m/(1-p)  (M, K)   (dy·W reads W through its strides in both layouts)
    db = Σ_rows dy                   (N,)     only when the bias requires grad
    dW = dyᵀ·x (or xᵀ·dy for conv1d)          only when the weight requires grad (normally frozen)

The dropout keep-mask m is never stored: the forward draws a seed from torch's default CPU
generator (so ``torch.manual_seed`` makes it reproducible) and the backward regenerates the same
mask from it. Both paths (Triton kernel and torch reference) follow that rule, but each with its
own RNG (Philox in the kernel, ``torch.Generator`` in the reference), so with dropout the two paths
draw different masks; without dropout they compute the same numbers.

Dispatch: the forward custom op asks ``fastft._backend.use_triton("lora_linear", ...)`` when it runs
(not while torch.compile traces the caller) and records the answer in a tiny CPU flag that the
backward reads, so forward and backward always take the same path (and the same mask). On CUDA the
kernel path is ``fastft.kernels.lora`` (one fused GEMM with the rank-r update in its epilogue, or
with ``FASTFT_LORA_MAIN_GEMM=cublas`` cuBLAS for the frozen GEMM plus a Triton epilogue pass); fp32
without TF32, r > 128 and other dtypes take the torch path.
"""

import torch
from torch import Tensor

from fastft import _backend

__all__ = ["lora_linear"]

_OP = "lora_linear"
_LAYOUTS = ("linear", "conv1d")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_RANK = 128


# ----------------------------------------------------------------------------------- reference path
def keep_mask(seed: int, shape: tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """The reference path's dropout keep-mask (bool), regenerated from ``seed`` (for tests too)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return torch.rand(shape, generator=g, device=device) >= p


def _dropped(x: Tensor, p: float, seed: int) -> Tensor:
    if p == 0.0:
        return x
    m = keep_mask(seed, tuple(x.shape), p, x.device)
    return x * m.to(x.dtype) * (1.0 / (1.0 - p))


def _ref_forward(x, weight, bias, a, b, scaling, p, seed, conv1d):
    h = _dropped(x, p, seed)
    u = h @ a.t()
    w = weight if conv1d else weight.t()
    y = torch.addmm(bias, x, w) if bias is not None else x @ w
    y = y.addmm_(u, b.t(), alpha=scaling)
    return y, u


def _ref_backward(dy, x, weight, a, b, u, scaling, p, seed, conv1d, need_dx, need_dw, need_db, need_ab):
    # unneeded grads are fresh empty tensors (outputs of a custom op may not alias each other)
    dx, dw, db, da, dbb = (dy.new_empty(0) for _ in range(5))
    t = dy @ b if (need_dx or need_ab) else None
    if need_dx:
        dx = dy @ (weight.t() if conv1d else weight)
        lo = (t @ a) * scaling
        if p > 0.0:
            lo = _dropped(lo, p, seed)  # same seed -> same mask as the forward
        dx = dx + lo
    if need_ab:
        h = _dropped(x, p, seed)
        da = (t.t() @ h) * scaling
        dbb = (dy.t() @ u) * scaling
    if need_db:
        db = dy.sum(0)
    if need_dw:
        dw = x.t() @ dy if conv1d else dy.t() @ x
    return dx, dw, db, da, dbb


# ----------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("fastft::lora_linear_fwd", mutates_args=())
def _fwd_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lora_a: Tensor,
    lora_b: Tensor,
    seed: Tensor,
    scaling: float,
    dropout_p: float,
    conv1d: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(M, K) -> (y (M, N), u = drop(x)·Aᵀ (M, r), path flag); u and the flag go to the backward.

    The path is chosen here, when the op runs (not while torch.compile traces the caller), and
    recorded in a 0-dim CPU int8 flag so that the backward takes the same path even outside the
    ``fastft.backend(...)`` block (the two paths draw different dropout masks).
    """
    s = int(seed.item()) if dropout_p > 0.0 else 0
    use_kernel = _backend.use_triton(_OP, x, unsupported=_unsupported(x, weight, lora_a))
    flag = torch.tensor(int(use_kernel), dtype=torch.int8)
    if use_kernel:
        from fastft.kernels.lora import lora_forward

        y, u = lora_forward(x, weight, bias, lora_a, lora_b, scaling, dropout_p, s, conv1d)
    else:
        y, u = _ref_forward(x, weight, bias, lora_a, lora_b, scaling, dropout_p, s, conv1d)
    return y, u, flag


@_fwd_op.register_fake
def _(x, weight, bias, lora_a, lora_b, seed, scaling, dropout_p, conv1d):
    n = weight.shape[1] if conv1d else weight.shape[0]
    flag = torch.empty((), dtype=torch.int8, device="cpu")
    return x.new_empty(x.shape[0], n), x.new_empty(x.shape[0], lora_a.shape[0]), flag


@torch.library.custom_op("fastft::lora_linear_bwd", mutates_args=())
def _bwd_op(
    dy: Tensor,
    x: Tensor,
    weight: Tensor,
    lora_a: Tensor,
    lora_b: Tensor,
    u: Tensor,
    seed: Tensor,
    flag: Tensor,
    scaling: float,
    dropout_p: float,
    conv1d: bool,
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
    need_ab: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns (dx, dW, db, dA, dB); a gradient that is not needed comes back as an empty tensor."""
    s = int(seed.item()) if dropout_p > 0.0 else 0
    dy = dy.contiguous()
    if bool(flag.item()):
        from fastft.kernels.lora import lora_backward

        dx, da, dbb = lora_backward(
            dy, x, weight, lora_a, lora_b, u, scaling, dropout_p, s, conv1d, need_dx=need_dx, need_ab=need_ab
        )
        db = dy.sum(0) if need_db else dy.new_empty(0)
        dw = (x.t() @ dy if conv1d else dy.t() @ x) if need_dw else dy.new_empty(0)
        return dx, dw, db, da, dbb
    return _ref_backward(
        dy, x, weight, lora_a, lora_b, u, scaling, dropout_p, s, conv1d, need_dx, need_dw, need_db, need_ab
    )


@_bwd_op.register_fake
def _(
    dy,
    x,
    weight,
    lora_a,
    lora_b,
    u,
    seed,
    flag,
    scaling,
    dropout_p,
    conv1d,
    need_dx,
    need_dw,
    need_db,
    need_ab,
):
    return (
        x.new_empty(x.shape) if need_dx else dy.new_empty(0),
        weight.new_empty(weight.shape) if need_dw else dy.new_empty(0),
        dy.new_empty(dy.shape[1]) if need_db else dy.new_empty(0),
        lora_a.new_empty(lora_a.shape) if need_ab else dy.new_empty(0),
        lora_b.new_empty(lora_b.shape) if need_ab else dy.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, a, b, seed, scaling, p, conv1d = inputs
    _, u, flag = output
    ctx.save_for_backward(x, weight, a, b, u, seed, flag)
    ctx.cfg = (scaling, p, conv1d)


def _backward(ctx, dy, _du, _dflag):
    x, weight, a, b, u, seed, flag = ctx.saved_tensors
    scaling, p, conv1d = ctx.cfg
    need = ctx.needs_input_grad
    need_ab = bool(need[3] or need[4])
    dx, dw, db, da, dbb = _bwd_op(
        dy,
        x,
        weight,
        a,
        b,
        u,
        seed,
        flag,
        scaling,
        p,
        conv1d,
        bool(need[0]),
        bool(need[1]),
        bool(need[2]),
        need_ab,
    )
    grads = (dx, dw, db, da, dbb)
    return (*(g if n else None for g, n in zip(grads, need[:5])), None, None, None, None)


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------- public API
def _unsupported(x: Tensor, weight: Tensor, lora_a: Tensor) -> str | None:
    if x.dtype not in _DTYPES:
        return f"dtype {x.dtype} (kernel supports fp16/bf16/fp32)"
    if lora_a.shape[0] > MAX_RANK:
        return f"rank {lora_a.shape[0]} > {MAX_RANK}"
    if x.shape[0] == 0:
        return "empty input"
    if x.is_cuda and x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        # IEEE fp32 tl.dot runs on CUDA cores, slower than cuBLAS SGEMM: the kernel only pays off
        # in 16-bit or with TF32 allowed (torch.backends.cuda.matmul.allow_tf32 = True)
        return "fp32 without TF32 (cuBLAS is faster)"
    return None


def lora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lora_a: Tensor,
    lora_b: Tensor,
    scaling: float,
    *,
    dropout_p: float = 0.0,
    weight_layout: str = "linear",
) -> Tensor:
    """``y = x·Wᵀ + b + scaling·(dropout(x)·Aᵀ)·Bᵀ`` with a fused Triton kernel (CUDA) or torch.

    Args:
        x: (..., K) input.
        weight: frozen base weight, (N, K) if ``weight_layout="linear"`` or (K, N) if ``"conv1d"``
            (GPT-2's ``Conv1D``); any strides.
        bias: (N,) or None. Its gradient is computed only if it requires grad.
        lora_a: (r, K) LoRA down projection (PEFT's ``lora_A.weight``), r <= 128 for the kernel.
        lora_b: (N, r) LoRA up projection (PEFT's ``lora_B.weight``).
        scaling: ``alpha / r`` (or ``alpha / sqrt(r)`` for rsLoRA).
        dropout_p: LoRA dropout on the input of the low-rank path only (pass 0.0 in eval). The mask
            comes from a seed drawn from torch's default generator (``torch.manual_seed``).
        weight_layout: ``"linear"`` or ``"conv1d"``.
    Returns: (..., N) in the compute dtype (x's dtype, or the autocast dtype under autocast).
    """
    if weight_layout not in _LAYOUTS:
        raise ValueError(f"lora_linear: weight_layout={weight_layout!r}; use 'linear' or 'conv1d'")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"lora_linear: dropout_p={dropout_p} must be in [0, 1)")
    conv1d = weight_layout == "conv1d"
    if weight.dim() != 2 or lora_a.dim() != 2 or lora_b.dim() != 2:
        raise ValueError("lora_linear: weight, lora_a and lora_b must be 2-D")
    k, n = (weight.shape[0], weight.shape[1]) if conv1d else (weight.shape[1], weight.shape[0])
    r = lora_a.shape[0]
    if x.shape[-1] != k or lora_a.shape[1] != k or tuple(lora_b.shape) != (n, r):
        raise ValueError(
            f"lora_linear: shapes do not fit: x {tuple(x.shape)}, weight {tuple(weight.shape)} "
            f"({weight_layout}), lora_a {tuple(lora_a.shape)} (want ({r}, {k})), "
            f"lora_b {tuple(lora_b.shape)} (want ({n}, {r}))"
        )
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"lora_linear: bias shape {tuple(bias.shape)}, want ({n},)")

    # Autocast does not see inside a custom op: cast like F.linear would. Otherwise compute in x's
    # dtype; LoRA factors kept in fp32 (a common master-weight setup) are cast down (cheap, r small).
    dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    x, weight, lora_a, lora_b = (t if t.dtype == dt else t.to(dt) for t in (x, weight, lora_a, lora_b))
    if bias is not None and bias.dtype != dt:
        bias = bias.to(dt)

    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if dropout_p > 0.0:
        seed = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64)
    else:
        seed = torch.zeros(1, dtype=torch.int64)
    y, _, _ = _fwd_op(x2, weight, bias, lora_a, lora_b, seed, float(scaling), float(dropout_p), conv1d)
    return y.reshape(*lead, n)
