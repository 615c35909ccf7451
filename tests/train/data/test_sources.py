"""Data sources (issue #21): tables stay tables, regression labels are finite, data files are
fingerprinted, and a bad --cache-dir or a non-regular data file is named as what it is."""

from __future__ import annotations

import csv
import errno
import os
import tempfile

import pytest

from fastft.train.data import pipeline as P
from fastft.train.data import sources as S
from fastft.train.data.pipeline import prepare_data, prepare_file
from fastft.train.errors import DataError
from tests.models import minilm_dir
from tests.train.data.test_data import make_cfg, rows, write

REVIEW = "Pros: good plot {i}\n\nCons: dull {i}"  # a review export's paragraphs: a blank line inside quotes


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def review_tsv(path, n=30, header=("review", "rating")) -> str:
    """A review export: quoted multi-line texts (a blank line inside the quotes), a header row."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, dialect="excel-tab")
        w.writerow(header)
        for i in range(n):
            text = REVIEW.format(i=i) if i % 3 == 0 else f"great story {i}"
            w.writerow([text, "pos" if i % 2 else "neg"])
    return str(path)


def conll(path, quote_token=False, docstart=False, n=12) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        if docstart:
            fh.write("-DOCSTART- O\n\n")
        for i in range(n):
            if quote_token:  # an odd number of '"' tokens per sentence: quotes pair across sentences
                fh.write('"\tO\n')
            fh.write(f"John{i}\tB-PER\nlives\tO\nin\tO\nParis\tB-LOC\n\n")
    return str(path)


# ------------------------------------------------------------------------------------ tables vs CoNLL
def test_quoted_tsv_with_blank_lines_is_a_table(tmp_path, tok):
    tsv = review_tsv(tmp_path / "reviews.tsv", header=("text", "label"))
    assert not S._looks_like_conll(tsv)
    out = prepare_data(make_cfg(tmp_path, train_file=tsv), tok)
    assert out.problem_type == "single_label_classification"
    assert sum(len(d) for d in out.splits.values()) == 30
    texts = [t for d in out.splits.values() for t in d["text"]]
    assert REVIEW.format(i=0) in texts  # the paragraphs stay one text


@pytest.mark.parametrize("task", ["auto", "classification"])
def test_named_columns_are_never_overridden_by_the_sniff(tmp_path, tok, monkeypatch, task):
    """A column flag means "a table", even where the content sniff would say CoNLL."""
    tsv = review_tsv(tmp_path / "reviews.tsv")
    monkeypatch.setattr(S, "_looks_like_conll", lambda path: True)  # the worst case
    cfg = make_cfg(tmp_path, train_file=tsv, text_column="review", label_column="rating", task=task)
    out = prepare_data(cfg, tok)
    assert out.problem_type == "single_label_classification" and set(out.label2id) == {"neg", "pos"}
    assert out.report["columns"]["text"] == "review"
    if task == "auto":  # the CoNLL reader's own column names keep the sniff
        conll_cfg = make_cfg(tmp_path, train_file=conll(tmp_path / "ner.tsv"), text_column="tokens")
        assert prepare_data(conll_cfg, tok).problem_type == "token_classification"


@pytest.mark.parametrize("kind", ["plain", "docstart", "quote_token"])
def test_real_conll_tsv_still_detected(tmp_path, tok, kind):
    path = conll(tmp_path / "ner.tsv", quote_token=kind == "quote_token", docstart=kind == "docstart")
    assert S._looks_like_conll(path)
    out = prepare_data(make_cfg(tmp_path, train_file=path), tok)
    assert out.problem_type == "token_classification"


def test_quoted_table_cut_at_the_sniff_limit(tmp_path):
    """A quoted field cut by the 200-line sniff window does not make a table look like CoNLL."""
    path = tmp_path / "long.tsv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, dialect="excel-tab")
        w.writerow(["text", "label"])
        w.writerow(["a\n\n" * 150 + "b", "pos"])  # the field runs past line 200
        w.writerow(["c", "neg"])
    assert not S._looks_like_conll(str(path))


# -------------------------------------------------------------------------------- regression labels
@pytest.mark.parametrize("bad", ["inf", "-inf", "1e308"])
def test_regression_labels_must_be_finite(tmp_path, tok, bad):
    recs = [dict(r, label=0.5 + i / 10) for i, r in enumerate(rows(30))]
    recs[6]["label"] = bad
    path = write(tmp_path / "r.csv", recs)
    for task in ("auto", "regression"):
        with pytest.raises(
            DataError, match=r"r\.csv row 7: regression label .* column 'label'.*fix or remove"
        ):
            prepare_data(make_cfg(tmp_path, train_file=path, task=task), tok)
    with pytest.raises(DataError, match=r"r\.csv row 7: regression label"):
        prepare_file(path, make_cfg(tmp_path), tok, task="regression", label2id=None, require_labels=True)
    ok = prepare_file(path, make_cfg(tmp_path), tok, task="regression", label2id=None, require_labels=False)
    assert len(ok) == 30  # predict needs no labels: the bad one is not looked at


# ------------------------------------------------------------------------------------- fingerprints
def test_fingerprint_streams_size_and_hash(tmp_path, tok):
    path = write(tmp_path / "d.csv", rows(30))
    fp = S.fingerprint(path)
    assert fp["size"] == os.path.getsize(path) and len(fp["sha256"]) == 64
    out = prepare_data(make_cfg(tmp_path, train_file=path), tok)
    assert out.report["data_files"] == {"train_file": {"path": path, **fp}}
    with open(path, "a") as fh:
        fh.write("row99 one more,pos,m9\n")
    assert S.fingerprint(path) != fp
    assert P.data_fingerprints(make_cfg(tmp_path, dataset="rotten_tomatoes")) == {}


# ------------------------------------------------------------------------- cache dir and data paths
def test_cache_dir_that_cannot_be_written_is_named(tmp_path, tok, monkeypatch):
    path = write(tmp_path / "d.csv", rows(30))
    afile = tmp_path / "afile"
    afile.write_text("x")
    for cache in (str(afile), str(afile / "cache")):
        with pytest.raises(DataError, match=r"^--cache-dir .*afile.* cannot be written.*writable folder"):
            prepare_data(make_cfg(tmp_path, train_file=path, cache_dir=cache), tok)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(DataError, match=r"--cache-dir .*ro.* cannot be written \(Read-only file system\)"):
        prepare_data(make_cfg(tmp_path, train_file=path, cache_dir=str(tmp_path / "ro")), tok)
    with pytest.raises(DataError, match=r"--cache-dir .*ro.* cannot be written"):
        prepare_file(
            path,
            make_cfg(tmp_path, cache_dir=str(tmp_path / "ro")),
            tok,
            task="regression",
            label2id=None,
            require_labels=False,
        )


def test_datasets_cache_write_failure_blames_the_cache(tmp_path, monkeypatch):
    """The default cache (no --cache-dir) read-only: the error names the cache, not the CSV."""
    import datasets

    path = write(tmp_path / "d.csv", rows(10))

    def fail(*a, **k):
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/hf/cache/datasets/csv/lock")
        except PermissionError as e:
            raise RuntimeError("An error occurred while generating the dataset") from e

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match=r"^cannot write the datasets cache at /hf/cache.*--cache-dir$"):
        S.load_file(path, None, "--train-file")


def test_data_path_that_is_not_a_regular_file(tmp_path):
    with pytest.raises(DataError, match=r"'/dev/zero' is not a regular file \(a device"):
        S.load_file("/dev/zero", None, "--train-file")
    with pytest.raises(DataError, match=r"is a folder: pass a data file"):
        S.load_file(str(tmp_path), None, "--validation-file")
    with pytest.raises(DataError, match=r"does not exist: check the path"):
        S.load_file(str(tmp_path / "nope.csv"), None, "--train-file")
