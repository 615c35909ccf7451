"""The training loop of a set-up :class:`~fastft.train.setup.Run`: epochs of optimizer steps
(:func:`fastft.train.step.train_step`), logging, evaluation, checkpoints, early stopping and the stop
signal. It names no task and no strategy: the strategy acts through ``run.hook``."""

from __future__ import annotations

import time

import torch

from fastft import distributed as D
from fastft.train import step as S
from fastft.train.evaluate import evaluate_and_track
from fastft.train.finish import finish, interrupted
from fastft.train.report import open_log
from fastft.train.resume import save_checkpoint
from fastft.train.setup import Run, train_loader

__all__ = ["train_loop"]


def train_loop(run: Run) -> dict:
    """Train to the plan's end (or early stop / a stop signal); -> results.json's content."""
    open_log(run)
    s, plan = run.state, run.plan
    t_start, samples = time.perf_counter(), 0
    window = _Window(run.device)
    run.model.train()
    done = s.global_step >= plan.total_steps
    while not done and s.epoch < plan.num_epochs:
        run.hook.epoch_start(run.raw_model, s)
        for micro in _windows(run, s.epoch):
            loss, n, finite = S.train_step(run, micro)
            s.global_step += 1
            s.batch_in_epoch += len(micro)
            samples += n
            window.add(loss, n, finite)
            window = _log_step(run, window, t_start)
            run.callbacks.on_step(s.global_step)
            done = _after_step(run)
            if done:
                break
        if not done:
            s.epoch += 1
            s.batch_in_epoch = 0
    if run.interrupted:
        return interrupted(run)
    return finish(run, time.perf_counter() - t_start, samples)


def _windows(run: Run, epoch: int):
    """The micro-batch lists of this epoch's remaining optimizer steps (``grad_accum`` each)."""
    it = iter(train_loader(run, epoch, skip=run.state.batch_in_epoch))
    while True:
        micro = [b for _, b in zip(range(run.cfg.grad_accum), it)]
        if not micro:
            return
        run.hook.step_start(run.raw_model, run.state)
        yield micro


def _after_step(run: Run) -> bool:
    """Evaluation, checkpoint, early stop and signals after one step; True when the run ends."""
    cfg, s = run.cfg, run.state
    end_of_epoch = s.batch_in_epoch >= run.plan.loader_len
    last = s.global_step >= run.plan.total_steps
    do_eval = cfg.eval_strategy != "no" and (
        (cfg.eval_strategy == "steps" and s.global_step % cfg.eval_steps == 0)
        or (cfg.eval_strategy == "epoch" and end_of_epoch)
        or last
    )
    if do_eval:
        evaluate_and_track(run)
        run.model.train()
    if do_eval or (cfg.save_steps and s.global_step % cfg.save_steps == 0):
        save_checkpoint(run)
    done = s.stopped_early or last
    run.interrupted = run.stop.requested and not done  # a signal in the last step: finish
    if run.interrupted:
        save_checkpoint(run)
    return done or run.interrupted


class _Window:
    """The training-loss window between two logging steps."""

    def __init__(self, device):
        self.loss = torch.zeros((), device=device)
        self.steps = self.samples = 0
        self.t = time.perf_counter()

    def add(self, loss: torch.Tensor, samples: int, finite: bool) -> None:
        self.samples += samples
        if finite:
            self.loss += loss
            self.steps += 1


def _log_step(run: Run, w: _Window, t_start: float) -> _Window:
    """Log the window at logging steps (the only host syncs of the loop); -> the next window."""
    s, step = run.state, run.state.global_step
    if not (step % run.cfg.logging_steps == 0 or step == run.plan.total_steps):
        run.log.step(step)
        return w
    # each rank holds (its items' loss sum / the global item count): their sum is the mean
    mean_loss = float(D.all_reduce_sum(w.loss.detach().clone(), run.dist)) / max(w.steps, 1)
    sps = w.samples * run.world / max(time.perf_counter() - w.t, 1e-9)
    lr = max(g["lr"] for g in run.optimizer.param_groups)
    epoch = round(s.epoch + s.batch_in_epoch / max(run.plan.loader_len, 1), 4)
    rec = {
        "type": "train",
        "step": step,
        "epoch": epoch,
        "loss": mean_loss if w.steps else None,
        "lr": lr,
        "samples_per_s": round(sps, 2),
        "grad_norm": None if run.grad_norm is None else float(run.grad_norm),
        "skipped_steps": s.skipped_steps,
        "time_s": round(time.perf_counter() - t_start, 2),
    }
    run.log.event(rec)
    run.callbacks.on_log(rec)
    run.log.step(step, loss=rec["loss"], lr=lr, samples_per_s=sps, epoch=epoch, line=True)
    return _Window(run.device)
