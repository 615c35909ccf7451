"""``Trainer``: one training run of any task of :mod:`fastft.train.tasks`, as a short facade.

``Trainer(cfg).train() -> dict`` runs :meth:`Trainer.setup` (nothing is written before every set-up
step passed; :mod:`~fastft.train.setup`, :mod:`~fastft.train.resume`) -> the loop
(:mod:`~fastft.train.loop`, one optimizer step in :mod:`~fastft.train.step`, evaluation, early stopping
and best-checkpoint tracking in :mod:`~fastft.train.evaluate`) -> the end (:mod:`~fastft.train.finish`:
best model on the test split, final model + results.json). SIGINT/SIGTERM save a checkpoint and
return (:mod:`~fastft.train.signals`). The task object supplies the loss, the item count, the
metrics and the summary line; the loop names no task.

Multi-GPU hooks: :func:`fastft.train.setup.setup_model` (DDP/FSDP2 wrapping) and
:func:`fastft.train.resume.checkpoint_payload` (collective state gathering); every file write goes
through ``run.is_main``.
"""

from __future__ import annotations

import signal
from typing import Any

from fastft.train.callbacks import Callback, CallbackList
from fastft.train.config import TrainConfig, config_from_dict
from fastft.train.errors import TrainingError
from fastft.train.evaluate import evaluate_model, evaluate_split
from fastft.train.loop import train_loop
from fastft.train.models import check_model, load_tokenizer
from fastft.train.resume import restore
from fastft.train.setup import (
    Run,
    check_output_dir,
    cleanup_failed_setup,
    prepare_output_dir,
    restore_globals,
    setup_data,
    setup_model,
    setup_optimizer,
    setup_runtime,
)
from fastft.train.signals import StopNow, StopRequest, stop_on_signals
from fastft.train.state import TrainState

__all__ = ["Trainer", "TrainingError", "StopNow", "load_tokenizer", "check_model", "evaluate_model"]


class Trainer:
    """Fine-tune one model as described by a :class:`TrainConfig`.

    >>> Trainer(TrainConfig(train_file="train.csv", epochs=3)).train()["test"]["accuracy"]

    :meth:`setup` may be called first to inspect or adjust the :class:`~fastft.train.setup.Run`
    (``trainer.run``) that :meth:`train` then trains; :meth:`close` gives up a set-up run instead.
    """

    #: how the interrupted-run line says to continue (``fastft sweep`` resumes its trials itself)
    resume_hint = "continue with --resume latest"

    def __init__(
        self, cfg: TrainConfig | None = None, callbacks: list[Callback] | None = None, **overrides: Any
    ) -> None:
        cfg = cfg if cfg is not None else TrainConfig()
        if overrides:
            cfg = config_from_dict(overrides, cfg)
        self.cfg = cfg.resolved()
        self.cfg.validate()
        # the user's callbacks now; the trackers join in setup_runtime, once rank 0 is known
        self.callbacks = CallbackList(callbacks)
        self.stop = StopRequest()  # set by request_stop (or a signal) at any time, also during set-up
        self.run: Run | None = None
        self._ready = False  # setup() ran every step: train() goes on from there

    def setup(self, *, probe: bool = False) -> Run:
        """Every set-up step (runtime, output dir checks, data, model, optimizer, resume, the run
        files) -> the :class:`~fastft.train.setup.Run`. ``probe``: runtime, data and model only,
        nothing written (e.g. ``fastft sweep``'s metric check); call :meth:`close` after it."""
        run = self.run = Run(self.cfg, self.callbacks, self.stop, resume_hint=self.resume_hint)
        try:
            setup_runtime(run)
            resume_from = None if probe else check_output_dir(run)
            setup_data(run)
            setup_model(run)
            if not probe:
                setup_optimizer(run)
                if resume_from is not None:
                    restore(run, resume_from)
                prepare_output_dir(run)
                self._ready = True
        except BaseException:
            self.close()
            raise
        return run

    def train(self) -> dict:
        """Run the whole job; returns the content of results.json (or a partial one when interrupted)."""
        run = self.run if self._ready else self.setup()
        self._ready = False
        try:
            with stop_on_signals(self.stop):
                return train_loop(run)
        finally:
            restore_globals(run)
            if run.log is not None:
                run.log.close()
            if run.lock is not None:  # also on a failure inside the loop
                run.lock.release()

    def close(self) -> None:
        """Give up a set-up (or probed) run without training it: its temp files and an output dir it
        created go, the process-wide settings come back, the process group is destroyed."""
        if self.run is not None:
            cleanup_failed_setup(self.run)
            restore_globals(self.run)
        self.run, self._ready = None, False

    def evaluate(self, split: str = "validation", collect: dict | None = None) -> dict:
        """Metrics of the current model on ``split`` (loss and the task's metrics); ``collect``
        receives the gathered rows (see :func:`evaluate_model`)."""
        return evaluate_split(self.run, split, collect)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask the loop to save a checkpoint and return after the current step (what SIGTERM does)."""
        self.stop.request(signum)

    @property
    def state(self) -> TrainState:
        return self.run.state if self.run is not None else TrainState()

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def model(self):
        return self.run.model

    @property
    def raw_model(self):
        return self.run.raw_model

    @property
    def task(self):
        return self.run.task

    @property
    def problem_type(self) -> str:
        return self.run.problem_type
