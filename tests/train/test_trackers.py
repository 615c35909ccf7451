"""Trackers (W&B offline, MLflow local store) driven through their callback hooks, read back with the
trackers' own readers; plus ``--report-to`` parsing."""

from __future__ import annotations

import glob
import json
import os
import struct
import time

import pytest

from fastft.train.config.names import parse_report_to
from fastft.train.errors import ConfigError
from fastft.train.trackers import MlflowTracker, WandbTracker, make_trackers

CONFIG = {"lr": 0.001, "strategy": "lora", "lora_r": 8, "model": "tiny", "max_length": None}
RECORDS = [
    {"type": "train", "step": 1, "loss": 0.9, "lr": 1e-3, "epoch": 0.5},
    {"type": "train", "step": 2, "loss": 0.7, "lr": 5e-4, "epoch": 1.0},
    {"type": "eval", "split": "validation", "step": 2, "loss": 0.65, "accuracy": 0.75, "is_best": True},
    {"type": "test", "step": 2, "loss": 0.6, "accuracy": 0.8},
]
RESULTS = {"test": {"accuracy": 0.8, "loss": 0.6}, "best_validation": {"accuracy": 0.75}, "global_step": 2}


def _run_dir(tmp_path) -> str:
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(RESULTS))
    (out / "training_curve.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    return str(out)


def _drive(tracker, out: str, records=RECORDS, resumed=False, end=True) -> None:
    tracker.on_start(CONFIG, out, resumed)
    for r in records:
        tracker.on_log(r)
    if end:
        tracker.on_end(RESULTS, out)
    assert not tracker.disabled


def test_report_to_parsing(monkeypatch):
    assert parse_report_to("none") == [] and parse_report_to(None) == []
    assert parse_report_to(" wandb , mlflow,wandb") == ["wandb", "mlflow"]
    assert make_trackers("wandb,mlflow", is_main=False) == []
    assert [t.name for t in make_trackers("tensorboard,mlflow")] == ["mlflow"]
    assert [t.name for t in make_trackers("tensorboard", tensorboard=True)] == ["tensorboard"]
    for bad, msg in (
        ("wandbb", "did you mean 'wandb'"),
        ("none,wandb", "cannot be combined"),
        ("mlflow,,wandb", "empty"),
    ):
        with pytest.raises(ConfigError, match=msg):
            parse_report_to(bad)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(ConfigError, match=r"pip install fastft\[wandb\]"):
        make_trackers("mlflow,wandb")


def test_mlflow_run_reads_back_and_resume_continues(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FASTFT_TRACKER_GROUP", "compare-x")
    monkeypatch.chdir(tmp_path)
    out = _run_dir(tmp_path)
    t = MlflowTracker()
    _drive(t, out, RECORDS[:2], end=False)  # interrupted after step 2
    again = MlflowTracker()
    _drive(again, out, RECORDS[2:], resumed=True)
    assert again.run_id == t.run_id
    assert os.path.isfile(tmp_path / "mlruns" / "mlflow.db")
    client = MlflowClient(tracking_uri="sqlite:///" + str(tmp_path / "mlruns" / "mlflow.db"))
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["fastft.group"] == "compare-x"
    assert run.data.params == {
        "lr": "0.001",
        "strategy": "lora",
        "lora_r": "8",
        "model": "tiny",
        "max_length": "null",
    }
    hist = client.get_metric_history(t.run_id, "train/loss")
    assert [(m.step, m.value) for m in hist] == [(1, 0.9), (2, 0.7)]
    assert run.data.metrics["eval/accuracy"] == 0.75 and run.data.metrics["test/accuracy"] == 0.8
    assert "eval/is_best" not in run.data.metrics
    arts = {a.path for a in client.list_artifacts(t.run_id)}
    assert arts == {"results.json", "training_curve.png"}
    local = client.download_artifacts(t.run_id, "results.json", str(tmp_path))
    assert json.load(open(local)) == RESULTS
    # the run id sits in the output dir's manifest-listed state file
    assert json.load(open(os.path.join(out, ".fastft-trackers.json")))["mlflow"] == t.run_id


def _wandb_records(path: str) -> list:
    """Records of a .wandb file (W&B's leveldb-log framing of protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and n == 0:
            pos += left - 7
            continue
        buf += data[pos : pos + n]
        pos += n
        if kind in (1, 4):  # full / last fragment
            r = pb.Record()
            r.ParseFromString(buf)
            out.append(r)
            buf = b""
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_run_holds_metrics(tmp_path, monkeypatch, capsys):
    for k in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = _run_dir(tmp_path)
    t = WandbTracker()
    _drive(t, out)
    assert os.environ["WANDB_MODE"] == "offline"
    assert "wandb: offline run in" in capsys.readouterr().out
    (run_dir,) = glob.glob(os.path.join(out, "wandb", "offline-run-*"))
    assert os.path.isfile(os.path.join(run_dir, "files", "results.json"))
    (log,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    for _ in range(120):  # wandb-core's writer flushes the file shortly after finish() returns
        records = _wandb_records(log)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            break
        time.sleep(0.25)
    history, summary, config = {}, {}, {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = {_key(i): json.loads(i.value_json) for i in r.history.item}
            history[row["_step"]] = {k: v for k, v in row.items() if not k.startswith("_")}
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind in ("config", "run"):
            upd = r.config.update if kind == "config" else r.run.config.update
            config.update({_key(i): json.loads(i.value_json) for i in upd})
    assert history[1] == {"train/loss": 0.9, "train/lr": 1e-3, "train/epoch": 0.5}
    assert history[2]["train/loss"] == 0.7 and history[2]["eval/accuracy"] == 0.75
    assert summary["test/accuracy"] == 0.8 and summary["best_validation/accuracy"] == 0.75
    assert {k: v for k, v in config.items() if not k.startswith("_")} == CONFIG


def test_mlflow_unwritable_store_degrades_at_once_in_one_line(tmp_path, monkeypatch, capsys):
    """#21 §7: an unwritable store cost ~100 s of MLflow's retries and 36 warning lines before one line."""
    import errno
    import tempfile

    from fastft.train.trackers import GroupRun

    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):
        if str(dir).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    (tmp_path / "ro").mkdir()
    out = _run_dir(tmp_path)
    cases = [
        (f"sqlite:///{tmp_path}/missing/mlflow.db", f"folder {tmp_path}/missing does not exist"),
        (f"sqlite:///{tmp_path}/ro/mlflow.db", f"{tmp_path}/ro/mlflow.db (Read-only file system)"),
        (f"file:{tmp_path}/ro/mlruns", f"{tmp_path}/ro/mlruns (Read-only file system)"),
    ]
    for uri, expect in cases:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        capsys.readouterr()
        start = time.monotonic()
        t = MlflowTracker()
        t.on_start(CONFIG, out, False)
        for r in RECORDS:
            t.on_log(r)
        t.on_end(RESULTS, out)
        assert time.monotonic() - start < 5 and t.disabled
        lines = [ln for ln in "".join(capsys.readouterr()).splitlines() if ln.strip()]
        assert len(lines) == 1 and expect in lines[0] and "MLFLOW_TRACKING_URI" in lines[0], lines
        group = GroupRun("mlflow", "compare-x")  # a compare/sweep parent degrades the same way
        assert group.client is None and "FASTFT_MLFLOW_PARENT_RUN_ID" not in group.env
        assert "not logging the group to mlflow" in capsys.readouterr().out
