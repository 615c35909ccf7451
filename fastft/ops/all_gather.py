"""All-gather rows across ranks with gradients: the contrastive loss's global batch.

``state`` is an optional :class:`fastft.distributed.DistState` (anything with a ``distributed``
flag); without one the gather runs whenever a process group of more than one rank is up.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_gather_with_grad", "all_gather_with_grad_offset"]


def _active(state: Any = None) -> bool:
    if state is not None and not state.distributed:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    """The device collectives run on: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather rows (dim 0) across ranks, keeping the autograd graph to this rank's rows.

    Forward: ``out = cat(t_0, ..., t_{W-1})`` (rank order; ranks may hold different row counts).

    Backward: every rank's loss L_r may read every rank's rows, so the gradient of this rank's
    rows t_s is ``sum_r dL_r/dout[rows of s]``: the incoming ``grad_out`` is summed over ranks
    (all-reduce) and this rank's slice is returned. Under DDP, which averages parameter gradients
    over ranks, the towers then get ``d/dtheta (1/W) sum_r L_r``: the gradient of the global loss.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        dev = _comm_device()
        width = max(sizes)
        buf = t.new_zeros((width, *t.shape[1:]), device=dev)
        buf[: t.shape[0]] = t.to(dev)
        parts = [torch.empty_like(buf) for _ in sizes]
        dist.all_gather(parts, buf.contiguous())
        ctx.sizes, ctx.rank, ctx.device = sizes, rank, t.device
        return torch.cat([p[:n] for p, n in zip(parts, sizes)], 0).to(t.device)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        dev = _comm_device()
        g = grad_out.contiguous().to(dev, copy=True)
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return g[start : start + ctx.sizes[ctx.rank]].to(ctx.device), None, None


def all_gather_with_grad_offset(t: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, int]:
    """(every rank's rows of ``t`` in rank order, the row where this rank's rows start).

    Differentiable (see :class:`_AllGatherWithGrad`); ranks may hold different row counts (one
    small collective finds them). One process: ``(t, 0)``.
    """
    if not _active(state):  # one process, or a DistState that says not distributed
        return t, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=_comm_device())
    counts = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    sizes = tuple(int(c) for c in counts)
    return _AllGatherWithGrad.apply(t, sizes, rank), sum(sizes[:rank])


def all_gather_with_grad(t: torch.Tensor, state: Any = None) -> torch.Tensor:
    """Every rank's rows of ``t`` concatenated in rank order, with gradients flowing back to each
    rank's own rows (open_clip's ``gather_with_grad``); ``t`` itself in one process."""
    return all_gather_with_grad_offset(t, state)[0]
