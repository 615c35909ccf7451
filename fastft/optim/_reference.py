"""Plain-torch implementation of the ``fastft::`` AdamW ops, with the same signatures and math.

Used by :class:`fastft.optim.FusedAdamW` when the extension is absent, lacks kernels for the params'
device (a CPU-only build on a GPU machine) or ``FASTFT_BACKEND=torch``. It never waits on the device:

* norm: ``torch._foreach_norm`` with float64 accumulation (finite fp32/bf16/fp16 squares cannot
  overflow it, so the norm is non-finite exactly when a grad holds inf/NaN -- no second scan), summed
  on the device;
* clip and unscale: one device scalar ``grad_scale / clip_coef`` handed to torch's fused AdamW kernel
  (``torch._fused_adamw_``, what ``torch.optim.AdamW(fused=True)`` runs), which divides the grads by it;
* skip on inf/NaN: the same kernel's ``found_inf`` argument, and ``steps += 1 - found_inf``.

Differences from the compiled op: the fused kernel stores the unscaled, clipped grad back into fp32
``.grad`` tensors (as ``GradScaler.unscale_`` + ``clip_grad_norm_`` would), bf16/fp16 params are
updated through fp32 copies made in slices of :data:`SLICE_NUMEL` elements (torch's kernel wants one
dtype for params and states), and the norm of finite grads whose fp32 squares overflow is finite
here (inf in the op, which then clips the step to zero). Numbers agree to fp32 rounding.

Devices without ``torch._fused_adamw_`` and non-contiguous tensors take :func:`_loop_update`, a
per-tensor loop that reads the step count and the skip flag on the host (two syncs per step).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

__all__ = ["grad_sumsq", "adamw_update_", "fused_adamw_", "SLICE_NUMEL"]

#: bf16/fp16 params are updated in fp32 copies of at most this many elements at a time (bounds the
#: temporary memory at 8 bytes per element of the slice).
SLICE_NUMEL = 1 << 26


def _sumsq(grads: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of squares as a float64 0-dim tensor, bool 0-dim tensor: any grad inf/NaN) on the device."""
    norms = torch._foreach_norm(grads, 2.0, dtype=torch.float64)
    sq = torch.stack(norms).square().sum()
    return sq, ~torch.isfinite(sq)


def grad_sumsq(grads: list[torch.Tensor]) -> torch.Tensor:
    """-> (2,) fp32 ``[sum of squares of grads, 1.0 if any grad is inf/NaN else 0.0]``."""
    sq, bad = _sumsq(grads)
    return torch.stack([sq.float(), bad.float()])


def _coefs(
    sq: torch.Tensor,
    bad: torch.Tensor,
    max_norm: float | None,
    grad_scale: torch.Tensor | None,
    found_inf: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """-> (grad_norm fp32, found fp32, divisor for the grads or None when it is 1), all on the device."""
    inv_scale = 1.0 / grad_scale.double() if grad_scale is not None else None
    norm = sq.sqrt() if inv_scale is None else sq.sqrt() * inv_scale
    skip = bad if found_inf is None else bad | (found_inf > 0)
    clip = None
    if max_norm is not None and math.isfinite(max_norm):
        clip = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    if clip is None and inv_scale is None:
        return norm.float(), skip.float(), None
    mult = clip if inv_scale is None else (inv_scale if clip is None else inv_scale * clip)
    # the skipped step never reads it, but keep it finite (NaN norm -> NaN clip) all the same
    div = torch.where(skip, 1.0, 1.0 / mult).float()
    return norm.float(), skip.float(), div


def _has_fused(dev: torch.device) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("aten::_fused_adamw_", dev.type.upper())


def _slices(idx: list[int], params: list[torch.Tensor]):
    """``idx`` cut into runs of at most SLICE_NUMEL elements (a bigger tensor is a run of its own)."""
    run, n = [], 0
    for i in idx:
        if run and n + params[i].numel() > SLICE_NUMEL:
            yield run
            run, n = [], 0
        run.append(i)
        n += params[i].numel()
    if run:
        yield run


def _fused_update(params, grads, exp_avgs, exp_avg_sqs, state_steps, hyper, div, found) -> None:
    """torch's fused AdamW kernel per (dtype, hyper-parameters) group; low-precision params in fp32 copies."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        groups[(p.dtype, *(h[i] for h in hyper))].append(i)
    torch._foreach_add_(state_steps, 1.0 - found)  # the kernel reads the step being taken
    for (dtype, lr, b1, b2, eps, wd), idx in groups.items():
        kw = dict(lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=eps, amsgrad=False, maximize=False)
        for run in [idx] if dtype == torch.float32 else _slices(idx, params):
            ps = [params[i] for i in run]
            gs = [grads[i] for i in run]
            if dtype != torch.float32:
                ps32 = [p.float() for p in ps]
                gs = [g.float() for g in gs]
            else:
                ps32 = ps
            ms, vs, st = ([L[i] for i in run] for L in (exp_avgs, exp_avg_sqs, state_steps))
            torch._fused_adamw_(ps32, gs, ms, vs, [], st, **kw, grad_scale=div, found_inf=found)
            if ps32 is not ps:
                torch._foreach_copy_(ps, ps32)


def _loop_update(params, grads, exp_avgs, exp_avg_sqs, state_steps, hyper, div, found) -> None:
    """Per-tensor torch ops (any device, any strides); reads the skip flag and the steps on the host."""
    if bool(found):
        return
    gscale = 1.0 / float(div) if div is not None else 1.0
    for i, p in enumerate(params):
        lr, b1, b2, eps, wd = (h[i] for h in hyper)
        state_steps[i].add_(1)
        t = float(state_steps[i])
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
        g = grads[i].float()
        if gscale != 1.0:
            g = g * gscale
        p32 = p if p.dtype == torch.float32 else p.float()
        p32.mul_(1.0 - lr * wd)
        exp_avgs[i].lerp_(g, 1.0 - b1)
        exp_avg_sqs[i].mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = (exp_avg_sqs[i].sqrt() / math.sqrt(bc2)).add_(eps)
        p32.addcdiv_(exp_avgs[i], denom, value=-lr / bc1)
        if p32 is not p:
            p.copy_(p32)


def _update(
    params, grads, exp_avgs, exp_avg_sqs, state_steps, hyper, sq, bad, max_norm, grad_scale, found_inf
):
    norm, found, div = _coefs(sq, bad, max_norm, grad_scale, found_inf)
    tensors = (params, grads, exp_avgs, exp_avg_sqs)
    fast = _has_fused(params[0].device) and all(t.is_contiguous() for L in tensors for t in L)
    (_fused_update if fast else _loop_update)(*tensors, state_steps, hyper, div, found)
    return norm, found


def adamw_update_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    lrs: list[float],
    beta1s: list[float],
    beta2s: list[float],
    epss: list[float],
    weight_decays: list[float],
    stats: torch.Tensor,
    max_norm: float | None = None,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscale, clip and AdamW-update in place given global ``stats``; -> (grad_norm, found_inf)."""
    stats = stats.to(params[0].device)
    hyper = (lrs, beta1s, beta2s, epss, weight_decays)
    sq, bad = stats[0].double(), stats[1] != 0
    return _update(
        params, grads, exp_avgs, exp_avg_sqs, state_steps, hyper, sq, bad, max_norm, grad_scale, found_inf
    )


def fused_adamw_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    state_steps: list[torch.Tensor],
    lrs: list[float],
    beta1s: list[float],
    beta2s: list[float],
    epss: list[float],
    weight_decays: list[float],
    max_norm: float | None = None,
    grad_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``grad_sumsq`` + ``adamw_update_`` in one call (the sum of squares kept in float64)."""
    hyper = (lrs, beta1s, beta2s, epss, weight_decays)
    sq, bad = _sumsq(grads)
    return _update(
        params, grads, exp_avgs, exp_avg_sqs, state_steps, hyper, sq, bad, max_norm, grad_scale, found_inf
    )
