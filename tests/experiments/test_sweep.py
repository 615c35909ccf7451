"""`fastft sweep` on a tiny BERT: pruning of a bad trial, best.yaml re-runs, a shared study."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastft.experiments.cli import main
from tests.train.trainutil import file_flags, workspace

optuna = pytest.importorskip("optuna")  # in the dev extra: never skipped in CI


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return workspace(tmp_path_factory.mktemp("sweep"), bert=dict(head="base"))


def _flags(work, steps: int = 6) -> list[str]:
    return [
        "--model", work["bert"], "--cache-dir", work["cache"], *file_flags(work["files"]),
        "--max-steps", str(steps), "--eval-strategy", "steps", "--eval-steps", "2", "--logging-steps", "2",
        "--batch-size", "16", "--save-total-limit", "1", "--warmup-steps", "0",
    ]  # fmt: skip


def _results(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "results.json")) as fh:
        return json.load(fh)


def test_sweep_prunes_a_bad_trial_and_best_yaml_reruns(work, tmp_path, capsys):
    from fastft.cli import main as fastft_main

    out = str(tmp_path / "sw")
    argv = [
        "sweep", *_flags(work), "--search", "lr=choice:0.001,0.003,10", "--search", "lora_r=int:2:8",
        "--strategy", "lora", "--trials", "4", "--metric", "loss", "--output-dir", out,
        "--enqueue", "lr=0.001,lora_r=4", "--enqueue", "lr=0.003,lora_r=8", "--enqueue", "lr=10,lora_r=4",
    ]  # fmt: skip
    assert main(argv) == 0
    study = optuna.load_study(study_name="fastft-sweep", storage=f"sqlite:///{out}/study.db")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    trials = study.get_trials()
    assert len(trials) == 4
    bad = trials[2]
    assert bad.params == {"lr": 10, "lora_r": 4}
    assert bad.state == optuna.trial.TrialState.PRUNED and bad.user_attrs["stopped_at_step"] == 2
    assert _results(bad.user_attrs["run_dir"])["global_step"] == 2  # the run really stopped early
    for t in trials[:2]:
        assert t.state == optuna.trial.TrialState.COMPLETE
        res = _results(t.user_attrs["run_dir"])
        assert res["global_step"] == 6 and t.value == res["best_validation"]["loss"]
        with open(os.path.join(t.user_attrs["run_dir"], "metrics.jsonl")) as fh:
            evals = [r for r in map(json.loads, fh) if r["type"] == "eval"]
        assert [r["final"] for r in evals] == [False] * (len(evals) - 1) + [True]
        cfg = json.load(open(os.path.join(t.user_attrs["run_dir"], "train_config.json")))
        assert (
            cfg["lr"] == t.params["lr"] and cfg["lora_r"] == t.params["lora_r"] and cfg["strategy"] == "lora"
        )
    md = open(os.path.join(out, "sweep.md")).read()
    assert "pruned at step 2" in md and f"**Best trial {study.best_trial.number}:**" in md
    assert os.path.getsize(os.path.join(out, "optimization_history.png")) > 0
    # best.yaml is a normal config: re-running it gives the best trial's metric
    rerun = str(tmp_path / "best")
    assert fastft_main(["train", "-c", os.path.join(out, "best.yaml"), "--output-dir", rerun]) == 0
    assert _results(rerun)["best_validation"]["loss"] == pytest.approx(study.best_value, rel=1e-6, abs=1e-7)
    # the same command again continues the stored study: nothing left to run
    capsys.readouterr()
    assert main(argv) == 0
    assert "4/4 trials done" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="fastft-sweep", storage=f"sqlite:///{out}/study.db").trials) == 4


def test_two_processes_join_one_study(work, tmp_path):
    out, db = str(tmp_path / "shared"), f"sqlite:///{tmp_path}/shared.db"
    cmd = [sys.executable, "-m", "fastft.experiments", "sweep", *_flags(work, steps=2), "--search",
           "lr=loguniform:1e-4:1e-2", "--trials", "4", "--pruner", "none", "--storage", db, "--output-dir", out]  # fmt: skip
    procs = [
        subprocess.Popen(
            [*cmd, "--sampler-seed", str(i)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for i in (1, 2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    study = optuna.load_study(study_name="fastft-sweep", storage=db)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 4 and len({t.number for t in done}) == len(done)
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both processes ran trials of the one study
    assert len({t.user_attrs["run_dir"] for t in done}) == len(done)
    assert os.path.isfile(os.path.join(out, "best.yaml"))


def test_storage_survives_the_schema_creation_race(tmp_path, monkeypatch):
    """The other process created the schema first: its Alembic row makes ours fail once; a retry joins."""
    from sqlalchemy.exc import IntegrityError

    from fastft.experiments import sweep

    calls = []

    class Racing(optuna.storages.RDBStorage):
        def __init__(self, url, **kw):
            calls.append(url)
            super().__init__(url, **kw)  # the first time: the winner's schema
            if len(calls) == 1:
                raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    url = f"sqlite:///{tmp_path}/race.db"
    store, got = sweep.make_storage(url, str(tmp_path))
    assert got == url and len(calls) == 2
    assert optuna.create_study(storage=store, study_name="s").study_name == "s"


@pytest.mark.parametrize(
    "flags, msg",
    [
        (["--search", "lr"], "expected field=KIND"),
        (["--search", "lr=normal:1:2"], "unknown kind"),
        (["--search", "lr=loguniform:0:1"], "LOW > 0"),
        (["--search", "lr=uniform:2:1"], "LOW < HIGH"),
        (["--search", "lora_r=uniform:1.5:4"], "integer"),
        (["--search", "strategy=uniform:1:2"], "numeric field"),
        (["--search", "lr_rate=uniform:1:2"], "did you mean 'lr'"),
        (["--search", "strategy=choice:full,nope"], "not a valid value"),
        ([], "at least one --search"),
        (["--search", "lr=uniform:0.1:0.2", "--enqueue", "batch_size=4"], "not searched"),
    ],
)
def test_bad_sweep_input_is_one_line_exit_2(flags, msg, tmp_path, capsys):
    assert main(["sweep", *flags, "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err
    assert not os.path.exists(tmp_path / "o" / "trials")


class _AlwaysPrune:
    """An Optuna trial stand-in whose pruner says "prune" at every report."""

    def __init__(self) -> None:
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return True


def test_prune_callback_never_prunes_the_final_evaluation():
    from fastft.experiments.sweep import PruneCallback

    trial = _AlwaysPrune()
    cb = PruneCallback(trial, "accuracy")
    cb.on_log({"type": "eval", "step": 2, "final": False})
    assert cb.on_evaluate(2, {"accuracy": 0.5}) is True and cb.pruned_step == 2
    cb = PruneCallback(trial, "accuracy")
    cb.on_log({"type": "train", "step": 3})
    cb.on_log({"type": "eval", "step": 4, "final": True})
    assert cb.on_evaluate(4, {"accuracy": 0.6}) is None and cb.pruned_step is None
    assert trial.reports == [(0.5, 2), (0.6, 4)]  # the final value is still reported to the study
