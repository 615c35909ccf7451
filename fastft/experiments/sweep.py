"""``fastft sweep``: hyperparameter search on Optuna, trials run in-process as normal runs.

Each trial is ``fastft.Trainer(cfg, callbacks=[PruneCallback(trial, metric)])`` writing its own run
folder ``<output-dir>/trials/trial-<n>/``; the callback feeds every validation evaluation to the
pruner and asks the trainer to stop when Optuna prunes. The trainer knows nothing about Optuna.

The study lives in Optuna storage: by default ``sqlite:///<output-dir>/study.db``, so running the same
command again continues the study until ``--trials`` trials have finished (complete or pruned). Any
RDB URL (``postgresql://...``) or ``journal:FILE`` (Optuna's journal file, safe for several processes
on one file system) lets several processes / machines work on one study: start the same command in
each, with its own ``--sampler-seed``. A re-run's sampler seed is mixed with the study's trial count,
so it does not propose the first run's parameters again.

Before any trial: the searched values, the metric (one evaluation of the untrained model shows what
the task reports, unless the study already has a complete trial) and, for an existing study, its
metric, direction and the kind of each searched distribution. Ctrl-C / SIGTERM and trials that keep
failing end the sweep early (:mod:`fastft.experiments.sweep_control`); a trial interrupted with a
checkpoint is resumed by the next run of the sweep.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import time
from typing import Any

from fastft.experiments.optuna_env import load_optuna as _optuna
from fastft.experiments.spec import SearchSpace, describe_distribution
from fastft.experiments.stats import lower_is_better
from fastft.experiments.sweep_control import SweepControl, TrialInterrupted
from fastft.experiments.sweep_report import write_outputs
from fastft.train.callbacks import Callback
from fastft.train.config import config_from_dict
from fastft.train.errors import ConfigError, first_line

__all__ = ["PruneCallback", "run_sweep", "make_storage", "write_outputs", "check_metric"]


class PruneCallback(Callback):
    """Reports each evaluation's ``metric`` to an Optuna trial; stops the run when it is pruned."""

    def __init__(self, trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_step: int | None = None
        self.last: float | None = None  # the metric at the latest evaluation (nan when diverged)
        self._final = False

    def on_log(self, record: dict[str, Any]) -> None:
        if record.get("type") == "eval":
            self._final = bool(record.get("final"))

    def on_evaluate(self, step: int, metrics: dict[str, Any]) -> bool | None:
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        self.last = float(value)
        if not math.isfinite(value):  # a diverged evaluation gives the pruner nothing to compare
            return None
        self.trial.report(float(value), step)
        # the last evaluation ends the run anyway: pruning it would only throw a finished value away
        if not self._final and self.trial.should_prune():
            self.pruned_step = step
            return True
        return None


def make_storage(url: str | None, output_dir: str):
    """Default SQLite file in the sweep folder; ``journal:FILE``; or any RDB URL Optuna takes."""
    optuna = _optuna()
    if url is None:
        url = "sqlite:///" + os.path.abspath(os.path.join(output_dir, "study.db"))
    if url.startswith("journal:"):
        return _journal_storage(optuna, url), url
    try:
        return _rdb_storage(optuna, url), url
    except Exception as e:  # noqa: BLE001 - bad URL, missing driver, unreachable server
        raise ConfigError(
            f"--storage {url}: {first_line(e)}; pass an RDB URL Optuna takes or journal:FILE"
        ) from None


def _journal_storage(optuna, url: str):
    """Optuna's journal file; its folder must take a new file (Optuna's lock is a symlink beside it)."""
    import tempfile

    from optuna.storages.journal import JournalFileBackend

    path = url[len("journal:") :]
    if not path.strip():
        raise ConfigError("--storage journal: needs a file name: journal:FILE")
    path = os.path.abspath(path)
    try:
        if os.path.isfile(os.path.dirname(path)):
            raise NotADirectoryError(20, f"{os.path.dirname(path)} is a file")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".fastft-probe.")
        os.close(fd)
        os.unlink(probe)
        with open(path, "ab"):  # an existing journal must take appends
            pass
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise ConfigError(
            f"--storage {url}: cannot write {path} ({why}); pass a journal:FILE in a writable folder"
        ) from None


def _rdb_storage(optuna, url: str, attempts: int = 5):
    """``RDBStorage(url)``, retried when another process is creating the same fresh schema: both
    see an empty database, both insert Alembic's version row, the second fails on its UNIQUE key.
    A retry finds the schema in place."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for i in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        except (IntegrityError, OperationalError):  # "table ... already exists" is an OperationalError
            time.sleep(0.2 * (i + 1))
    return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))


def _engine_kwargs(url: str) -> dict[str, Any]:
    # several processes writing one SQLite file wait for its lock instead of failing at once
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def _pruner(kind: str, startup: int, warmup: int):
    optuna = _optuna()
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)


def _resume_interrupted(study) -> None:
    """Queue a retry of each trial that an interrupt left with a checkpoint (once)."""
    optuna = _optuna()
    taken = {t.user_attrs.get("resume_dir") for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        run_dir = t.user_attrs.get("interrupted_dir")
        if run_dir and run_dir not in taken and os.path.isdir(run_dir):
            study.enqueue_trial(t.params, user_attrs={"resume_dir": run_dir})
            taken.add(run_dir)


def _objective(base: dict, space: list[SearchSpace], metric: str, trials_dir: str, control: SweepControl):
    from fastft.train.errors import DataError, TrainingError
    from fastft.train.trainer import Trainer

    def objective(trial) -> float:
        if control.signum is not None:  # a signal arrived between two trials: start no new one
            raise TrialInterrupted(signal.Signals(control.signum).name)
        params = {s.name: s.suggest(trial) for s in space}
        resume_dir = trial.user_attrs.get("resume_dir")
        run_dir = resume_dir or os.path.join(trials_dir, f"trial-{trial.number}")
        trial.set_user_attr("run_dir", run_dir)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        prune = PruneCallback(trial, metric)
        what = "resumes from its checkpoint" if resume_dir else "->"
        print(f"sweep trial {trial.number}: {params} {what} {run_dir}", flush=True)
        trainer = None
        try:
            cfg = config_from_dict(
                {
                    **base,
                    **params,
                    "metric_for_best": metric,
                    "output_dir": run_dir,
                    "resume": "latest" if resume_dir else None,
                    "overwrite": not resume_dir,  # a folder left by a deleted study is stale
                }
            )
            trainer = Trainer(cfg, callbacks=[prune])
            trainer.resume_hint = "the next run of the same fastft sweep command resumes it"
            control.trainer = trainer
            result = trainer.train()
            return _trial_value(trial, result, prune, metric, run_dir)
        except (TrainingError, ConfigError, DataError) as e:
            control.bad_input = not isinstance(e, TrainingError)
            trial.set_user_attr("error", first_line(e, 300))
            raise
        finally:
            control.trainer = None
            control.saw(trainer.stop.signum if trainer is not None else None)  # one the trainer caught

    return objective


def _trial_value(trial, result: dict[str, Any], prune: PruneCallback, metric: str, run_dir: str) -> float:
    optuna = _optuna()
    from fastft.train.errors import TrainingError

    if result.get("interrupted"):
        trial.set_user_attr("interrupted_dir", run_dir)
        raise TrialInterrupted(result["interrupted"])
    if prune.pruned_step is not None:
        trial.set_user_attr("stopped_at_step", prune.pruned_step)
        raise optuna.TrialPruned(f"pruned at step {prune.pruned_step}")
    value = (result.get("best_validation") or {}).get(metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        if prune.last is not None:
            raise TrainingError(
                f"validation {metric} was {prune.last} at every evaluation (the run diverged)"
            )
        raise TrainingError(f"validation {metric} was never computed (no validation evaluation)")
    trial.set_user_attr(
        "test", {k: v for k, v in (result.get("test") or {}).items() if k != "confusion_matrix"}
    )
    return float(value)


def run_sweep(
    base: dict[str, Any],
    space: list[SearchSpace],
    output_dir: str,
    *,
    trials: int = 20,
    metric: str | None = None,
    direction: str | None = None,
    pruner: str = "median",
    pruner_startup_trials: int = 2,
    pruner_warmup_steps: int = 0,
    sampler_seed: int = 0,
    storage: str | None = None,
    study_name: str = "fastft-sweep",
    enqueue: list[dict[str, Any]] | None = None,
    max_failures: int = 3,
):
    """Run (or continue) the study until ``trials`` trials finished; write best.yaml, sweep.md, PNGs.

    The result's ``stopped`` is ``(exit code, line)`` when a signal or ``max_failures`` failed trials
    in a row ended it early (the study is left resumable), else None."""
    optuna = _optuna()
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1 (got {trials})")
    if max_failures < 1:
        raise ConfigError(f"--max-failures must be >= 1 (got {max_failures})")
    metric = metric or base.get("metric_for_best") or base.get("metric-for-best") or "loss"
    direction = direction or ("minimize" if lower_is_better(metric) else "maximize")
    _validate_sweep(base, space, metric, enqueue)
    _writable_dir(output_dir)
    store, url = make_storage(storage, output_dir)
    sampler = dict(seed=sampler_seed, pruner=_pruner(pruner, pruner_startup_trials, pruner_warmup_steps))
    study = _open_study(store, url, study_name, base, space, metric, direction, sampler, enqueue)
    _resume_interrupted(study)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = len(study.get_trials(deepcopy=False, states=states))
    print(
        f"fastft sweep: study {study_name!r} in {url}: {finished}/{trials} trials done; {direction} {metric}"
    )
    from fastft.train.trackers import GroupRun

    group = GroupRun(base.get("report_to", base.get("report-to")), f"sweep-{study_name}")
    control = SweepControl(max_failures)
    if finished < trials:
        objective = _objective(base, space, metric, os.path.join(output_dir, "trials"), control)
        _optimize(
            study, objective, [optuna.study.MaxTrialsCallback(trials, states=states), control], group.env
        )
    out = write_outputs(study, output_dir, base, metric, url)
    out["stopped"] = control.outcome(len(study.get_trials(deepcopy=False, states=states)), trials)
    group.finish(out["files"], {"best_value": out["best"]["value"]} if out["best"] else None)
    return out


def _optimize(study, objective, callbacks: list, env: dict[str, str]) -> None:
    """``study.optimize`` with the sweep's signal handlers; a failed trial is one line (the control's),
    not Optuna's warning with a traceback."""
    from fastft.train.errors import DataError, TrainingError

    control = callbacks[-1]
    try:
        with _environ(env), _optuna_quiet(), control:  # the trials run in this process
            study.optimize(
                objective,
                callbacks=callbacks,
                catch=(TrainingError, ConfigError, DataError, TrialInterrupted),
                gc_after_trial=True,
            )
    except KeyboardInterrupt as e:  # a second signal (stop at once), or one outside our handlers
        control.saw(getattr(e, "signum", signal.SIGINT))


def _writable_dir(output_dir: str) -> None:
    from fastft.train.outdir import check_writable, storage_error

    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise (
            storage_error(e, output_dir) or ConfigError(f"--output-dir {output_dir}: {e.strerror}")
        ) from None
    check_writable(output_dir)


def _validate_sweep(base: dict[str, Any], space: list[SearchSpace], metric: str, enqueue) -> None:
    """Before any trial: the base config, every choice and both bounds of each range, the enqueued trials."""
    names = {s.name for s in space}
    for e in enqueue or []:
        if set(e) - names:
            raise ConfigError(
                f"--enqueue {sorted(set(e) - names)}: not searched; enqueue only --search fields"
            )
    cfg = config_from_dict({**base, "metric_for_best": metric}).resolved()
    cfg.validate()
    if cfg.eval_strategy == "no":
        raise ConfigError(
            "fastft sweep scores each trial on its validation evaluations: drop --eval-strategy no"
        )
    for s in space:
        for v in s.choices or (s.low, s.high):
            try:
                config_from_dict({**base, s.name: v}).validate()
            except ConfigError as e:
                raise ConfigError(
                    f"--search {s.name}={s.describe()}: {s.name}={v!r} is invalid: {e}"
                ) from None


def _open_study(store, url, name, base, space, metric, direction, sampler: dict, enqueue):
    """Create or load the study after checking that an existing one is the same search."""
    optuna = _optuna()
    try:
        old = optuna.load_study(study_name=name, storage=store)
    except KeyError:
        old = None
    if old is not None:
        _check_study(old, url, space, metric, direction)
    complete = old is not None and old.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if metric != "loss" and not complete:  # every task reports loss; a complete trial proved the metric
        check_metric(base, metric)
    seed = _sampler_seed(sampler["seed"], len(old.get_trials(deepcopy=False)) if old is not None else 0)
    try:
        study = optuna.create_study(
            storage=store,
            study_name=name,
            direction=direction,
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=sampler["pruner"],
            load_if_exists=True,
        )
    except ValueError as e:  # e.g. another process created it with the other direction meanwhile
        raise ConfigError(f"study {name!r} in {url}: {e}") from None
    if not study.user_attrs.get("metric"):
        study.set_user_attr("metric", metric)
        for e in enqueue or []:
            study.enqueue_trial(e)
    else:
        _check_study(study, url, space, metric, direction)
    return study


_NEW = "or pass a new --study-name (or another --output-dir) to start a new study"


def _check_study(study, url: str, space: list[SearchSpace], metric: str, direction: str) -> None:
    """An existing study continues only with its metric, direction and kind of each distribution
    (Optuna would fail each trial that suggests a field with another kind)."""
    from optuna.distributions import check_distribution_compatibility

    name, had = study.study_name, study.user_attrs.get("metric")
    if had and had != metric:
        raise ConfigError(
            f"study {name!r} in {url} optimises {had!r}, not {metric!r}: pass --metric {had}, {_NEW}"
        )
    was = study.direction.name.lower()
    if was != direction:
        raise ConfigError(
            f"study {name!r} in {url} is set to {was}, not {direction}: pass --direction {was}, {_NEW}"
        )
    seen: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        for k, d in t.distributions.items():
            seen.setdefault(k, d)
    for s in space:
        if s.name not in seen:
            continue
        try:
            check_distribution_compatibility(seen[s.name], s.distribution())
        except ValueError:
            old = describe_distribution(seen[s.name])
            raise ConfigError(
                f"--search {s.name}={s.describe()}: study {name!r} in {url} searched {s.name}={old}; "
                f"pass --search {s.name}={old} to continue it, {_NEW}"
            ) from None


def _sampler_seed(seed: int, n_trials: int) -> int:
    """``--sampler-seed`` for a new study; for one that has trials, mixed with their count, so that a
    re-run's sampler does not draw the first run's parameters again."""
    if n_trials == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**32, n_trials]).generate_state(1)[0])


def check_metric(base: dict[str, Any], metric: str) -> None:
    """One evaluation of the untrained model on the validation split, before any trial: a metric
    that the task does not report is one line naming those it does (the trainer finds out only at
    its first evaluation, in every trial). Uses the trainer's own set-up steps; trains and writes
    nothing."""
    import gc
    import shutil
    import tempfile

    from fastft.train.trainer import Trainer

    tmp = tempfile.mkdtemp(prefix="fastft-sweep-probe-")
    cfg = {**base, "metric_for_best": metric, "output_dir": tmp, "report_to": "none", "overwrite": True}
    trainer = Trainer(config_from_dict(cfg))
    try:
        trainer.setup(probe=True)
        metrics, problem = trainer.evaluate("validation"), trainer.problem_type
    finally:
        trainer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        del trainer
        gc.collect()
        _free_cuda()
    if metrics and metric not in metrics:
        names = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        raise ConfigError(f"--metric {metric!r} is not reported for {problem}; use one of {', '.join(names)}")


def _free_cuda() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _optuna_quiet():
    """Optuna's per-trial warnings off (each failed trial is one line of ours), restored after."""
    optuna = _optuna()
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


@contextlib.contextmanager
def _environ(env: dict[str, str]):
    """``os.environ`` updated with ``env`` inside the block, restored after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
