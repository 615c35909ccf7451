"""Collectives that are identities in one process: all-reduce, broadcast, barriers, gathering
evaluation rows (:func:`gather_for_metrics`) and gathering with gradients (contrastive losses over
the global batch)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from fastft.distributed.launch import DistState, _active, _comm_device


def all_reduce_sum(t: torch.Tensor, state: DistState | None = None) -> torch.Tensor:
    """Sum ``t`` over ranks (in place where possible) and return it; identity in one process."""
    if not _active(state):
        return t
    dev = _comm_device(state)
    buf = t if t.device == dev else t.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not t:
        t.copy_(buf)
    return t


def all_reduce_mean(t: torch.Tensor, state: DistState | None = None) -> torch.Tensor:
    """Mean of ``t`` over ranks (for logging a loss); identity in one process."""
    if not _active(state):
        return t
    return all_reduce_sum(t, state).div_(dist.get_world_size())


def broadcast_object(obj: Any, state: DistState | None = None, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (small control data only, e.g. a stop flag)."""
    if not _active(state):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _all_gather_var(t: torch.Tensor, pad_value: float) -> list[torch.Tensor]:
    """All-gather tensors whose sizes differ across ranks (any dim); each rank's rows, padded trailing dims."""
    dev = _comm_device()
    world = dist.get_world_size()
    shape = torch.tensor(list(t.shape), dtype=torch.long, device=dev)
    ndim = torch.tensor([t.dim()], dtype=torch.long, device=dev)
    ndims = [torch.empty_like(ndim) for _ in range(world)]
    dist.all_gather(ndims, ndim)
    if len({int(n) for n in ndims}) != 1:
        raise ValueError("gather_for_metrics: tensors have a different number of dims on different ranks")
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes_l = [tuple(int(x) for x in s.tolist()) for s in shapes]
    max_shape = [max(s[d] for s in shapes_l) for d in range(t.dim())]
    padded = torch.full(max_shape, pad_value, dtype=t.dtype, device=dev)
    padded[tuple(slice(0, n) for n in t.shape)] = t.to(dev)
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    # Cut each rank's rows back to its own count; trailing dims stay padded to the common maximum.
    return [o[: s[0]] if o.dim() else o for o, s in zip(out, shapes_l)]


def gather_for_metrics(
    t: torch.Tensor,
    state: DistState,
    total: int,
    *,
    index: torch.Tensor | None = None,
    pad_value: float = 0,
) -> torch.Tensor:
    """Every rank's rows of ``t`` (dim 0 = samples), once each: ``total`` rows in dataset order.

    * ``index`` (the dataset row of each local row, shape (n_local,); every batch of
      ``fastft.train.data.make_dataloader`` carries it as ``batch["index"]``): any sharding works --
      rows are placed by index, duplicates (shard padding) dropped, and a missing row raises.
    * no ``index``: the ranks' tensors are concatenated in rank order and cut at ``total`` (rank r
      evaluated the contiguous r-th shard, padding at the end of the last shard).

    Trailing dims that differ across ranks (e.g. sequence length) are padded with ``pad_value``.
    Returns on ``t``'s device, on every rank. In one process: ``t[:total]`` (or ordered by ``index``).
    """
    if index is not None and index.shape[0] != t.shape[0]:
        raise ValueError(
            f"gather_for_metrics: index has {index.shape[0]} rows but the tensor has {t.shape[0]}"
        )
    if _active(state):
        parts = _all_gather_var(t, pad_value)
        cat = torch.cat(parts, 0) if parts[0].dim() > 0 else torch.stack(parts)
        idx = torch.cat(_all_gather_var(index.long(), -1), 0) if index is not None else None
    else:
        cat, idx = t, (index.long() if index is not None else None)
    if idx is None:
        if cat.shape[0] < total:
            raise ValueError(
                f"gather_for_metrics: gathered {cat.shape[0]} rows across ranks but total={total}"
            )
        return cat[:total].to(t.device)
    idx = idx.to(cat.device)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= total):
        raise ValueError(f"gather_for_metrics: index out of range [0, {total})")
    # First occurrence of each dataset row wins (shard padding repeats samples already seen).
    n = idx.shape[0]
    first = torch.full((total,), n, dtype=torch.long, device=cat.device)
    first.scatter_reduce_(0, idx, torch.arange(n, device=cat.device), reduce="amin")
    missing = int((first == n).sum())
    if missing:
        raise ValueError(f"gather_for_metrics: {missing} of {total} rows were evaluated by no rank")
    out = cat[first]
    return out.to(t.device)


def barrier(state: DistState | None = None) -> None:
    """Wait for every rank; no-op in one process."""
    if not _active(state):
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@contextlib.contextmanager
def main_process_first(state: DistState) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. tokenising into the datasets cache), then the others, which
    then find the cache instead of racing to write it."""
    if not state.is_main:
        barrier(state)
    try:
        yield
    finally:
        if state.is_main:
            barrier(state)
