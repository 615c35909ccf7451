"""One optimizer step of a :class:`~fastft.train.setup.Run`: forward/backward over the
accumulation window, the non-finite check, clipping, the optimizer and the schedule.

Loss normalisation under gradient accumulation: the micro-batches of one optimizer step are taken
from the loader first, the number of items (``task.count_items``: sequences, or label tokens) of the
whole accumulated batch is counted (summed over ranks), and every micro-batch contributes
``sum of its per-item losses / that count`` -- so the gradient equals the one of a single big batch,
whatever the micro-batch sizes (HF's ``num_items_in_batch``). Under DDP the loss is additionally
multiplied by the world size because DDP averages gradients over ranks.

In-step randomness (dropout, LoRA dropout) is re-seeded from (seed, step, rank) at every step, so a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import torch

from fastft import distributed as D
from fastft.train.errors import TrainingError
from fastft.train.setup import Run

__all__ = ["train_step", "compute_loss", "MAX_NONFINITE_IN_A_ROW"]

MAX_NONFINITE_IN_A_ROW = 10


def compute_loss(run: Run, model, batch: dict, n_items: int) -> torch.Tensor:
    """Loss of one micro-batch = sum of its per-item losses / ``n_items`` (the accumulated batch's);
    the task's ``loss_setup`` arguments (e.g. class weights) go along."""
    return run.task.loss(model, batch, n_items, teacher=run.teacher, cfg=run.cfg, **run.loss_kwargs)


def train_step(run: Run, window: list[dict]) -> tuple[torch.Tensor, int, bool]:
    """One optimizer step over the micro-batches in ``window``; returns (loss, samples, finite).

    ``loss`` (a 0-dim tensor, not synced to the host) is this rank's share of the step's mean loss.
    """
    model, world = run.model, run.world
    batches = [run.to_device(b) for b in window]
    n_items = sum(run.task.count_items(b) for b in batches)
    n_samples = sum(int(b["index"].shape[0]) for b in batches)
    if world > 1:
        n_items = int(D.all_reduce_sum(torch.tensor(n_items, device=run.device, dtype=torch.long), run.dist))
    n_items = max(n_items, 1)
    # In-step randomness (dropout, LoRA dropout) is a function of (seed, step, rank): exact resume.
    torch.manual_seed((run.cfg.seed * 1_000_003 + run.state.global_step * 1009 + run.dist.rank) % (2**63 - 1))
    total = torch.zeros((), device=run.device)
    for i, b in enumerate(batches):
        with D.no_sync(model, active=i < len(batches) - 1):
            with run.autocast():
                loss = compute_loss(run, model, b, n_items)
            if world > 1:
                loss = loss * world  # DDP averages gradients over ranks; we want the sum / n_items
            (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        total += loss.detach().float() / world
    # one host sync per optimizer step: decide on a non-finite loss (all ranks agree)
    bad = (~torch.isfinite(total)).float()
    if world > 1:
        bad = D.all_reduce_sum(bad, run.dist)
    if float(bad) != 0.0:
        skip_step(run)
        return total, n_samples, False
    run.state.nonfinite_in_a_row = 0
    optimizer_step(run)
    return total, n_samples, True


def skip_step(run: Run) -> None:
    """A non-finite loss: drop the gradients; ``--on-nonfinite stop`` (or too many in a row) ends the run."""
    s = run.state
    run.optimizer.zero_grad(set_to_none=True)
    s.skipped_steps += 1
    s.nonfinite_in_a_row += 1
    if run.cfg.on_nonfinite == "stop" or s.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
        raise TrainingError(
            f"the loss is NaN/inf at step {s.global_step + 1}"
            + (f" ({s.nonfinite_in_a_row} steps in a row)" if s.nonfinite_in_a_row > 1 else "")
            + "; lower --lr, use --precision bf16 or fp32, or check the data for broken labels"
        )
    run.scheduler.step()  # the schedule still advances so step counts and data position stay aligned


def optimizer_step(run: Run) -> None:
    """Clip (torch AdamW; FusedAdamW clips inside), step, schedule. The grad norm stays a tensor."""
    opt, scaler = run.optimizer, run.scaler
    if scaler is not None and run.clip_here:
        scaler.unscale_(opt)
    if run.clip_here:
        params = [p for p in run.model.parameters() if p.requires_grad and p.grad is not None]
        run.grad_norm = torch.nn.utils.clip_grad_norm_(params, run.cfg.max_grad_norm)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    gn = getattr(opt, "grad_norm", None)
    if gn is not None and not run.clip_here:
        run.grad_norm = gn
    run.scheduler.step()
    opt.zero_grad(set_to_none=True)
