"""Evaluation, task-agnostic: the task scores each batch, rows are gathered across ranks by the
dataset index every batch carries, and the task turns them into metrics."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from fastft.train.tasks import IGNORE_INDEX, Task

__all__ = ["evaluate_model", "best_metric_spec", "is_better"]


def best_metric_spec(task: Task, metric_for_best: str | None) -> tuple[str, bool]:
    """(metric that picks the best checkpoint, lower is better)."""
    name = metric_for_best or task.best_metric
    return name, name in task.lower_is_better or name == "loss"


def is_better(new: float | None, best: float | None, lower: bool, min_delta: float) -> bool:
    if new is None or (isinstance(new, float) and new != new) or new in (float("inf"), float("-inf")):
        return False
    if best is None:
        return True
    return (best - new > min_delta) if lower else (new - best > min_delta)


@torch.no_grad()
def evaluate_model(
    model,
    loader,
    *,
    task: Task,
    device,
    autocast=nullcontext,
    dist_state=None,
    total: int | None = None,
    collect: dict | None = None,
) -> dict[str, Any]:
    """Loss + the task's metrics of ``model`` over ``loader`` (also used by ``fastft eval``).

    Under torchrun each rank scores its batches; the loss sums and counts are all-reduced (shard
    padding rows are left out by the task through ``batch["repeat"]``) and the per-row tensors are
    gathered by ``batch["index"]``, so the metrics see every dataset row once, in dataset order.
    ``collect``: a dict that receives the gathered rows (``logits``, ``labels``), for the collapse check.
    """
    from fastft import distributed as D

    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    rows: dict[str, list[torch.Tensor]] = {}
    index: list[torch.Tensor] = []
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        with autocast():
            out = task.eval_batch(model, batch)
        loss_sum += out.loss_sum
        count += out.count
        for k, v in out.rows.items():
            rows.setdefault(k, []).append(v)
        index.append(batch["index"])
    if was_training:
        model.train()
    multi = dist_state is not None and dist_state.world_size > 1
    if multi:
        loss_sum = D.all_reduce_sum(loss_sum, dist_state)
        count = D.all_reduce_sum(count, dist_state)
    n = total if total is not None else sum(len(i) for i in index)
    idx = torch.cat(index) if index else torch.empty(0, dtype=torch.long, device=device)
    gathered = {}
    for k, parts in rows.items():
        pad = IGNORE_INDEX if k == "labels" else 0  # token-level rows differ in length across batches
        t = _cat_padded(parts, pad)
        # one process: the loader's order is the dataset order, without repeats
        gathered[k] = D.gather_for_metrics(t, dist_state, n, index=idx, pad_value=pad) if multi else t
    mean_loss = float(loss_sum / count.clamp_min(1))
    if collect is not None:
        collect.update(gathered)
    if rows and "labels" not in gathered:  # an unlabelled split: nothing to score
        return {}
    return task.model_metrics(model, gathered, mean_loss, int(count))


def _cat_padded(parts: list[torch.Tensor], pad: float) -> torch.Tensor:
    """Concatenate along dim 0, padding trailing dims (e.g. sequence length) to the largest with ``pad``."""
    if all(p.shape[1:] == parts[0].shape[1:] for p in parts):
        return torch.cat(parts)
    shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
    out = parts[0].new_full((sum(len(p) for p in parts), *shape), pad)
    start = 0
    for p in parts:
        out[(slice(start, start + len(p)), *(slice(0, n) for n in p.shape[1:]))] = p
        start += len(p)
    return out
