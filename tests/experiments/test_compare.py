"""`fastft compare` end to end on a tiny BERT: 2 arms x 2 seeds as real subprocess runs."""

from __future__ import annotations

import json
import os

import pytest

from fastft.experiments.cli import main
from tests.train.trainutil import file_flags, workspace


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return workspace(tmp_path_factory.mktemp("compare"), bert=dict(head="base"))


def _flags(work) -> list[str]:
    return [
        "--model", work["bert"], "--cache-dir", work["cache"], *file_flags(work["files"]),
        "--max-steps", "4", "--logging-steps", "2", "--batch-size", "16", "--save-total-limit", "1",
    ]  # fmt: skip


def _results(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "results.json")) as fh:
        return json.load(fh)


def test_compare_report_matches_runs_and_scipy(work, tmp_path, capsys):
    from scipy import stats

    out = str(tmp_path / "cmp")
    argv = ["compare", *_flags(work), "--vary", "lr=1e-3,3e-2", "--seeds", "2", "--seed", "7"]
    assert main([*argv, "--output-dir", out]) == 0
    for name in ("compare.md", "compare.json", "compare.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    doc = json.load(open(os.path.join(out, "compare.json")))
    assert doc["arms"] == ["lr=0.001", "lr=0.03"] and doc["baseline"] == "lr=0.001"
    assert doc["seeds"] == [7, 8] and doc["metric"] == "accuracy"
    assert {r["status"] for r in doc["runs"]} == {"ok"} and len(doc["runs"]) == 4
    # every number in the report is the runs' results.json
    values: dict[str, dict[int, dict]] = {}
    for r in doc["runs"]:
        res = _results(r["run_dir"])
        cfg = json.load(open(os.path.join(r["run_dir"], "train_config.json")))
        assert (
            cfg["seed"] == r["seed"]
            and cfg["split_seed"] == 7
            and cfg["lr"] == {"lr=0.001": 1e-3, "lr=0.03": 3e-2}[r["arm"]]
        )
        values.setdefault(r["arm"], {})[r["seed"]] = res
        for k in ("accuracy", "loss"):
            assert doc["summary"][r["arm"]][k]["values"][str(r["seed"])] == res["test"][k]
        assert doc["summary"][r["arm"]]["train_runtime_s"]["values"][str(r["seed"])] == res["train_runtime_s"]
        assert doc["summary"][r["arm"]]["trainable_params"]["values"][str(r["seed"])] > 0
    for arm in doc["arms"]:
        losses = [values[arm][s]["test"]["loss"] for s in (7, 8)]
        s = doc["summary"][arm]["loss"]
        assert s["mean"] == pytest.approx(sum(losses) / 2)
        half = stats.t.ppf(0.975, 1) * stats.tstd(losses) / 2**0.5
        assert s["ci_low"] == pytest.approx(s["mean"] - half) and s["std"] == pytest.approx(
            stats.tstd(losses)
        )
    base = [values["lr=0.001"][s]["test"]["loss"] for s in (7, 8)]
    arm = [values["lr=0.03"][s]["test"]["loss"] for s in (7, 8)]
    t = doc["tests"]["lr=0.03"]["loss"]
    assert t["seeds"] == [7, 8] and t["n_pairs"] == 2
    assert t["t_p"] == pytest.approx(stats.ttest_rel(arm, base).pvalue)
    assert t["wilcoxon_p"] == pytest.approx(stats.wilcoxon(arm, base).pvalue)
    md = open(os.path.join(out, "compare.md")).read()
    assert "| lr=0.001 (baseline) | 2/2 |" in md and "significant at alpha=0.05" in md
    assert doc["sentence"] in md

    # the same command again reuses every finished run (no process started, same numbers)
    logs = {
        r["run_dir"]: os.path.getsize(r["run_dir"].rsplit("/", 1)[0] + f"/seed-{r['seed']}.log")
        for r in doc["runs"]
    }
    capsys.readouterr()
    assert main([*argv, "--output-dir", out]) == 0
    assert capsys.readouterr().out.count(": reused") == 4
    again = json.load(open(os.path.join(out, "compare.json")))
    assert again["summary"] == doc["summary"]
    for r in doc["runs"]:
        assert (
            os.path.getsize(r["run_dir"].rsplit("/", 1)[0] + f"/seed-{r['seed']}.log") == logs[r["run_dir"]]
        )

    # a run whose results.json is missing (killed at the end) resumes from its checkpoint
    victim = doc["runs"][1]["run_dir"]
    os.remove(os.path.join(victim, "results.json"))
    assert main([*argv, "--output-dir", out]) == 0
    assert "resume latest" in open(victim.rsplit("/", 1)[0] + "/seed-8.log").read().replace(
        "--resume", "resume"
    )
    assert _results(victim)["test"] == values["lr=0.001"][8]["test"]

    # a different config into the same folder is refused in one line
    assert main(["compare", *_flags(work), "--vary", "lr=1e-3,3e-2", "--seeds", "2", "--seed", "7",
                 "--weight-decay", "0.1", "--output-dir", out]) == 2  # fmt: skip
    assert "holds a different config" in capsys.readouterr().err


def test_failed_arm_is_reported_and_others_go_on(work, tmp_path, capsys):
    out = str(tmp_path / "cmp")
    rc = main(
        ["compare", *_flags(work), "--vary", "label_column=label,nosuch", "--seeds", "1", "--output-dir", out]
    )
    assert rc == 1
    doc = json.load(open(os.path.join(out, "compare.json")))
    ok, bad = doc["runs"]
    assert ok["status"] == "ok" and os.path.isfile(os.path.join(ok["run_dir"], "results.json"))
    assert (
        bad["status"] == "failed"
        and "nosuch" in bad["error"]
        and bad["error"].startswith("fastft train: error")
    )
    md = open(os.path.join(out, "compare.md")).read()
    assert "## Failed runs" in md and "nosuch" in md


@pytest.mark.parametrize(
    "flags, msg",
    [
        (["--vary", "lr"], "expected field=value1,value2"),
        (["--vary", "lrr=1,2"], "did you mean 'lr'"),
        (["--vary", "lr=1e-3,abc"], "not a valid value for lr"),
        (["--vary", "lr=1e-3"], "at least 2 arms"),
        (["--vary", "strategy=full,bogus"], "not a valid value for strategy"),
        (["--vary", "lr=1,2", "--seeds", "x"], "--seeds"),
        (["--vary", "lr=1,2", "--baseline", "nope"], "is not an arm"),
    ],
)
def test_bad_compare_input_is_one_line_exit_2(flags, msg, tmp_path, capsys):
    assert main(["compare", *flags, "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "o" / "runs")


def test_a_second_compare_into_one_output_dir_is_refused(work, tmp_path, capsys):
    from fastft.train.outdir import acquire

    out = str(tmp_path / "cmp")
    with acquire(out):  # the first compare holds the folder (flock: a second open file conflicts too)
        rc = main(["compare", *_flags(work), "--vary", "lr=1e-3,3e-2", "--seeds", "1", "--output-dir", out])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"is in use by fastft pid {os.getpid()}" in err, err
    assert not os.path.exists(os.path.join(out, "runs"))


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_help_text_shows_percent_signs_once(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "%%" not in text
    if command == "compare":
        assert "95% CI" in text
