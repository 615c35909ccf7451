"""Plain-torch implementation of the ``fastft::`` AdamW ops, with the same signatures and math.

Used by :class:`fastft.optim.FusedAdamW` when the extension is absent or ``FASTFT_BACKEND=torch``.
It mirrors ``csrc/adamw_cpu.cpp``: fp32 per-tensor sums of squares added in double, the fp32 update
math of torch's fused AdamW, nothing changed (steps included) when a grad is inf/NaN. On CUDA the
skip decision reads the flag on the host (one sync per step); the compiled op does not.
"""

from __future__ import annotations

import math

import torch

__all__ = ["grad_sumsq", "adamw_update_", "fused_adamw_"]


def grad_sumsq(grads: list[torch.Tensor]) -> torch.Tensor:
    """-> (2,) fp32 ``[sum of squares of grads, 1.0 if any grad is inf/NaN else 0.0]``."""
    dev = grads[0].device
    sq = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32).double() ** 2 for g in grads]).sum()
    bad = torch.zeros((), dtype=torch.float64, device=dev)
    if not torch.isfinite(sq):  # inf/NaN grads, or just fp32 overflow of the squares: look exactly
        bad = torch.stack([~torch.isfinite(g).all() for g in grads]).any().double()
    return torch.stack([sq, bad]).float()


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
    *,
    _sumsq: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscale, clip and AdamW-update in place given global ``stats``; -> (grad_norm, found_inf)."""
    dev = params[0].device
    s = stats.double().cpu()
    sumsq = float(s[0]) if _sumsq is None else _sumsq
    inv_scale = 1.0 / float(grad_scale) if grad_scale is not None else 1.0
    norm = math.sqrt(sumsq) * inv_scale
    skip = bool(s[1] != 0) or (found_inf is not None and float(found_inf) > 0)
    norm_t = torch.tensor(norm, dtype=torch.float32, device=dev)
    found_t = torch.tensor(float(skip), dtype=torch.float32, device=dev)
    if skip:
        return norm_t, found_t
    clip = 1.0
    if max_norm is not None and math.isfinite(max_norm):
        clip = min(1.0, max_norm / (norm + 1e-6))
    gscale = inv_scale * clip
    for i, p in enumerate(params):
        state_steps[i].add_(1)
        t = float(state_steps[i])
        b1, b2, lr = beta1s[i], beta2s[i], lrs[i]
        bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
        g = grads[i].float()
        if gscale != 1.0:
            g = g * gscale
        p32 = p if p.dtype == torch.float32 else p.float()
        p32.mul_(1.0 - lr * weight_decays[i])
        exp_avgs[i].lerp_(g, 1.0 - b1)
        exp_avg_sqs[i].mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = (exp_avg_sqs[i].sqrt() / math.sqrt(bc2)).add_(epss[i])
        p32.addcdiv_(exp_avgs[i], denom, value=-lr / bc1)
        if p32 is not p:
            p.copy_(p32)
    return norm_t, found_t


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
    """``grad_sumsq`` + ``adamw_update_`` in one call (the sum of squares kept in double, as the op does)."""
    sq = sum(torch.linalg.vector_norm(g, dtype=torch.float32).double().item() ** 2 for g in grads)
    stats = grad_sumsq(grads) if not math.isfinite(sq) else torch.tensor([0.0, 0.0])
    return adamw_update_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        state_steps,
        lrs,
        beta1s,
        beta2s,
        epss,
        weight_decays,
        stats,
        max_norm,
        grad_scale,
        found_inf,
        _sumsq=sq,
    )
