"""``fastft sweep``: hyperparameter search on Optuna, trials run in-process as normal runs.

Each trial is ``fastft.Trainer(cfg, callbacks=[PruneCallback(trial, metric)])`` writing its own run
folder ``<output-dir>/trials/trial-<n>/``; the callback feeds every validation evaluation to the
pruner and asks the trainer to stop when Optuna prunes. The trainer knows nothing about Optuna.

The study lives in Optuna storage: by default ``sqlite:///<output-dir>/study.db``, so running the same
command again continues the study until ``--trials`` trials have finished (complete or pruned). Any
RDB URL (``postgresql://...``) or ``journal:FILE`` (Optuna's journal file, safe for several processes
on one file system) lets several processes / machines work on one study: start the same command in
each, with its own ``--sampler-seed``. A trial interrupted by Ctrl-C / SIGTERM is resumed from its
checkpoint by the next run of the sweep.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
import warnings
from typing import Any

from fastft.experiments.spec import SearchSpace
from fastft.experiments.stats import lower_is_better
from fastft.train.callbacks import Callback
from fastft.train.config import ConfigError, config_from_dict

__all__ = ["PruneCallback", "run_sweep", "make_storage", "write_outputs"]


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("fastft sweep needs optuna: pip install fastft[sweep]") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class PruneCallback(Callback):
    """Reports each evaluation's ``metric`` to an Optuna trial; stops the run when it is pruned."""

    def __init__(self, trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_step: int | None = None
        self._final = False

    def on_log(self, record: dict[str, Any]) -> None:
        if record.get("type") == "eval":
            self._final = bool(record.get("final"))

    def on_evaluate(self, step: int, metrics: dict[str, Any]) -> bool | None:
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)):
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
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal:") :]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path)), url
    try:
        return _rdb_storage(optuna, url), url
    except Exception as e:  # noqa: BLE001 - bad URL, missing driver, unreachable server
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"--storage {url}: {msg[:200]}; pass an RDB URL Optuna takes or journal:FILE"
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


def _objective(base: dict, space: list[SearchSpace], metric: str, trials_dir: str):
    optuna = _optuna()
    from fastft.train.trainer import Trainer

    def objective(trial) -> float:
        params = {s.name: s.suggest(trial) for s in space}
        resume_dir = trial.user_attrs.get("resume_dir")
        run_dir = resume_dir or os.path.join(trials_dir, f"trial-{trial.number}")
        trial.set_user_attr("run_dir", run_dir)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
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
        prune = PruneCallback(trial, metric)
        print(f"sweep trial {trial.number}: {params} -> {run_dir}", flush=True)
        result = Trainer(cfg, callbacks=[prune]).train()
        if result.get("interrupted"):
            trial.set_user_attr("interrupted_dir", run_dir)
            raise KeyboardInterrupt
        if prune.pruned_step is not None:
            trial.set_user_attr("stopped_at_step", prune.pruned_step)
            raise optuna.TrialPruned(f"pruned at step {prune.pruned_step}")
        value = (result.get("best_validation") or {}).get(metric)
        if not isinstance(value, (int, float)):
            raise ConfigError(f"--metric {metric!r} was not computed on the validation split")
        trial.set_user_attr(
            "test", {k: v for k, v in (result.get("test") or {}).items() if k != "confusion_matrix"}
        )
        return float(value)

    return objective


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
):
    """Run (or continue) the study until ``trials`` trials finished; write best.yaml, sweep.md, PNGs."""
    optuna = _optuna()
    from fastft.train.data import DataError
    from fastft.train.trainer import TrainingError

    if trials < 1:
        raise ConfigError(f"--trials must be >= 1 (got {trials})")
    metric = metric or base.get("metric_for_best") or base.get("metric-for-best") or "loss"
    direction = direction or ("minimize" if lower_is_better(metric) else "maximize")
    _validate_sweep(base, space, metric, enqueue)
    os.makedirs(output_dir, exist_ok=True)
    store, url = make_storage(storage, output_dir)
    try:
        study = optuna.create_study(
            storage=store,
            study_name=study_name,
            direction=direction,
            sampler=optuna.samplers.TPESampler(seed=sampler_seed),
            pruner=_pruner(pruner, pruner_startup_trials, pruner_warmup_steps),
            load_if_exists=True,
        )
    except ValueError as e:  # e.g. an existing study with the other direction
        raise ConfigError(f"study {study_name!r} in {url}: {e}") from None
    if not study.user_attrs.get("metric"):
        study.set_user_attr("metric", metric)
        for e in enqueue or []:
            study.enqueue_trial(e)
    elif study.user_attrs["metric"] != metric:
        raise ConfigError(f"study {study_name!r} optimises {study.user_attrs['metric']!r}, not {metric!r}")
    _resume_interrupted(study)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = len(study.get_trials(deepcopy=False, states=states))
    print(
        f"fastft sweep: study {study_name!r} in {url}: {finished}/{trials} trials done; {direction} {metric}"
    )
    from fastft.train.trackers import GroupRun

    group = GroupRun(base.get("report_to", base.get("report-to")), f"sweep-{study_name}")
    if finished < trials:
        with _environ(group.env):  # the trials run in this process
            study.optimize(
                _objective(base, space, metric, os.path.join(output_dir, "trials")),
                callbacks=[optuna.study.MaxTrialsCallback(trials, states=states)],
                catch=(TrainingError, ConfigError, DataError),
                gc_after_trial=True,
            )
    out = write_outputs(study, output_dir, base, metric, url)
    group.finish(out["files"], {"best_value": out["best"]["value"]} if out["best"] else None)
    return out


def _validate_sweep(base: dict[str, Any], space: list[SearchSpace], metric: str, enqueue) -> None:
    """Before any trial: the base config, every choice and both bounds of each range, the enqueued trials."""
    names = {s.name for s in space}
    for e in enqueue or []:
        if set(e) - names:
            raise ConfigError(
                f"--enqueue {sorted(set(e) - names)}: not searched; enqueue only --search fields"
            )
    config_from_dict({**base, "metric_for_best": metric}).resolved().validate()
    for s in space:
        for v in s.choices or (s.low, s.high):
            try:
                config_from_dict({**base, s.name: v}).validate()
            except ConfigError as e:
                raise ConfigError(
                    f"--search {s.name}={s.describe()}: {s.name}={v!r} is invalid: {e}"
                ) from None


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


def _done(study):
    optuna = _optuna()
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def write_outputs(study, output_dir: str, base: dict[str, Any], metric: str, url: str) -> dict[str, Any]:
    """best.yaml (runnable: ``fastft train -c best.yaml``), sweep.md and the Optuna plots."""
    import yaml

    optuna = _optuna()
    complete = _done(study)
    out: dict[str, Any] = {"best": None, "importances": {}, "files": []}
    if complete:
        best = study.best_trial
        cfg = {
            k: v for k, v in {**base, **best.params, "metric_for_best": metric}.items() if k != "output_dir"
        }
        path = os.path.join(output_dir, "best.yaml")
        tmp = path + f".{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"# fastft sweep {study.study_name}: best trial {best.number}, validation {metric} ")
            fh.write(f"{best.value:.6g}\n# run it: fastft train -c best.yaml --output-dir DIR\n")
            yaml.safe_dump(cfg, fh, sort_keys=False)
        os.replace(tmp, path)
        out["best"] = {"number": best.number, "value": best.value, "params": best.params, "config": cfg}
        out["files"].append(path)
    try:
        if len(complete) >= 2:
            out["importances"] = dict(optuna.importance.get_param_importances(study))
    except Exception:  # noqa: BLE001 - importance needs variation among complete trials
        out["importances"] = {}
    out["files"] += _plots(study, output_dir, bool(out["importances"]))
    md = _markdown(study, metric, url, out)
    path = os.path.join(output_dir, "sweep.md")
    with open(path + f".{os.getpid()}.tmp", "w", encoding="utf-8") as fh:  # processes may share the folder
        fh.write(md)
    os.replace(path + f".{os.getpid()}.tmp", path)
    out["files"].append(os.path.join(output_dir, "sweep.md"))
    print(f"sweep report: {os.path.join(output_dir, 'sweep.md')}" + (" + best.yaml" if complete else ""))
    return out


def _plots(study, output_dir: str, importances: bool) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    files = []
    todo = [("optimization_history.png", ovm.plot_optimization_history)]
    if importances:
        todo.append(("param_importances.png", ovm.plot_param_importances))
    for name, fn in todo:
        try:
            ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            fig.tight_layout()
            fig.savefig(os.path.join(output_dir, name), dpi=100)
            plt.close(fig)
            files.append(os.path.join(output_dir, name))
        except Exception as e:  # noqa: BLE001 - a plot must never fail a finished sweep
            print(f"could not draw {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    return files


def _markdown(study, metric: str, url: str, out: dict[str, Any]) -> str:
    trials = study.get_trials(deepcopy=False)
    params = sorted({p for t in trials for p in t.params})
    lines = [
        f"# fastft sweep `{study.study_name}`",
        "",
        f"Storage `{url}`; {study.direction.name.lower()} validation `{metric}`; {len(trials)} trials "
        f"({', '.join(f'{s}: {n}' for s, n in _count_states(trials).items())}).",
        "",
    ]
    best = out["best"]
    if best:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        lines += [f"**Best trial {best['number']}:** {metric} = {_fmt(best['value'])} with {shown}.", ""]
        lines += ["Re-run it: `fastft train -c best.yaml --output-dir DIR`.", ""]
    lines += ["## Trials", "", "| trial | state | " + metric + " | " + " | ".join(params) + " | note |"]
    lines.append("| --- | --- | --- | " + " | ".join("---" for _ in params) + " | --- |")
    for t in trials:
        note = ""
        if t.state.name == "PRUNED":
            step = t.user_attrs.get("stopped_at_step", t.last_step)
            note = f"pruned at step {step}"
        cells = [_fmt(t.params.get(p, "")) for p in params]
        value = _fmt(t.value) if t.value is not None else "—"
        lines.append(
            f"| {t.number} | {t.state.name.lower()} | {value} | " + " | ".join(cells) + f" | {note} |"
        )
    lines += ["", "## Parameter importances (fANOVA)", ""]
    if out["importances"]:
        lines += ["| parameter | importance |", "| --- | --- |"]
        lines += [f"| {k} | {v:.3f} |" for k, v in out["importances"].items()]
    else:
        lines.append("n/a: needs at least 2 complete trials with different values.")
    pngs = [os.path.basename(f) for f in out["files"] if f.endswith(".png")]
    if pngs:
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in pngs) + "."]
    return "\n".join(lines) + "\n"


def _count_states(trials) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts
