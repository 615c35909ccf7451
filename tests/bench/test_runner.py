"""``python -m bench`` end to end on a tiny part, and a part's own CLI (``main_for``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cli, records
from tests.bench import tiny_part

ROOT = Path(__file__).resolve().parents[2]


def test_python_m_bench_quick_runs_into_a_tmp_dir(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # the bench times the real CPU paths, not the interpreter
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--parts",
            "tests.bench.tiny_part",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    js = [f for f in files if f.endswith(".json")]
    assert len(js) == 1 and js[0].startswith("cpu-")
    data = json.loads((tmp_path / js[0]).read_text())
    assert data["peaks"]["matmul_tflops"] > 0 and data["peaks"]["copy_gbps"] > 0
    # "% of peak" is taken against the faster of copy and in-place update bandwidth
    assert data["peaks"]["bw_gbps"] == max(data["peaks"]["copy_gbps"], data["peaks"]["rmw_gbps"])
    rows = data["parts"]["tiny"]["records"]
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    fast = [r for r in rows if r["impl"] == "fast"]
    assert all(r["speedup_vs_slow"] > 0 and r["gbps"] > 0 and r["pct_peak_bw"] > 0 for r in fast)
    md = (tmp_path / js[0].replace(".json", ".md")).read_text()
    assert "## tiny" in md and "× vs slow" in md and "![" in md
    assert any(f.endswith("-tiny-rowsum.png") for f in files)


def test_unknown_part_is_a_usage_error(tmp_path, capsys):
    from bench.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--parts", "nope", "--out", str(tmp_path)])
    assert e.value.code == 2 and "unknown part" in capsys.readouterr().err


def test_main_for_gives_a_part_its_cli(tmp_path, capsys):
    path = cli.main_for(
        tiny_part.run, "tiny", ["--quick", "--device", "cpu", "--out", str(tmp_path), "--no-plots"]
    )
    assert path.parent == tmp_path and path.exists() and path.with_suffix(".md").exists()
    assert "| rowsum |" in capsys.readouterr().out


def test_update_readme_fills_the_results_block(tmp_path):
    from bench import report

    rows = [
        records.make_record(
            "e2e",
            "bert_cls",
            impl,
            {"B": 2},
            "float32",
            {"median_ms": t, "p20_ms": t, "p80_ms": t, "n": 3},
            m,
            samples_per_s=s,
            mean_ms=t,
        )
        for impl, t, m, s in (("hf", 2.0, 200, 1.0), ("fastft", 1.0, 100, 2.0))
    ]
    records.add_ratios(rows, ["hf"], time_field="mean_ms")
    path = records.write_results("e2e", rows, device="cpu", out_dir=tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report._START}\nold\n{report._END}\ntail\n")
    report.update_readme(path, readme=readme)
    text = readme.read_text()
    assert "old" not in text and text.endswith("tail\n") and "2.00× vs hf" in text
    assert f"]({path.with_suffix('.md').name})" in text  # links relative to the README


def test_readme_takes_the_newest_bench_run_with_end_to_end_records(tmp_path):
    """Not a later bench_quality / compare JSON, nor a kernels-only run, and GPU runs before CPU ones."""
    from bench import report

    def run(name, date, parts):
        data = {"environment": {"date": date}, "parts": parts}
        (tmp_path / name).write_text(json.dumps(data))
        return tmp_path / name

    e2e = {"e2e": {"records": [{"name": "cpu_train"}]}}
    old = run("cpu-2026-11-22.json", "2026-11-22T08:00:00Z", e2e)
    assert report.newest_for_readme(tmp_path) == old
    new = run("cpu-2026-12-01-e2e.json", "2026-12-01T13:45:00Z", e2e)
    run("cpu-2026-12-02-adamw.json", "2026-12-02T09:00:00Z", {"adamw": {"records": [{"name": "x"}]}})
    (tmp_path / "cpu-2026-12-03-quality.json").write_text(json.dumps({"runs": [], "means": {}}))
    (tmp_path / "broken.json").write_text("{")
    assert report.newest_for_readme(tmp_path) == new
    gpu = run("h200-2026-11-30.json", "2026-11-30T10:00:00Z", e2e)
    assert report.newest_for_readme(tmp_path) == gpu
