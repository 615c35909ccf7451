"""``--task contrastive`` end to end through the CLI on tiny random CLIP / SigLIP models and colour-square
image-caption pairs: training lifts recall@1 far above chance, eval and predict (retrieval both ways),
the output folder loads with plain ``AutoModel``, --freeze-tower, LoRA on one tower (a PEFT adapter that
``peft`` loads), and the bad inputs (one line, exit 2)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fastft.cli import main
from tests.clip_util import save_tiny, write_pairs
from tests.compare import assert_close


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("contrastive")
    return {
        "dir": d,
        "clip": save_tiny(str(d / "clip"), "clip"),
        "siglip": save_tiny(str(d / "siglip"), "siglip"),
        "train": write_pairs(str(d / "data"), 64, "train.csv", seed=0, classes=True),
        "val": write_pairs(str(d / "data"), 16, "val.csv", seed=1, classes=True),
    }


def _argv(env, out, *extra, model="clip"):
    return [
        "train", "--task", "contrastive", "--model", env[model], "--train-file", env["train"],
        "--validation-file", env["val"], "--test-file", env["val"], "--image-column", "image",
        "--text-column", "caption", "--batch-size", "16", "--output-dir", str(out), "--logging-steps", "100",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(env):
    out = env["dir"] / "run"
    argv = _argv(env, out, "--epochs", "8", "--lr", "3e-3", "--contrastive-class-column", "colour")
    assert main(argv) == 0
    return out


def test_training_lifts_recall_far_above_chance(trained):
    res = json.load(open(trained / "results.json"))
    test = res["test"]
    # 16 test images, 16 distinct captions (8 colours x 2 shapes): chance recall@1 is 1/16 both ways
    assert test["i2t_recall@1"] >= 0.4 and test["t2i_recall@1"] >= 0.4, test
    assert test["mean_recall@1"] == pytest.approx((test["i2t_recall@1"] + test["t2i_recall@1"]) / 2)
    assert res["metric_for_best"] == "mean_recall@1"
    assert test["zero_shot_accuracy"] > 1 / 8 and "class_accuracy" in test, test  # 8 colour classes
    assert res["fused_parts"] == [
        "attention",
        "contrastive cross-entropy loss",
        "class-head cross-entropy loss",
    ]


def test_output_loads_with_plain_automodel(trained, env):
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(str(trained)).eval()
    assert type(model).__name__ == "CLIPModel"
    AutoProcessor.from_pretrained(str(trained))
    sd = load_file(str(trained / "model.safetensors"))
    assert sd["fastft_class_head.weight"].shape == (
        8,
        model.config.projection_dim,
    )  # the class head, alongside
    assert_close(model.text_projection.weight, sd["text_projection.weight"], torch.float32)
    base = load_file(os.path.join(env["clip"], "model.safetensors"))
    assert not torch.equal(base["text_projection.weight"], sd["text_projection.weight"])  # it trained


def test_eval_and_predict_both_directions(trained, env, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", "--model", str(trained), "--file", env["val"]]) == 0
    metrics = json.loads(capsys.readouterr().out)
    res = json.load(open(trained / "results.json"))["test"]
    for k in (
        "loss",
        "i2t_recall@1",
        "t2i_recall@5",
        "mean_recall@1",
        "zero_shot_accuracy",
        "class_accuracy",
    ):
        assert metrics[k] == pytest.approx(res[k]), k  # the CLI scores like the trainer did
    caps = tmp_path / "caps.txt"
    caps.write_text("a photo of a red square\na photo of a blue circle\na photo of a green square\n")
    pred = tmp_path / "p.jsonl"
    argv = ["predict", "--model", str(trained), "--file", env["val"], "--captions-file", str(caps)]
    assert main([*argv, "--top-k", "2", "--output", str(pred)]) == 0
    rows = [json.loads(x) for x in pred.read_text().splitlines()]
    assert len(rows) == 16 and all(len(r["captions"]) == 2 for r in rows)
    assert rows[0]["image"].endswith("val-000.png") and rows[0]["scores"][0] >= rows[0]["scores"][1]
    red = [r for r in rows if r["image"].endswith(("val-000.png", "val-008.png"))]
    assert sum(r["captions"][0] == "a photo of a red square" for r in red) >= 1  # red square/circle images
    pred2 = tmp_path / "p2.jsonl"
    assert main(["predict", "--model", str(trained), "--file", env["val"], "--direction", "t2i",
                 "--top-k", "3", "--output", str(pred2)]) == 0  # fmt: skip
    rows = [json.loads(x) for x in pred2.read_text().splitlines()]
    assert len(rows) == 16 and all(len(r["images"]) == 3 for r in rows)  # the file's 16 distinct captions


def test_summary_is_true_and_grad_accum_warns(env, tmp_path, capsys):
    out = tmp_path / "accum"
    assert main(_argv(env, out, "--max-steps", "1", "--eval-strategy", "no", "--grad-accum", "2")) == 0
    printed = capsys.readouterr().out
    assert "  fused      attention, contrastive cross-entropy loss\n" in printed  # not HF's unused "loss"
    warning = (
        "warning: contrastive loss: negatives come from each micro-batch of 16 rows; "
        "--grad-accum does not add negatives: raise --batch-size instead"
    )
    assert printed.count(warning) == 1


def test_grad_accum_warning_counts_the_gathered_rows():
    from types import SimpleNamespace

    from fastft.train.tasks import get_task

    task = get_task("contrastive")
    assert task.run_warnings(SimpleNamespace(grad_accum=1, batch_size=8), 4) == []
    (line,) = task.run_warnings(SimpleNamespace(grad_accum=3, batch_size=8), 4)
    assert "each micro-batch of 32 rows" in line  # under torchrun the loss sees every rank's rows


def _params(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def test_freeze_tower_keeps_it_exact(env, tmp_path):
    out = tmp_path / "frozen"
    argv = _argv(
        env, out, "--max-steps", "2", "--eval-strategy", "no", "--freeze-tower", "vision", "--lr", "1e-2"
    )
    assert main(argv) == 0
    before, after = _params(env["clip"]), _params(str(out))
    vision = [k for k in before if k.startswith(("vision_model.", "visual_projection."))]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert not torch.equal(before["text_projection.weight"], after["text_projection.weight"])


def test_lora_on_the_text_tower_is_a_peft_adapter(env, tmp_path):
    from peft import PeftModel
    from transformers import AutoModel

    out = tmp_path / "lora"
    argv = _argv(env, out, "--max-steps", "3", "--eval-strategy", "no", "--strategy", "lora",
                 "--freeze-tower", "vision", "--lr", "2e-2", "--lora-r", "4")  # fmt: skip
    assert main(argv) == 0
    cfg = json.load(open(out / "adapter" / "adapter_config.json"))
    assert cfg["target_modules"] and all(t.startswith("text_model.") for t in cfg["target_modules"])
    base = AutoModel.from_pretrained(env["clip"]).eval()
    peft_model = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    merged = AutoModel.from_pretrained(str(out)).eval()
    ids = torch.tensor([[0, 2, 5, 7, 1]])
    with torch.no_grad():
        a = peft_model.get_text_features(input_ids=ids)
        b = merged.get_text_features(input_ids=ids)
    a, b = (getattr(x, "pooler_output", x) for x in (a, b))
    assert_close(a, b, torch.float32, scale=10.0, name="PEFT adapter == fastft merged model")
    fresh = AutoModel.from_pretrained(env["clip"]).eval()
    with torch.no_grad():
        c = fresh.get_text_features(input_ids=ids)
    c = getattr(c, "pooler_output", c)
    assert (a - c).abs().max() > 1e-4  # the adapter changed the text tower


def test_siglip_trains_with_the_sigmoid_loss(env, tmp_path):
    out = tmp_path / "siglip"
    assert (
        main(_argv(env, out, "--max-steps", "4", "--lr", "3e-3", "--eval-strategy", "no", model="siglip"))
        == 0
    )
    res = json.load(open(out / "results.json"))
    assert res["global_step"] == 4 and "mean_recall@1" in res["test"]
    assert res["fused_parts"] == ["attention"]  # the sigmoid loss is plain torch; HF's loss patch never runs
    before, after = _params(env["siglip"]), _params(str(out))
    assert not torch.equal(before["logit_bias"], after["logit_bias"])  # only the sigmoid loss has a bias
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(str(out))).__name__ == "SiglipModel"


def test_siglip_loss_is_the_models_own():
    """The task's SigLIP path scores a batch exactly like ``SiglipModel(return_loss=True)``."""
    from fastft.train.tasks import get_task
    from tests.clip_util import tiny_model

    model = tiny_model("siglip", seed=2)
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(2, 100, (5, 6), generator=g),
        "pixel_values": torch.randn(5, 3, 32, 32, generator=g),
        "labels": torch.full((5,), -1),
    }
    with torch.no_grad():
        ours = get_task("contrastive").loss(model, batch, 5)
        ref = model(**{k: v for k, v in batch.items() if k != "labels"}, return_loss=True).loss
    assert_close(ours, ref, torch.float32)


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--text-column", "report"), "caption column 'report'"),
        (("--contrastive-class-column", "colour", "--label-column", "caption"), "pass only one"),
        (("--zero-shot-classes", "a,b"), "pass that column too"),
        (("--prompt-template", "no placeholder"), "prompt-template"),
    ],
)
def test_bad_input_is_one_line_exit_2(env, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    capsys.readouterr()
    assert main(_argv(env, out, "--max-steps", "1", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # nothing half-written


def test_missing_caption_column_lists_the_columns(env, tmp_path, capsys):
    src = tmp_path / "no_caption.csv"
    src.write_text(
        "image,colour\n" + "".join(f"{env['dir']}/data/img/train-{i:03d}.png,red\n" for i in range(8))
    )
    capsys.readouterr()
    argv = ["train", "--task", "contrastive", "--model", env["clip"], "--train-file", str(src),
            "--output-dir", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no caption column" in err and "image, colour" in err and "--text-column" in err


def test_text_model_for_contrastive_is_refused(env, tmp_path, capsys):
    from tests.train.trainutil import save_tiny as save_text

    bert = save_text(str(tmp_path / "bert"), "bert")
    capsys.readouterr()
    argv = ["train", "--task", "contrastive", "--model", bert, "--train-file", env["train"],
            "--output-dir", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not an image-text model" in err and "clip" in err.lower()


def _with_captions(env, tmp_path, name: str, empty) -> str:
    """``env["val"]`` with the captions of the rows ``empty(i)`` picks blanked."""
    import csv

    rows = list(csv.reader(open(env["val"])))
    img_dir = os.path.dirname(env["val"])
    path = tmp_path / name
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(rows[0])
        for i, r in enumerate(rows[1:]):
            w.writerow([os.path.join(img_dir, r[0]), "" if empty(i) else r[1], *r[2:]])
    return str(path)


def test_empty_captions_are_dropped_and_counted_never_trained_as_none(env, tmp_path, capsys):
    half = _with_captions(env, tmp_path, "half.csv", lambda i: i % 2 == 1)
    out = tmp_path / "half"
    argv = ["train", "--task", "contrastive", "--model", env["clip"], "--train-file", half,
            "--output-dir", str(out), "--max-steps", "1", "--batch-size", "4"]  # fmt: skip
    assert main(argv) == 0
    data = json.load(open(out / "results.json"))["data"]
    assert data["rows_dropped"]["train"]["empty"] == 8 and sum(data["split_sizes"].values()) == 8
    # no caption left: one line, not a run that scores recall@1 = 1.0 on "None" captions
    empty = _with_captions(env, tmp_path, "empty.csv", lambda i: True)
    capsys.readouterr()
    argv[argv.index(half)], argv[argv.index(str(out))] = empty, str(tmp_path / "empty")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "empty after cleaning" in err and "'empty': 16" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "empty").exists()


def test_eval_refuses_empty_captions(trained, env, tmp_path, capsys):
    half = _with_captions(env, tmp_path, "half.csv", lambda i: i == 3)
    capsys.readouterr()
    assert main(["eval", "--model", str(trained), "--file", half]) == 2
    err = capsys.readouterr().err.strip()
    assert "1 rows of" in err and "have no caption" in err and len(err.splitlines()) == 1, err


def test_unknown_class_column_names_its_flag(env, tmp_path, capsys):
    capsys.readouterr()
    assert main(_argv(env, tmp_path / "o", "--max-steps", "1", "--contrastive-class-column", "nope")) == 2
    err = capsys.readouterr().err.strip()
    assert "'nope' not found" in err and "(set --contrastive-class-column)" in err, err
    assert "--label-column" not in err and len(err.splitlines()) == 1
