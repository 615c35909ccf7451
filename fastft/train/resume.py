"""A run's checkpoints: :func:`save_checkpoint` (atomic, rotated) and :func:`restore` (``--resume``).

Exact resume: the data order is a function of (seed, epoch) and the loader skips the batches already
consumed; in-step randomness is re-seeded per step (:mod:`~fastft.train.step`), and the checkpoint
carries model, optimizer, schedule, scaler, RNG states and the :class:`~fastft.train.state.TrainState`.
"""

from __future__ import annotations

import os

from fastft import distributed as D
from fastft.train import checkpoint as ckpt
from fastft.train import storage as st
from fastft.train.errors import ConfigError, first_line
from fastft.train.setup import Run

__all__ = ["LENGTH_FIELDS", "restore", "save_checkpoint", "checkpoint_payload"]

LENGTH_FIELDS = ("epochs", "max_steps")  # may change on --resume: the run goes on to the new end


def restore(run: Run, path: str) -> None:
    """Load the checkpoint at ``path`` into model, optimizer, schedule, RNGs and state; the loaded
    tensors are dropped when this returns."""
    data = ckpt.load_checkpoint(path)
    meta = data["trainer_state"]
    _check_config(
        run, path, meta.get("config") or {}, int(meta.get("world_size") or 1), meta.get("data_files")
    )
    # a valid checkpoint of another model / label count / strategy: say what differs, never "corrupt"
    differs = ckpt.state_dict_mismatch(data["model"], run.raw_model.state_dict())
    if differs is not None:
        raise ConfigError(
            f"checkpoint {path} was written for another model ({differs}); resume with the flags it "
            "was written with, or pass another --output-dir"
        )
    try:
        D.load_full_state_dict(run.model, data["model"], run.dist)
        D.load_optim_state_dict(run.model, run.optimizer, data["optimizer"], run.dist)
        run.scheduler.load_state_dict(data["scheduler"])
        if run.scaler is not None and data.get("scaler"):
            run.scaler.load_state_dict(data["scaler"])
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"checkpoint {path} does not fit this run ({first_line(e, 160)}); resume with the flags "
            "it was written with, or pass another --output-dir"
        ) from None
    ckpt.set_rng_state(data["rng"])
    run.state = data["state"]
    del data
    run.state.last_saved_step = run.state.global_step
    run.resumed_from = path
    _reshard_position(run, int(meta.get("world_size") or 1))
    if run.length_changed:
        _resume_length(run, path)


def _resume_length(run: Run, path: str) -> None:
    """``--epochs``/``--max-steps`` changed on resume (HF Trainer's way to extend a run): train on to
    the new end with the lr schedule planned for the new length, from the next step on."""
    step, total, shown = run.state.global_step, run.plan.total_steps, ", ".join(run.length_changed)
    if step >= total:
        raise ConfigError(
            f"--resume {path}: the checkpoint is at step {step} and this config ends at step {total} "
            f"({shown}); pass a larger --epochs or --max-steps"
        )
    sched = run.scheduler  # the checkpoint's group lrs are the old plan's next lr: re-plan them
    sd = sched.state_dict()
    for group, base, fn in zip(run.optimizer.param_groups, sd["base_lrs"], sched.lr_lambdas):
        group["lr"] = base * fn(sd["last_epoch"])
    sd["_last_lr"] = [g["lr"] for g in run.optimizer.param_groups]  # what get_last_lr() returns
    sched.load_state_dict(sd)
    run.notes.append(
        f"warning: --resume with a new length ({shown}): continuing from step {step} to step {total} "
        f"with the lr schedule re-planned for {total} steps (next lr {sched.get_last_lr()[0]:.3g})"
    )


def _check_config(run: Run, path: str, saved: dict, saved_world: int, saved_files=None) -> None:
    """Every field that changes the math must match the checkpoint's (``--resume-force``: recorded),
    except the run's length (``--epochs``/``--max-steps``), which :func:`_resume_length` handles;
    so must the data files' content (size + sha256, recorded in the checkpoint)."""
    now = run.cfg.to_dict()
    run.length_changed = ckpt.config_diffs(
        {k: saved[k] for k in LENGTH_FIELDS if k in saved}, {k: now[k] for k in LENGTH_FIELDS}
    )
    rest = {k: v for k, v in saved.items() if k not in LENGTH_FIELDS}
    diffs = ckpt.config_diffs(rest, now, saved_world, run.world)
    diffs += ckpt.data_diffs(saved_files, run.data.report.get("data_files"))
    if not diffs:
        return
    shown = ", ".join(diffs)
    if not run.cfg.resume_force:
        raise ConfigError(
            f"--resume {path}: the config differs from the checkpoint's ({shown}); pass the same "
            "values and data, or --resume-force to continue anyway"
        )
    run.resume_forced = diffs
    run.notes.append(f"warning: --resume-force: continuing with {shown}; recorded in train_config.json")


def _reshard_position(run: Run, saved_world: int) -> None:
    """``batch_in_epoch`` counts one rank's batches: re-shard it for another process count."""
    s, world = run.state, run.world
    if saved_world != world:
        consumed = s.batch_in_epoch * saved_world
        s.batch_in_epoch = consumed // world
        if consumed % world:
            run.notes.append(
                f"warning: {consumed} batches consumed by {saved_world} processes do not split over "
                f"{world}; {consumed % world} batch(es) of this epoch are seen again"
            )
    if s.batch_in_epoch >= run.plan.loader_len:
        s.epoch += 1
        s.batch_in_epoch = 0


def checkpoint_payload(run: Run) -> dict:
    """Hook (dist owner): the collective part of a checkpoint; every rank calls it."""
    return {
        "model_state": D.full_state_dict(run.model, run.dist),
        "optimizer_state": D.optim_state_dict(run.model, run.optimizer, run.dist),
    }


def save_checkpoint(run: Run) -> None:
    """``checkpoint-<step>`` (once per step), then rotation; collective: every rank calls it."""
    s = run.state
    if s.last_saved_step == s.global_step:
        return
    payload = checkpoint_payload(run)
    out = run.cfg.output_dir
    path = os.path.join(out, f"checkpoint-{s.global_step}")
    if s.best_step == s.global_step:
        s.best_checkpoint = path
    if run.is_main:
        meta = dict(
            world_size=run.world,
            total_steps=run.plan.total_steps,
            metric=run.metric_name,
            problem_type=run.problem_type,
            config=run.cfg.to_dict(),
            data_files=run.data.report.get("data_files"),
        )
        try:
            ckpt.save_checkpoint(
                out,
                s.global_step,
                **payload,
                scheduler_state=run.scheduler.state_dict(),
                scaler_state=run.scaler.state_dict() if run.scaler is not None else None,
                state=s,
                meta=meta,
            )
        except Exception as e:  # a full disk / read-only dir: one line; the previous checkpoint stays
            err = st.storage_error(e, out, st.payload_bytes(payload))
            if err is not None:
                raise err from None
            raise
        if run.deferred is not None:  # this run has a checkpoint: the previous run's can go
            run.deferred.discard()
            run.deferred = None
        ckpt.rotate_checkpoints(out, run.cfg.save_total_limit, keep=(s.best_checkpoint, path))
    s.last_saved_step = s.global_step
    D.barrier(run.dist)
