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


def _study(out: str):
    return optuna.load_study(study_name="fastft-sweep", storage=f"sqlite:///{out}/study.db")


@pytest.mark.timeout(600)  # before the fix this sweep never ended
@pytest.mark.parametrize("metric", ["nosuchmetric", "entity_f1"])
def test_a_metric_the_task_does_not_report_is_one_line_before_any_trial(work, tmp_path, capfd, metric):
    out = str(tmp_path / "sw")
    argv = [
        "sweep",
        *_flags(work),
        "--search",
        "lr=loguniform:1e-4:1e-2",
        "--metric",
        metric,
        "--output-dir",
        out,
    ]
    assert main(argv) == 2
    captured = capfd.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--metric {metric!r} is not reported for single_label_classification" in err
    assert "use one of loss, accuracy, f1_macro" in err and "Traceback" not in captured.out
    assert not os.path.exists(os.path.join(out, "trials"))
    assert (
        optuna.study.get_all_study_names(f"sqlite:///{out}/study.db") == []
    )  # a fixed --metric starts afresh


def test_failing_trials_stop_the_sweep_with_one_line_each(work, tmp_path, capfd):
    out = str(tmp_path / "sw")
    argv = ["sweep", *_flags(work, steps=2), "--search", "lr=loguniform:1e20:1e30", "--metric", "loss",
            "--pruner", "none", "--max-failures", "2", "--trials", "3", "--output-dir", out]  # fmt: skip
    assert main(argv) == 1
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert [ln for ln in captured.out.splitlines() if "failed:" in ln] == [
        "sweep trial 0 failed: validation loss was nan at every evaluation (the run diverged)",
        "sweep trial 1 failed: validation loss was nan at every evaluation (the run diverged)",
    ]
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("fastft sweep: failed: 2 trials in a row failed (trials 0, 1)"), last
    assert "run the same command again" in last
    assert [t.state for t in _study(out).trials] == [optuna.trial.TrialState.FAIL] * 2
    assert "the run diverged" in open(os.path.join(out, "sweep.md")).read()


def test_a_changed_search_kind_is_refused_before_any_trial(work, tmp_path, capfd):
    from optuna.distributions import FloatDistribution

    out = str(tmp_path / "sw")
    os.makedirs(out)
    study = optuna.create_study(study_name="fastft-sweep", storage=f"sqlite:///{out}/study.db")
    study.set_user_attr("metric", "loss")
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 1e-3}, distributions={"lr": FloatDistribution(1e-4, 1e-2, log=True)}, value=0.5
        )
    )
    argv = [
        "sweep",
        *_flags(work),
        "--search",
        "lr=choice:0.001,0.01",
        "--metric",
        "loss",
        "--output-dir",
        out,
    ]
    assert main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "searched lr=loguniform:0.0001:0.01; pass --search lr=loguniform:0.0001:0.01 to continue it" in err
    assert "--study-name" in err
    assert len(_study(out).trials) == 1  # no failed trial added
    # a changed metric is refused the same way
    argv = [
        "sweep",
        *_flags(work),
        "--search",
        "lr=loguniform:1e-4:1e-2",
        "--metric",
        "accuracy",
        "--output-dir",
        out,
    ]
    assert main(argv) == 2
    assert "optimises 'loss', not 'accuracy': pass --metric loss" in capfd.readouterr().err


def test_unwritable_journal_storage_is_one_line(tmp_path, capfd, monkeypatch):
    import errno
    import tempfile

    (tmp_path / "file").write_text("x")
    ro = str(tmp_path / "ro")
    os.makedirs(ro)
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):  # a read-only folder (root writes through chmod, so simulate it)
        if dir == ro:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    for path, why in ((f"{tmp_path}/file/journal.log", "file is a file"), (f"{ro}/j.log", "Read-only")):
        argv = ["sweep", "--search", "lr=uniform:0.1:0.2", "--storage", f"journal:{path}",
                "--output-dir", str(tmp_path / "o")]  # fmt: skip
        assert main(argv) == 2
        err = capfd.readouterr().err.strip()
        assert (
            len(err.splitlines()) == 1 and why in err and "pass a journal:FILE in a writable folder" in err
        ), err


def _signal_once(monkeypatch, cls, method: str, signum: int, when=lambda *a: True) -> None:
    """``cls.method`` sends ``signum`` to this process the first time ``when(*args)`` holds."""
    original, sent = getattr(cls, method), []

    def wrapper(self, *a, **kw):
        if not sent and when(*a):
            sent.append(1)
            os.kill(os.getpid(), signum)
        return original(self, *a, **kw)

    monkeypatch.setattr(cls, method, wrapper)


def test_sigterm_ends_the_sweep_and_a_rerun_resumes_then_proposes_new_params(
    work, tmp_path, capfd, monkeypatch
):
    import signal

    from fastft.experiments.sweep import PruneCallback

    out = str(tmp_path / "sw")
    argv = ["sweep", *_flags(work), "--search", "lr=loguniform:1e-4:1e-2", "--metric", "accuracy",
            "--pruner", "none", "--trials", "2", "--output-dir", out]  # fmt: skip
    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:  # SIGTERM at the first training log (step 2 of 6)
        _signal_once(m, PruneCallback, "on_log", signal.SIGTERM, when=lambda r: r.get("type") == "train")
        assert main(argv) == 143
    captured = capfd.readouterr()
    assert (
        "Traceback" not in captured.out + captured.err
        and "--resume latest" not in captured.out + captured.err
    )
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("fastft sweep: interrupted by SIGTERM: trial 0 saved a checkpoint"), last
    assert "run the same command again to resume it" in last
    (t0,) = _study(out).trials  # the interrupted trial is failed (not left running), with its folder
    assert t0.state == optuna.trial.TrialState.FAIL and t0.user_attrs["interrupted_dir"]
    assert signal.getsignal(signal.SIGTERM) is before  # the sweep put the handlers back

    assert main(argv) == 0
    t0, t1, t2 = _study(out).trials
    assert t1.params == t0.params and t1.user_attrs["resume_dir"] == t0.user_attrs["interrupted_dir"]
    assert (
        t1.state == optuna.trial.TrialState.COMPLETE
        and _results(t1.user_attrs["run_dir"])["global_step"] == 6
    )
    assert (
        t2.state == optuna.trial.TrialState.COMPLETE and t2.params != t0.params
    )  # the re-run's sampler moved on


def test_ctrl_c_while_a_trial_loads_stops_after_its_checkpoint(work, tmp_path, capfd, monkeypatch):
    import signal

    from fastft.train import trainer

    out = str(tmp_path / "sw")
    _signal_once(monkeypatch, trainer, "setup_data", signal.SIGINT)
    argv = ["sweep", *_flags(work), "--search", "lr=loguniform:1e-4:1e-2", "--metric", "loss", "--trials", "3",
            "--output-dir", out]  # fmt: skip
    assert main(argv) == 130
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert (
        captured.err.strip()
        .splitlines()[-1]
        .startswith("fastft sweep: interrupted by SIGINT: trial 0 saved a checkpoint")
    )
    (t0,) = _study(out).trials
    assert t0.state == optuna.trial.TrialState.FAIL
    assert os.path.isdir(os.path.join(t0.user_attrs["interrupted_dir"], "checkpoint-1"))


def test_sigterm_in_a_trial_last_step_still_ends_the_sweep(work, tmp_path, capfd, monkeypatch):
    """The trainer finishes a run whose last step saw the signal: the sweep must not go on to the next trial."""
    import signal

    from fastft.experiments.sweep import PruneCallback

    out = str(tmp_path / "sw")
    _signal_once(monkeypatch, PruneCallback, "on_log", signal.SIGTERM, when=lambda r: bool(r.get("final")))
    argv = ["sweep", *_flags(work, steps=2), "--search", "lr=loguniform:1e-4:1e-2", "--metric", "loss",
            "--trials", "3", "--output-dir", out]  # fmt: skip
    assert main(argv) == 143
    assert [t.state for t in _study(out).trials] == [optuna.trial.TrialState.COMPLETE]
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert (
        last
        == "fastft sweep: interrupted by SIGTERM; run the same command again to continue the study (1/3 trials done)"
    )
