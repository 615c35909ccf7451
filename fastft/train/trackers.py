"""Experiment trackers as :class:`~fastft.train.callbacks.Callback` s: W&B, MLflow (and TensorBoard).

``make_trackers("wandb,mlflow", is_main=...)`` parses ``--report-to`` (a comma list of
``tensorboard``, ``wandb``, ``mlflow``, ``none``) and returns the callbacks; only rank 0 gets any.
A tracker that is not installed is a :class:`ConfigError` with its install command.

Each tracker logs the resolved config as params, every ``metrics.jsonl`` record as ``<type>/<name>``
at its step, the final results (``test/*``, ``best_validation/*``) and the artifacts
``results.json`` + ``training_curve.png``. The tracker's run id is stored in
``<output_dir>/.fastft-trackers.json``, so ``--resume`` continues the same tracker run.

* **W&B**: without an API key (``WANDB_API_KEY`` or a ``~/.netrc`` entry) and no ``WANDB_MODE``,
  runs offline (``WANDB_MODE=offline``) under ``<output_dir>/wandb/`` and prints the folder to
  ``wandb sync``. Project: ``WANDB_PROJECT`` (default ``fastft``).
* **MLflow**: ``MLFLOW_TRACKING_URI``, else a local store in ``./mlruns`` (``mlruns/mlflow.db`` +
  ``mlruns/artifacts``: MLflow >= 3.7 refuses its plain file store by default). Experiment:
  ``MLFLOW_EXPERIMENT_NAME`` (default ``fastft``).

``fastft compare`` / ``sweep`` set ``FASTFT_TRACKER_GROUP`` (the W&B group, an MLflow tag) and
``FASTFT_MLFLOW_PARENT_RUN_ID`` (the MLflow parent run) for their runs.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any

from fastft.train.callbacks import Callback
from fastft.train.config.names import parse_report_to
from fastft.train.errors import first_line

__all__ = [
    "make_trackers",
    "parse_report_to",
    "WandbTracker",
    "MlflowTracker",
    "TensorBoardTracker",
    "mlflow_tracking_uri",
    "GroupRun",
]

STATE_FILE = ".fastft-trackers.json"


def make_trackers(
    report_to: str | None, *, is_main: bool = True, tensorboard: bool = False
) -> list[Callback]:
    """The tracker callbacks for ``--report-to``. ``tensorboard`` is left out unless asked for: the
    trainer's run log already writes ``<output_dir>/tensorboard``."""
    names = parse_report_to(report_to)
    if not is_main:
        return []
    kinds = {"wandb": WandbTracker, "mlflow": MlflowTracker, "tensorboard": TensorBoardTracker}
    return [kinds[n]() for n in names if n != "tensorboard" or tensorboard]


# --------------------------------------------------------------------------------------------------


def _numbers(d: dict[str, Any] | None, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, float]:
    out = {}
    for k, v in (d or {}).items():
        if k in skip or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if v != v or v in (float("inf"), float("-inf")):  # trackers reject NaN/inf
            continue
        out[f"{prefix}/{k}"] = float(v)
    return out


def _record_metrics(record: dict[str, Any]) -> tuple[int | None, dict[str, float]]:
    kind = record.get("type", "train")
    return record.get("step"), _numbers(record, kind, skip=("step",))


def _final_metrics(results: dict[str, Any]) -> dict[str, float]:
    out = _numbers(results.get("test"), "test")
    out.update(_numbers(results.get("best_validation"), "best_validation"))
    for k in ("train_runtime_s", "train_samples_per_s", "trainable_params", "peak_memory_mb"):
        out.update(_numbers({k: results.get(k)}, "final"))
    return out


def _state(output_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(output_dir, STATE_FILE), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _save_state(output_dir: str, key: str, value: str) -> None:
    st = _state(output_dir)
    st[key] = value
    path = os.path.join(output_dir, STATE_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(st, fh)
    os.replace(path + ".tmp", path)
    _record(output_dir, STATE_FILE)


def _record(output_dir: str, name: str) -> None:
    """List the file in the run manifest so ``--overwrite`` / re-runs may remove it."""
    try:
        from fastft.train.outdir import record

        record(output_dir, name)
    except Exception:  # noqa: BLE001 - the manifest is a convenience
        pass


def _artifacts(output_dir: str) -> list[str]:
    names = ("results.json", "training_curve.png")
    return [p for p in (os.path.join(output_dir, n) for n in names) if os.path.isfile(p)]


class _Tracker(Callback):
    """Runs every hook through :meth:`_safe`: a tracker error never stops training (one warning)."""

    name = "tracker"

    def __init__(self) -> None:
        self.disabled = False

    def _safe(self, fn, *args) -> None:
        if self.disabled:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            self.disabled = True
            msg = first_line(e)
            print(f"{self.name}: {msg}; not logging to {self.name} for the rest of this run", flush=True)

    def on_start(self, config, output_dir, resumed):
        self._safe(self._start, config, output_dir, resumed)

    def on_log(self, record):
        self._safe(self._log, record)

    def on_end(self, results, output_dir):
        self._safe(self._end, results, output_dir)

    def _start(self, config, output_dir, resumed): ...

    def _log(self, record): ...

    def _end(self, results, output_dir): ...


# --------------------------------------------------------------------------------------------------


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker(_Tracker):
    name = "wandb"

    def __init__(self) -> None:
        super().__init__()
        self.run = None

    def _start(self, config, output_dir, resumed):
        import wandb

        if "WANDB_MODE" not in os.environ and not _wandb_has_key():
            os.environ["WANDB_MODE"] = "offline"  # no account configured: keep everything local
        run_id = _state(output_dir).get("wandb") if resumed else None
        run_id = run_id or uuid.uuid4().hex[:12]
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "fastft"),
            dir=output_dir,
            id=run_id,
            resume="allow",
            name=os.path.basename(os.path.normpath(output_dir)),
            group=os.environ.get("FASTFT_TRACKER_GROUP") or None,
            config=config,
        )
        _save_state(output_dir, "wandb", run_id)
        _record(output_dir, "wandb")

    def _log(self, record):
        step, metrics = _record_metrics(record)
        if metrics and self.run is not None:
            self.run.log(metrics, step=step)

    def _end(self, results, output_dir):
        if self.run is None:
            return
        self.run.summary.update(_final_metrics(results))
        for path in _artifacts(output_dir):
            self.run.save(path, base_path=output_dir, policy="now")
        run_dir = os.path.dirname(self.run.dir)
        offline = os.environ.get("WANDB_MODE") == "offline" or self.run.settings.mode == "offline"
        self.run.finish()
        self.run = None
        if offline:
            print(f"wandb: offline run in {run_dir}; upload it with `wandb sync {run_dir}`", flush=True)


# --------------------------------------------------------------------------------------------------


def mlflow_tracking_uri() -> tuple[str, str | None]:
    """``MLFLOW_TRACKING_URI``, else the local ``./mlruns`` store (URI, artifact folder)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    root = os.path.abspath("mlruns")
    os.makedirs(root, exist_ok=True)
    return "sqlite:///" + os.path.join(root, "mlflow.db"), os.path.join(root, "artifacts")


def _mlflow_store_path(uri: str) -> str | None:
    """The local database file (``sqlite:///``) or folder (``file:`` / a plain path) behind a tracking
    URI; ``None`` for a server or an in-memory database."""
    if uri.startswith("sqlite:"):
        path = uri[len("sqlite:///") :].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
        return os.path.abspath(path) if path not in ("", ":memory:") else None
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return os.path.abspath(urllib.request.url2pathname(parsed.path))
    return os.path.abspath(uri) if not parsed.scheme and uri != "databricks" else None


def check_mlflow_store(uri: str) -> None:
    """Raise one line when a local store cannot be written. MLflow would otherwise retry opening an
    unwritable SQLite file for ~100 s (10 tries, 36 warning lines) before failing the same way."""
    path = _mlflow_store_path(uri)
    if path is None:
        return
    is_db = uri.startswith("sqlite:")
    folder = os.path.dirname(path) if is_db else path
    hint = "set MLFLOW_TRACKING_URI to a writable store"
    if is_db and not os.path.isdir(folder):
        raise OSError(f"the tracking store's folder {folder} does not exist; create it or {hint}")
    probe = folder
    while not os.path.isdir(probe) and os.path.dirname(probe) != probe:  # a file store's folder is made
        probe = os.path.dirname(probe)
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".fastft-probe.")
        os.close(fd)
        os.unlink(tmp)
        if is_db and os.path.exists(path) and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise OSError(f"cannot write the tracking store {path} ({e.strerror or e}); {hint}") from None


def mlflow_experiment(client, artifacts: str | None) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "fastft")
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # noqa: BLE001 - another process created it first
        return client.get_experiment_by_name(name).experiment_id


class MlflowTracker(_Tracker):
    name = "mlflow"

    def __init__(self) -> None:
        super().__init__()
        self.client = None
        self.run_id: str | None = None

    def _start(self, config, output_dir, resumed):
        uri, artifacts = mlflow_tracking_uri()
        check_mlflow_store(uri)  # before importing mlflow (seconds): a bad store fails at once
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = _state(output_dir).get("mlflow") if resumed else None
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        tags = {
            "mlflow.runName": os.path.basename(os.path.normpath(output_dir)),
            "fastft.output_dir": output_dir,
        }
        if os.environ.get("FASTFT_MLFLOW_PARENT_RUN_ID"):
            tags["mlflow.parentRunId"] = os.environ["FASTFT_MLFLOW_PARENT_RUN_ID"]
        if os.environ.get("FASTFT_TRACKER_GROUP"):
            tags["fastft.group"] = os.environ["FASTFT_TRACKER_GROUP"]
        run = self.client.create_run(mlflow_experiment(self.client, artifacts), tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in config.items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        _save_state(output_dir, "mlflow", self.run_id)

    def _log_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def _log(self, record):
        step, metrics = _record_metrics(record)
        if metrics and self.run_id is not None:
            self._log_metrics(metrics, step)

    def _end(self, results, output_dir):
        if self.run_id is None:
            return
        self._log_metrics(_final_metrics(results), results.get("global_step"))
        for path in _artifacts(output_dir):
            self.client.log_artifact(self.run_id, path)
        self.client.set_terminated(self.run_id, "FINISHED")


# --------------------------------------------------------------------------------------------------


class TensorBoardTracker(_Tracker):
    """Scalars under ``<output_dir>/tensorboard`` (the trainer's run log does this for
    ``--report-to tensorboard``; this is for callers that build their own callback list)."""

    name = "tensorboard"

    def __init__(self) -> None:
        super().__init__()
        self.writer = None

    def _start(self, config, output_dir, resumed):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))
        self.writer.add_text("config", json.dumps(config, indent=1, default=str))
        _record(output_dir, "tensorboard")

    def _log(self, record):
        step, metrics = _record_metrics(record)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def _end(self, results, output_dir):
        for k, v in _final_metrics(results).items():
            self.writer.add_scalar(k, v, results.get("global_step"))
        self.writer.close()


# --------------------------------------------------------------------------------------------------


class GroupRun:
    """The parent of a compare / sweep's runs: the W&B group name and, with MLflow, a parent run that
    gets the report files. ``env`` is what the child runs need (set it in their environment)."""

    def __init__(self, report_to: str | None, name: str) -> None:
        self.env = {"FASTFT_TRACKER_GROUP": name}
        self.client = None
        self.run_id: str | None = None
        if "mlflow" not in parse_report_to(report_to):
            return
        try:
            uri, artifacts = mlflow_tracking_uri()
            check_mlflow_store(uri)
        except OSError as e:  # the runs degrade the same way, each with its own line
            print(f"mlflow: {e}; not logging the group to mlflow", flush=True)
            return
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        tags = {"mlflow.runName": name, "fastft.group": name}
        self.run_id = self.client.create_run(mlflow_experiment(self.client, artifacts), tags=tags).info.run_id
        self.env["FASTFT_MLFLOW_PARENT_RUN_ID"] = self.run_id

    def finish(self, files: list[str], metrics: dict[str, float] | None = None) -> None:
        if self.client is None:
            return
        if metrics:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
        for path in files:
            if os.path.isfile(path):
                self.client.log_artifact(self.run_id, path)
        self.client.set_terminated(self.run_id, "FINISHED")
