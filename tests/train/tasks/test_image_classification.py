"""Image classification end to end through the CLI: train on a separable colour problem, eval, predict
top-k, the confusion-matrix PNG; every family trains; strategies on ViT; multi-label; bad input."""

from __future__ import annotations

import csv
import json
import os

import pytest

from fastft.cli import main
from tests.train.tasks import imgdata
from tests.train.trainutil import save_tiny


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    return {
        "d": d,
        "folder": imgdata.image_folder(str(d / "imgs"), per_class=16),
        "vit": imgdata.save_model(str(d / "vit"), "vit", num_labels=2),
        "csv": imgdata.image_csv(str(d / "tab"), n=24),
    }


def _results(out) -> dict:
    with open(os.path.join(out, "results.json")) as fh:
        return json.load(fh)


def test_folder_train_eval_predict_topk(ws, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--task", "image_classification", "--train-file", ws["folder"], "--model", ws["vit"],
            "--epochs", "4", "--batch-size", "8", "--lr", "3e-3", "--output-dir", str(out), "--augment", "flip"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "head       re-initialised (checkpoint had 2 labels, the data has 3)" in printed
    assert "  fused      attention, cross-entropy loss\n" in printed  # the task's CE, not HF's loss hook
    res = _results(out)
    assert res["problem_type"] == "single_label_classification" and res["num_labels"] == 3
    assert res["test"]["accuracy"] >= 0.8  # chance is 1/3
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert (out / "preprocessor_config.json").is_file()
    from transformers import AutoModelForImageClassification

    plain = AutoModelForImageClassification.from_pretrained(out)
    assert sorted(plain.config.label2id) == ["blue", "green", "red"]

    metrics = tmp_path / "m.json"
    assert main(["eval", "--model", str(out), "--file", ws["folder"], "--output", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["accuracy"] >= 0.8
    assert (tmp_path / "confusion_matrix.png").is_file()  # eval draws it beside --output
    preds = tmp_path / "p.csv"
    red = os.path.join(ws["folder"], "red")
    assert main(["predict", "--model", str(out), "--file", red, "--output", str(preds), "--top-k", "2"]) == 0
    rows = list(csv.DictReader(preds.open()))
    assert len(rows) == 16 and rows[0]["image"] == "0.png"
    assert {"label_1", "prob_1", "label_2", "prob_2"} <= set(rows[0]) and "label_3" not in rows[0]
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) for r in rows)
    assert sum(r["label_1"] == "red" for r in rows) >= 12


@pytest.mark.parametrize("kind", ["resnet", "convnext", "swin", "deit"])
def test_families_train_from_csv(ws, tmp_path, capsys, kind):
    model = imgdata.save_model(str(tmp_path / kind), kind, num_labels=3)
    out = tmp_path / "run"
    argv = ["train", "--task", "image_classification", "--train-file", ws["csv"], "--model", model,
            "--max-steps", "3", "--batch-size", "6", "--lr", "1e-3", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    res = _results(out)
    assert res["global_step"] == 3 and res["data"]["columns"]["image"] == "image_path"
    attention = "attention" in res["fused_parts"]
    assert attention == (kind == "deit")  # ViT/DeiT: AttentionInterface; Swin: biased windows; convs: none
    assert res["fused_parts"][-1] == "cross-entropy loss" and "loss" not in res["fused_parts"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--strategy", "freeze", "--freeze-layers", "1"],
        ["--strategy", "lora", "--lora-r", "4"],
        ["--layer-lr-decay", "0.8"],
        ["--strategy", "gradual", "--unfreeze-every", "1"],
    ],
    ids=["freeze", "lora", "llrd", "gradual"],
)
def test_strategies_on_vit(ws, tmp_path, extra):
    out = tmp_path / "run"
    argv = ["train", "--task", "image_classification", "--train-file", ws["csv"], "--model", ws["vit"],
            "--max-steps", "2", "--batch-size", "8", "--output-dir", str(out), *extra]  # fmt: skip
    assert main(argv) == 0
    res = _results(out)
    if "lora" in extra:
        assert (out / "adapter" / "adapter_model.safetensors").is_file()
        assert res["trainable_params"] < 5000
    if "freeze" in extra:
        from transformers import AutoModelForImageClassification

        total = sum(p.numel() for p in AutoModelForImageClassification.from_pretrained(out).parameters())
        assert res["trainable_params"] < total


def test_multilabel_images_from_jsonl(ws, tmp_path):
    src = imgdata.image_csv(str(tmp_path), n=24, name="ml.csv")
    rows = list(csv.DictReader(open(src)))
    path = tmp_path / "ml.jsonl"
    warm = {"red": ["warm", "primary"], "green": ["primary"], "blue": ["cold", "primary"]}
    path.write_text(
        "".join(json.dumps({"image": r["image_path"], "tags": warm[r["label"]]}) + "\n" for r in rows)
    )
    out = tmp_path / "run"
    argv = ["train", "--task", "image_classification", "--train-file", str(path), "--label-column", "tags",
            "--model", ws["vit"], "--max-steps", "2", "--batch-size", "8", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    res = _results(out)
    assert res["problem_type"] == "multi_label_classification" and res["num_labels"] == 3
    assert "f1_micro" in res["test"]


# ---------------------------------------------------------------------------------------------- bad input
def _bad(capsys, argv, out, *expect):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for e in expect:
        assert e in err, err
    assert not os.path.exists(out), f"{out} was left behind"
    return err


def _train(model, data, out, *extra):
    return ["train", "--task", "image_classification", "--train-file", str(data), "--model", model,
            "--output-dir", str(out), "--max-steps", "1", *extra]  # fmt: skip


def test_bad_image_inputs(ws, tmp_path, capsys):
    out = tmp_path / "never"
    d = tmp_path / "t"
    d.mkdir()
    good = imgdata.image_csv(str(d), n=6)
    lines = open(good).read().splitlines()
    missing = d / "missing.csv"
    missing.write_text("\n".join([*lines[:3], "imgs/nope.png,red", *lines[3:]]) + "\n")
    _bad(capsys, _train(ws["vit"], missing, out), out, "row 3", "nope.png", "does not exist")
    (d / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    corrupt = d / "corrupt.csv"
    corrupt.write_text("\n".join([*lines, "imgs/bad.png,red"]) + "\n")
    _bad(capsys, _train(ws["vit"], corrupt, out), out, "row 7", "bad.png")
    folder = imgdata.image_folder(str(d / "folder"), per_class=2)
    (d / "folder" / "red" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    err = _bad(capsys, _train(ws["vit"], folder, out), out, "bad.png is corrupt")
    assert err.count("bad.png") == 1, err  # a folder row is named by its file: not twice
    _bad(
        capsys,
        _train(ws["vit"], good, out, "--image-column", "picture"),
        out,
        "'picture'",
        "image_path",
        "--image-column",
    )
    _bad(capsys, _train(ws["vit"], good, out, "--augment", "eda"), out, "eda edits texts", "flip")
    _bad(capsys, _train(ws["vit"], good, out, "--augment", "blur"), out, "unknown augment 'blur'")


def test_undecodable_images_stop_train_eval_predict_with_one_line(ws, tmp_path, capsys):
    """A truncated JPEG and a PNG with garbled data (valid CRCs) pass Pillow's verify(): the up-front
    check decodes them, so train / eval / predict stop with one line naming the row and file (once),
    before anything is written."""
    d = tmp_path / "t"
    good = imgdata.image_csv(str(d), n=6)
    imgdata.undecodable_images(str(d / "imgs"))
    lines = open(good).read().splitlines()
    out = tmp_path / "never"
    for name, why in (("truncated.jpg", "truncated"), ("garbled.png", "corrupt")):
        bad = d / f"bad-{name}.csv"
        bad.write_text("\n".join([*lines, f"imgs/{name},red"]) + "\n")
        _bad(capsys, _train(ws["vit"], bad, out), out, "row 7", name, why)
        metrics = tmp_path / "m.json"
        _bad(capsys, ["eval", "--model", ws["vit"], "--file", str(bad), "--output", str(metrics)], metrics,
             "row 7", name, why)  # fmt: skip
    folder = imgdata.image_folder(str(tmp_path / "imgs"), per_class=3)
    imgdata.undecodable_images(os.path.join(folder, "red"))
    _bad(capsys, _train(ws["vit"], folder, out), out, "garbled.png is corrupt")
    preds = tmp_path / "p.csv"
    err = _bad(capsys, ["predict", "--model", ws["vit"], "--file", folder, "--output", str(preds)], preds,
               "garbled.png", "corrupt")  # fmt: skip
    assert err.count("garbled.png") == 1, err


def test_model_modality_mismatch(ws, tmp_path, capsys):
    out = tmp_path / "never"
    bert = save_tiny(str(tmp_path / "bert"), head="base")
    _bad(capsys, _train(bert, ws["csv"], out), out, "is a text model (bert)", "image model")
    text = tmp_path / "t.csv"
    text.write_text("text,label\n" + "".join(f"good film {i},pos\nbad film {i},neg\n" for i in range(10)))
    argv = ["train", "--train-file", str(text), "--model", ws["vit"], "--output-dir", str(out)]
    _bad(capsys, argv, out, "is an image model (vit)", "--task image_classification")
    argv = [
        "train",
        "--train-file",
        str(text),
        "--model",
        bert,
        "--output-dir",
        str(out),
        "--augment",
        "flip",
    ]
    _bad(capsys, argv, out, "flip augment images", "eda")


def test_hf_image_feature_parquet_with_classlabel(ws, tmp_path):
    """A parquet written by ``datasets`` with an ``Image`` feature (encoded bytes) and a ``ClassLabel``:
    the bytes are the references, the label ids become the class names."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(4)
    names = list(imgdata.COLOURS)
    feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    rows = {
        "img": [imgdata.colour_image(names[i % 3], rng) for i in range(24)],
        "label": [i % 3 for i in range(24)],
    }
    path = tmp_path / "hf.parquet"
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(path))
    out = tmp_path / "run"
    argv = ["train", "--task", "image_classification", "--train-file", str(path), "--model", ws["vit"],
            "--max-steps", "2", "--batch-size", "8", "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    res = _results(out)
    assert res["data"]["columns"]["image"] == "img"
    assert set(res["data"]["label_distribution"]["counts"]) == set(names)


def test_head_note_and_task_of_saved_image_models():
    from transformers import ViTConfig

    from fastft.train.models import head_note
    from fastft.train.tasks import LabelSpace, get_task, task_of_model

    task = get_task("image_classification")
    space = LabelSpace(3)
    inet = ViTConfig(num_labels=1000, architectures=["ViTForImageClassification"])
    assert head_note(task, inet, space).endswith(
        "re-initialised (checkpoint had 1000 labels, the data has 3)"
    )
    assert "checkpoint has none" in head_note(task, ViTConfig(architectures=["ViTModel"]), space)
    assert (
        head_note(task, ViTConfig(num_labels=3, architectures=["ViTForImageClassification"]), space) is None
    )
    assert task_of_model(inet).name == "image_classification"
    inet.problem_type = "multi_label_classification"
    assert task_of_model(inet).name == "image_multilabel"
    assert get_task("image_classification").refine([["a"], []]).name == "image_multilabel"
