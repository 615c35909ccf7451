"""End-to-end `fastft train | eval | predict` runs, one per task, on tiny random-init models."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np
import pytest

from fastft.cli import build_parser, main
from fastft.train.config import TrainConfig
from tests.train.trainutil import (
    file_flags,
    read_jsonl,
    save_tiny,
    sentences,
    train_losses,
    workspace,
    write_csv,
    write_jsonl,
)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return workspace(
        tmp_path_factory.mktemp("cli"), bert=dict(head="base"), gpt2=dict(kind="gpt2", head="base")
    )


def _train(work, out, *extra: str) -> int:
    return main(
        ["train", "--cache-dir", work["cache"], "--output-dir", str(out), "--logging-steps", "1", *extra]
    )


def _check_outputs(out, auto_cls: str):
    import transformers

    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer_config.json",
        "metrics.jsonl",
        "train_config.json",
        "results.json",
        "training_curve.png",
    ):
        assert os.path.isfile(os.path.join(out, name)), name
    with open(os.path.join(out, "config.json")) as fh:
        cfg = json.load(fh)
    assert "fastft" not in json.dumps(cfg.get("attn_implementation", "")), (
        "fastft attention leaked into config.json"
    )
    # loadable by plain transformers
    model = getattr(transformers, auto_cls).from_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    return model, tok, json.load(open(os.path.join(out, "results.json")))


def test_classification_train_eval_predict(work, tmp_path, capsys):
    out = tmp_path / "cls"
    rc = _train(
        work,
        out,
        "--model",
        work["bert"],
        *file_flags(work["files"]),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "TEST ACCURACY:" in stdout and "trainable" in stdout and "fused" in stdout
    model, tok, res = _check_outputs(str(out), "AutoModelForSequenceClassification")
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.label2id == {"neg": 0, "pos": 1}
    assert res["problem_type"] == "single_label_classification"
    for k in (
        "accuracy",
        "f1_macro",
        "f1_micro",
        "precision_macro",
        "recall_macro",
        "auc_roc",
        "confusion_matrix",
    ):
        assert k in res["test"]
    losses = train_losses(str(out))
    assert len(losses) == 24 and np.mean(list(losses.values())[-6:]) < np.mean(list(losses.values())[:6])
    evals = [r for r in read_jsonl(str(out / "metrics.jsonl")) if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [8, 16, 24]  # every epoch
    # the test metric in results.json is the one of the best checkpoint's model == the saved model
    assert os.path.isdir(res["best_checkpoint"])

    # fastft eval on the test file gives the same accuracy as results.json
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--file", work["files"]["test"]]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(res["test"]["accuracy"])
    assert metrics["rows"] == 16

    # fastft predict writes one row per input row, in order, with label names
    pred = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(out), "--file", work["files"]["test"], "--output", str(pred)]) == 0
    with open(pred) as fh:
        rows = list(csv.DictReader(fh))
    with open(work["files"]["test"]) as fh:
        src = list(csv.DictReader(fh))
    assert [r["text"] for r in rows] == [r["text"] for r in src]
    assert {r["prediction"] for r in rows} <= {"neg", "pos"}
    acc = np.mean([r["prediction"] == s["label"] for r, s in zip(rows, src)])
    assert acc == pytest.approx(res["test"]["accuracy"])
    # an existing predictions file is not overwritten silently
    assert main(["predict", "--model", str(out), "--file", work["files"]["test"], "--output", str(pred)]) == 2


def test_gpt2_classification_sets_pad_token(work, tmp_path):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(work["gpt2"]).pad_token is None  # the trainer must provide one
    out = tmp_path / "gpt2cls"
    rc = _train(
        work, out, "--model", work["gpt2"], *file_flags(work["files"]), "--epochs", "1", "--batch-size", "8"
    )
    assert rc == 0
    model, tok, res = _check_outputs(str(out), "AutoModelForSequenceClassification")
    assert model.config.pad_token_id is not None and tok.pad_token_id == model.config.pad_token_id
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    assert 0.0 <= res["test"]["accuracy"] <= 1.0


def test_regression(work, tmp_path):
    rows = [[t, round(p - 0.7 * q + 0.25, 2)] for t, p, q in sentences(60, seed=3)]
    train = write_csv(str(tmp_path / "reg.csv"), ["review", "score"], rows)
    out = tmp_path / "reg"
    rc = _train(
        work,
        out,
        "--model",
        work["bert"],
        "--train-file",
        train,
        "--text-column",
        "review",
        "--label-column",
        "score",
        "--epochs",
        "2",
        "--batch-size",
        "8",
    )
    assert rc == 0
    model, _, res = _check_outputs(str(out), "AutoModelForSequenceClassification")
    assert res["problem_type"] == "regression" and model.config.num_labels == 1
    assert model.config.problem_type == "regression"
    for k in ("mae", "mse", "rmse", "pearson"):
        assert k in res["test"]
    assert res["test"]["rmse"] == pytest.approx(np.sqrt(res["test"]["mse"]), rel=1e-6)


def test_multilabel(work, tmp_path):
    rows = []
    for t, p, q in sentences(60, seed=4):
        labels = (
            (["positive"] if p else [])
            + (["negative"] if q else [])
            + (["long"] if len(t.split()) > 5 else [])
        )
        rows.append({"text": t, "tags": labels or ["positive"]})
    train = write_jsonl(str(tmp_path / "ml.jsonl"), rows)
    out = tmp_path / "ml"
    rc = _train(
        work,
        out,
        "--model",
        work["bert"],
        "--train-file",
        train,
        "--label-column",
        "tags",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--task",
        "multilabel",
    )
    assert rc == 0
    model, _, res = _check_outputs(str(out), "AutoModelForSequenceClassification")
    assert res["problem_type"] == "multi_label_classification"
    assert model.config.problem_type == "multi_label_classification"
    assert sorted(model.config.label2id) == ["long", "negative", "positive"]
    assert "f1_micro" in res["test"] and "accuracy" in res["test"]

    # predict: one column of probabilities per label, prediction = labels with p > 0.5
    pred = tmp_path / "ml.csv"
    assert main(["predict", "--model", str(out), "--file", train, "--output", str(pred)]) == 0
    with open(pred) as fh:
        r0 = next(csv.DictReader(fh))
    assert {"prob_long", "prob_negative", "prob_positive", "prediction"} <= set(r0)


def test_causal_lm_perplexity(work, tmp_path, capsys):
    gpt = save_tiny(str(tmp_path / "gpt2lm"), "gpt2", head="lm")
    rows = [[t] for t, _, _ in sentences(50, seed=5)]
    train = write_csv(str(tmp_path / "lm.csv"), ["text"], rows)
    out = tmp_path / "lm"
    rc = _train(
        work,
        out,
        "--model",
        gpt,
        "--train-file",
        train,
        "--task",
        "causal_lm",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
    )
    assert rc == 0
    assert "TEST PERPLEXITY" in capsys.readouterr().out
    model, _, res = _check_outputs(str(out), "AutoModelForCausalLM")
    assert res["problem_type"] == "causal_lm"
    # the split was made from the one train file: results.json names the file in the output dir
    assert res["data"]["split_indices"] == os.path.join(str(out), "split_indices.json")
    assert os.path.isfile(res["data"]["split_indices"])
    assert res["test"]["perplexity"] == pytest.approx(np.exp(res["test"]["loss"]), rel=1e-6)
    # training reduced the perplexity below uniform over the vocabulary
    assert res["test"]["perplexity"] < model.config.vocab_size
    assert main(["eval", "--model", str(out), "--file", train]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["perplexity"] > 1.0 and "loss" in m


def test_config_file_and_flag_override(work, tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(
        f"model: {work['bert']}\ntrain-file: {work['files']['train']}\nvalidation_file: {work['files']['validation']}\n"
        f"test_file: {work['files']['test']}\nlr: 0.002\nbatch_size: 16\nmax_steps: 2\nscheduler: cosine\n"
    )
    out = tmp_path / "cfg"
    assert _train(work, out, "-c", str(cfg_file), "--batch-size", "8", "--eval-strategy", "no") == 0
    saved = json.load(open(out / "train_config.json"))
    assert saved["lr"] == 0.002 and saved["scheduler"] == "cosine"  # from the file
    assert saved["batch_size"] == 8 and saved["eval_strategy"] == "no"  # flags win
    assert saved["max_steps"] == 2 and len(train_losses(str(out))) == 2


def test_help_covers_every_field():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {s for a in train._actions for s in a.option_strings}
    helps = {a.dest: a.help for a in train._actions}
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in flags, f.name
        assert helps[f.name] and len(helps[f.name]) > 15, f.name
    for hf in (
        "--learning-rate",
        "--num-train-epochs",
        "--per-device-train-batch-size",
        "--model-name-or-path",
    ):
        assert hf in flags


def test_default_run_with_max_steps(tmp_path, capsys):
    """`fastft train` with no data/model arguments: real MiniLM + Rotten Tomatoes, cut to 2 steps."""
    from tests.models import minilm_dir

    minilm_dir()  # skips when the wheel is missing
    pytest.importorskip("pandas")
    out = tmp_path / "default"
    argv = [
        "train",
        "--output-dir",
        str(out),
        "--max-steps",
        "2",
        "--max-train-samples",
        "96",
        "--max-eval-samples",
        "32",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "TEST ACCURACY:" in text and "rotten_tomatoes" in text
    res = json.load(open(out / "results.json"))
    assert res["problem_type"] == "single_label_classification" and res["num_labels"] == 2
    assert res["global_step"] == 2 and 0.0 <= res["test"]["accuracy"] <= 1.0
    with open(out / "config.json") as fh:
        assert json.load(fh)["id2label"] == {"0": "rotten", "1": "fresh"}
    # the same command again reuses the folder (same config); another config needs --overwrite
    assert main(argv) == 0
    assert main([*argv, "--lr", "1e-3"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_report_to_mlflow_reads_back(work, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")  # in the dev extra: never skipped in CI
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FASTFT_MLFLOW_PARENT_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    flags = ["--model", work["bert"], *file_flags(work["files"]), "--max-steps", "2", "--batch-size", "16"]
    assert _train(work, out, *flags, "--report-to", "mlflow") == 0
    run_id = json.load(open(out / ".fastft-trackers.json"))["mlflow"]
    client = MlflowClient(tracking_uri="sqlite:///" + str(tmp_path / "mlruns" / "mlflow.db"))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["max_steps"] == "2" and run.data.params["batch_size"] == "16"
    losses = train_losses(str(out))
    hist = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, round(m.value, 5)) for m in hist] == [(k, round(v, 5)) for k, v in losses.items()]
    res = json.load(open(out / "results.json"))
    assert run.data.metrics["test/accuracy"] == pytest.approx(res["test"]["accuracy"])
    assert {"results.json", "training_curve.png"} <= {a.path for a in client.list_artifacts(run_id)}


def test_report_to_bad_name_is_one_line(work, tmp_path, capsys):
    assert _train(work, tmp_path / "bad", "--model", work["bert"], "--report-to", "mlflow,wandbb") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'wandb'" in err
    assert not os.path.exists(tmp_path / "bad")


def test_experiment_subcommands_are_registered(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "--vary" in capsys.readouterr().out
    assert main(["compare", "--vary", "nosuchfield=1,2", "--output-dir", "x"]) == 2
    assert "nosuchfield" in capsys.readouterr().err


def test_diverging_lr_ends_with_the_collapse_warning(work, tmp_path, capsys):
    """#21 §7: --lr 1e10 (default --on-nonfinite skip) made NaN logits that crashed evaluation in sklearn."""
    out = tmp_path / "diverged"
    flags = ["--model", work["bert"], *file_flags(work["files"]), "--max-steps", "3", "--lr", "1e10"]
    assert _train(work, out, *flags, "--batch-size", "16") == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "looks collapsed" in captured.out.strip().splitlines()[-1]
    res = json.load(open(out / "results.json"))
    assert res["collapsed"] and 0.0 <= res["test"]["accuracy"] <= 1.0
