"""Evaluation, task-agnostic: the task scores each batch, rows are gathered across ranks by the
dataset index every batch carries, and the task turns them into metrics (:func:`evaluate_model`,
also used by ``fastft eval``). For a training run: :func:`evaluate_split`, the collapse check, and
:func:`evaluate_and_track` (best-checkpoint tracking, early stopping, the callbacks' stop)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from fastft import distributed as D
from fastft.train import diagnose
from fastft.train.errors import ConfigError
from fastft.train.numerics import IGNORE_INDEX
from fastft.train.setup import Run, best_metric_spec, make_loader
from fastft.train.tasks import Task

__all__ = ["evaluate_model", "best_metric_spec", "evaluate_split", "collapse_check", "evaluate_and_track"]


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


# ==================================================================================================
# a training run's evaluations


@torch.no_grad()
def evaluate_split(run: Run, split: str = "validation", collect: dict | None = None) -> dict:
    """Metrics of the run's current model on ``split`` (loss and the task's metrics), ``{}`` when the
    split is missing or empty; ``collect`` receives the gathered rows (see :func:`evaluate_model`)."""
    ds = run.data.splits.get(split)
    if ds is None or len(ds) == 0:
        return {}
    return evaluate_model(
        run.model,
        make_loader(run, ds, train=False),
        task=run.task,
        device=run.device,
        autocast=run.autocast,
        dist_state=run.dist,
        total=len(ds),
        collect=collect,
    )


_COLLAPSE_CHECKED = (
    "single_label_classification",
    "multi_label_classification",
    "regression",
    "token_classification",
)


def collapse_check(run: Run, rows: dict, metrics: dict) -> dict[str, Any] | None:
    """:func:`diagnose.collapse_report` of one evaluation; None when it looks fine (or n/a)."""
    scores = rows.get("logits", rows.get("preds"))  # token classification: predicted tag ids
    if run.problem_type not in _COLLAPSE_CHECKED or scores is None or "labels" not in rows:
        return None
    return diagnose.collapse_report(
        run.problem_type,
        scores.float().cpu().numpy(),
        rows["labels"].cpu().numpy(),
        metrics,
        names=run.labels.id2label,
    )


def evaluate_and_track(run: Run) -> None:
    """Evaluate on the validation split, log it, track the best (ties: the lower eval loss, then the
    later step), and set ``state.stopped_early`` on early stopping or a callback's stop."""
    s = run.state
    rows: dict = {}
    metrics = evaluate_split(run, "validation", collect=rows)
    if not metrics:
        return
    collapse = collapse_check(run, rows, metrics)
    del rows
    value = metrics.get(run.metric_name)
    if value is None and run.metric_name not in metrics:
        raise ConfigError(
            f"--metric-for-best {run.metric_name!r} is not computed for {run.problem_type}; "
            f"use one of {', '.join(k for k, v in metrics.items() if isinstance(v, (int, float)))}"
        )
    best = None if s.best_metric is None else (s.best_metric, (s.best_eval or {}).get("loss"), s.best_step)
    decision = diagnose.better(
        (value, metrics.get("loss"), s.global_step),
        best,
        run.lower_is_better,
        run.cfg.early_stopping_min_delta,
    )
    if decision.select:
        s.best_metric, s.best_step, s.best_eval = value, s.global_step, metrics
        run.collapse = collapse
    s.bad_evals = 0 if decision.improved else s.bad_evals + 1
    shown = _log_eval(run, metrics, decision.select, collapse)
    _check_stop(run, shown)


def _log_eval(run: Run, metrics: dict, improved: bool, collapse: dict | None) -> dict:
    """The eval record (metrics.jsonl, callbacks) and line; -> the metrics as shown (no matrix)."""
    s = run.state
    epoch = round(s.epoch + s.batch_in_epoch / max(run.plan.loader_len, 1), 4)
    shown = {k: v for k, v in metrics.items() if k != "confusion_matrix"}
    rec = {
        "type": "eval",
        "split": "validation",
        "step": s.global_step,
        "epoch": epoch,
        **shown,
        "is_best": improved,
        "collapsed": collapse is not None,
        "final": s.global_step >= run.plan.total_steps,  # the run's last evaluation
    }
    run.log.event(rec)
    run.callbacks.on_log(rec)
    text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    run.log.print(f"eval @ step {s.global_step}: {text}" + ("  (best)" if improved else ""))
    if collapse is not None:
        run.log.print(collapse["message"])
    return shown


def _check_stop(run: Run, shown: dict) -> None:
    """Early stopping, then the callbacks' ``on_evaluate`` (a pruned sweep trial ends the same way)."""
    cfg, s = run.cfg, run.state
    if cfg.early_stopping_patience and s.bad_evals >= cfg.early_stopping_patience:
        s.stopped_early = True
        run.log.print(
            f"early stopping: no {run.metric_name} improvement > {cfg.early_stopping_min_delta} "
            f"in {s.bad_evals} evaluations"
        )
    stop = run.callbacks.on_evaluate(s.global_step, shown)
    if run.world > 1:  # every rank must agree to stop (only rank 0 may hold the callback)
        stop = bool(D.all_reduce_sum(torch.tensor(float(stop), device=run.device), run.dist) > 0)
    if stop and not s.stopped_early:
        s.stopped_early = True  # e.g. a pruned sweep trial: it ends like early stopping
        run.log.print(f"stopped by a callback after the evaluation at step {s.global_step}")
