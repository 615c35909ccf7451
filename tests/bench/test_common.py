"""The bench framework itself: statistics, memory, records, output (fast, CPU)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from bench import common, records


def test_quantile_matches_numpy():
    g = np.random.default_rng(0)
    xs = g.random(37).tolist()
    for q in (0.0, 0.2, 0.5, 0.8, 1.0):
        assert common.quantile(xs, q) == pytest.approx(np.quantile(xs, q))
    with pytest.raises(ValueError):
        common.quantile([], 0.5)


def test_summarize_known_values():
    s = common.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["median_ms"] == 3.0 and s["n"] == 5 and s["min_ms"] == 1.0 and s["mean_ms"] == 3.0
    assert s["p20_ms"] == pytest.approx(1.8) and s["p80_ms"] == pytest.approx(4.2)


def test_bench_fn_times_a_known_sleep():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    s = common.bench_fn(fn, device="cpu", warmup=2, rep=8)
    assert s["n"] == 8
    assert len(calls) == 1 + 2 + 8  # untimed first call + warm-up + timed
    # sleep never returns early; a loaded 2-core machine can add delay but not remove it
    assert 10.0 <= s["p20_ms"] <= s["median_ms"] <= s["p80_ms"]
    assert s["median_ms"] < 200


def test_bench_fn_auto_counts_stay_in_bounds():
    s = common.bench_fn(lambda: torch.ones(10).sum(), device="cpu", budget_s=0.02)
    assert 5 <= s["n"] <= 100
    s = common.bench_fn(lambda: time.sleep(0.03), device="cpu", budget_s=0.01)
    assert s["n"] == 5  # the CPU minimum when one call exceeds the budget


def test_peak_memory_cpu_sees_a_known_allocation():
    keep = {"old": torch.empty(2**20, dtype=torch.uint8)}

    def fn():
        keep.pop("old", None)  # frees 1 MiB allocated by the previous call
        a = torch.empty(10 * 2**20, dtype=torch.uint8)
        b = torch.empty(5 * 2**20, dtype=torch.uint8)
        del a, b
        keep["old"] = torch.empty(2**20, dtype=torch.uint8)

    peak = common.peak_memory(fn, "cpu")
    # second (measured) call: -1 MiB, +10, +5 -> 14 MiB above the start
    assert peak == 14 * 2**20
    assert common.peak_memory(lambda: None, "cpu") == 0


@pytest.mark.gpu
def test_peak_memory_cuda():
    x = torch.empty(2**20, dtype=torch.uint8, device="cuda")
    rel = common.peak_memory(
        lambda: torch.empty(8 * 2**20, dtype=torch.uint8, device="cuda"), "cuda", relative=True
    )
    assert rel >= 8 * 2**20
    assert common.peak_memory(lambda: None, "cuda") >= x.numel()


def test_rotating_cycles_input_sets():
    seen = []
    make = iter(range(100))
    call = common.rotating(lambda i: seen.append(i), lambda: (next(make),), device="cpu", copies=3)
    for _ in range(7):
        call()
    assert seen == [0, 1, 2, 0, 1, 2, 0] and call.copies == 3
    one = common.rotating(lambda t: t, lambda: torch.ones(4), device="cpu")
    assert one.copies == 1  # no L2 to defeat on CPU


def test_make_record_throughput_and_ratios():
    peaks = {"matmul_tflops": 2.0, "copy_gbps": 100.0}
    fast = records.make_record(
        "p",
        "op",
        "fastft",
        {"N": 4},
        torch.float32,
        {"median_ms": 1.0, "p20_ms": 0.9, "p80_ms": 1.1, "n": 10},
        100,
        flops=1e9,
        nbytes=5e7,
        peaks=peaks,
        seq_len=4,
    )
    base = records.make_record(
        "p",
        "op",
        "torch",
        {"N": 4},
        torch.float32,
        {"median_ms": 3.0, "p20_ms": 2.9, "p80_ms": 3.1, "n": 10},
        400,
        flops=1e9,
        peaks=peaks,
    )
    assert fast["tflops"] == pytest.approx(1.0) and fast["pct_peak_flops"] == pytest.approx(50.0)
    assert fast["gbps"] == pytest.approx(50.0) and fast["pct_peak_bw"] == pytest.approx(50.0)
    assert fast["dtype"] == "float32" and fast["shape_str"] == "N=4" and fast["seq_len"] == 4
    records.add_ratios([fast, base], ["torch"])
    assert fast["speedup_vs_torch"] == pytest.approx(3.0)
    assert fast["mem_ratio_vs_torch"] == pytest.approx(0.25)
    assert "speedup_vs_torch" not in base


def test_write_results_merges_parts_and_writes_markdown(tmp_path):
    rec = records.make_record(
        "a",
        "op",
        "fastft",
        (2, 3),
        torch.bfloat16,
        {"median_ms": 2.0, "p20_ms": 1.0, "p80_ms": 3.0, "n": 5},
        2**20,
    )
    na = records.not_available("b", "op", "fastft", "fastft.optim missing")
    p1 = records.write_results("a", [rec], device="cpu", out_dir=tmp_path)
    p2 = records.write_results("b", [na], device="cpu", out_dir=tmp_path)
    assert p1 == p2 and p1.name.startswith("cpu-") and p1.suffix == ".json"
    data = json.loads(p1.read_text())
    assert set(data["parts"]) == {"a", "b"}
    env = data["parts"]["a"]["environment"]
    for key in ("device", "torch", "triton", "transformers", "git_commit", "date"):
        assert key in env
    assert data["parts"]["a"]["records"][0]["shape"] == [2, 3]
    # rewriting a part replaces only that part
    records.write_results("a", [], device="cpu", out_dir=tmp_path)
    data = json.loads(p1.read_text())
    assert data["parts"]["a"]["records"] == [] and len(data["parts"]["b"]["records"]) == 1
    md = p1.with_suffix(".md").read_text()
    assert "## b" in md and "not available" in md and "fastft.optim missing" in md


def test_markdown_table_columns():
    a = records.make_record(
        "p",
        "op",
        "fastft",
        {"S": 8},
        "float32",
        {"median_ms": 1.0, "p20_ms": 0.5, "p80_ms": 1.5, "n": 3},
        3 * 2**20,
        target="≥2×",
    )
    b = records.make_record(
        "p",
        "op",
        "torch",
        {"S": 8},
        "float32",
        {"median_ms": 2.0, "p20_ms": 1.5, "p80_ms": 2.5, "n": 3},
        6 * 2**20,
    )
    records.add_ratios([a, b], ["torch"])
    a["target_met"] = True
    table = records.markdown_table([a, b])
    lines = table.strip().splitlines()
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|") == lines[3].count("|")
    assert "2.00× vs torch" in lines[2] and "0.50× vs torch" in lines[2] and "yes" in lines[2]
    assert "0.5–1.5" in lines[2] and "| 3 |" in lines[2]


def test_environment_has_versions_and_commit():
    env = common.environment("cpu")
    assert env["device_type"] == "cpu" and env["torch"] == torch.__version__
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
