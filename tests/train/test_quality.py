"""Issue 15 wiring: collapse warnings, tie-break, small-data / label start-up report, --class-weights,
untrained heads refused by eval/predict, parse-error causes, path-like model values, config aliases."""

from __future__ import annotations

import csv
import os

import pytest
import torch
import torch.nn.functional as F

from fastft.cli import main
from fastft.train import TrainConfig, Trainer
from fastft.train.config import config_from_dict
from fastft.train.errors import ConfigError, DataError
from tests.train.trainutil import (
    file_flags,
    read_jsonl,
    save_tiny,
    sentences,
    train_config,
    workspace,
    write_csv,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return workspace(tmp_path_factory.mktemp("quality"), 24, 8, 8, bert=dict(head="base"))


_cfg = train_config


def test_collapse_small_data_labels_and_fp16_warnings(env, tmp_path, capsys):
    """lr 1e-12 learns nothing: every evaluation and the end warn in one line, results.json records it;
    start-up reports the label counts, the short run, the small classes and fp16-on-CPU."""
    out = tmp_path / "collapse"
    res = Trainer(
        _cfg(env, out, lr=1e-12, max_steps=2, eval_strategy="steps", eval_steps=1, precision="fp16")
    ).train()
    text = capsys.readouterr().out
    assert res["collapsed"] is True and res["collapse"]["split"] == "test"
    assert any("predicts class" in s for s in res["collapse"]["symptoms"])
    lines = [ln for ln in text.splitlines() if ln.startswith("warning: the model looks collapsed")]
    assert len(lines) == 3  # two evaluations + the final model
    assert "--class-weights auto" in lines[0] and "--lr" in lines[0]
    evals = [r for r in read_jsonl(str(out / "metrics.jsonl")) if r["type"] == "eval"]
    assert [r["collapsed"] for r in evals] == [True, True]
    dist = res["data"]["label_distribution"]
    assert dist["counts"] == {"neg": 9, "pos": 15} and dist["rows"] == 24
    assert "labels     train: neg 9 (38%), pos 15 (62%); imbalance 1.7x" in text
    assert "warning: this run takes only 2 optimizer steps" in text
    assert "warning: few training rows per class (neg 9, pos 15;" in text
    assert "warning: --precision fp16 on CPU" in text


def test_tie_break_by_eval_loss_then_later_step(env, tmp_path, monkeypatch):
    """Equal accuracy at every evaluation: the lower loss wins, and on equal loss the later step."""
    script = iter([(0.5, 0.70), (0.5, 0.60), (0.5, 0.60), (0.5, 0.65)])

    def fake_evaluate(run, split="validation", collect=None):
        if split != "validation":
            return {}
        acc, loss = next(script)
        return {"loss": loss, "accuracy": acc}

    from fastft.train import evaluate

    monkeypatch.setattr(evaluate, "evaluate_split", fake_evaluate)
    out = tmp_path / "tie"
    res = Trainer(_cfg(env, out, max_steps=4, eval_strategy="steps", eval_steps=1, batch_size=4)).train()
    assert res["best_step"] == 3  # step 2 beat step 1 on loss; step 3 tied it and is later; 4 is worse
    evals = [r for r in read_jsonl(str(out / "metrics.jsonl")) if r["type"] == "eval"]
    assert [r["is_best"] for r in evals] == [True, True, True, False]


def test_class_weights_auto_reach_the_fused_loss(env, tmp_path, monkeypatch):
    from fastft.train.tasks import classification as C

    seen = []
    real = C.ce_sum

    def spy(logits, labels, fused, weight=None):
        seen.append(weight)
        return real(logits, labels, fused, weight)

    monkeypatch.setattr(C, "ce_sum", spy)
    res = Trainer(_cfg(env, tmp_path / "cw", max_steps=1, class_weights="auto", eval_strategy="no")).train()
    expect = [24 / (2 * 9), 24 / (2 * 15)]  # sklearn "balanced": n / (k * n_c)
    assert res["data"]["class_weights"] == pytest.approx({"neg": expect[0], "pos": expect[1]})
    assert seen and all(w is not None for w in seen)
    assert seen[0].tolist() == pytest.approx(expect)


def test_imbalanced_class_weights_turn_on_for_strong_imbalance_only(env, tmp_path, capsys):
    """``imbalanced``: auto weights from a 3x largest/smallest train-class ratio, else none. The default
    ``none`` weighs nothing and, on such a set, prints one hint line instead."""
    rows = [[t, "pos" if i % 5 else "neg"] for i, (t, _, _) in enumerate(sentences(30, seed=3))]  # 24 : 6
    path = write_csv(str(tmp_path / "skewed.csv"), ["text", "label"], rows)
    kw = dict(
        model=env["bert"], train_file=path, cache_dir=env["cache"], max_steps=1, eval_strategy="no", batch_size=8
    )  # fmt: skip
    assert TrainConfig(**kw).class_weights == "none"
    res = Trainer(TrainConfig(**kw, output_dir=str(tmp_path / "skew0"))).train()
    assert "class_weights" not in res["data"]
    hints = [ln for ln in capsys.readouterr().out.splitlines() if "hint" in ln]
    assert len(hints) == 1 and "--class-weights auto" in hints[0]
    res = Trainer(TrainConfig(**kw, output_dir=str(tmp_path / "skew"), class_weights="imbalanced")).train()
    counts = res["data"]["label_distribution"]["counts"]
    n, k = sum(counts.values()), len(counts)
    assert max(counts.values()) >= 3 * min(counts.values())
    assert res["data"]["class_weights"] == pytest.approx({c: n / (k * m) for c, m in counts.items()})
    out = capsys.readouterr().out
    assert "--class-weights imbalanced (imbalance >= 3x: auto)" in out and "hint" not in out
    bal = Trainer(
        _cfg(env, tmp_path / "bal", max_steps=1, eval_strategy="no", class_weights="imbalanced")
    ).train()
    assert "class_weights" not in bal["data"]  # 9 : 15
    assert "hint" not in capsys.readouterr().out


def test_resolve_class_weights():
    from fastft.train.diagnose import resolve_class_weights

    assert resolve_class_weights("imbalanced", 3.0) == "auto"
    assert resolve_class_weights("Imbalanced", 2.9) == "none" == resolve_class_weights("imbalanced", None)
    assert resolve_class_weights("1,2", 9.0) == "1,2" and resolve_class_weights(None, 9.0) == "none"


def test_weighted_loss_matches_torch_weight():
    """Classification.loss with class weights == torch's CE(weight=) sum / items, value and gradient."""
    from fastft.train.tasks.classification import Classification

    torch.manual_seed(0)
    logits = torch.randn(13, 3, dtype=torch.float32, requires_grad=True)
    labels = torch.randint(0, 3, (13,))
    labels[4] = -100
    w = torch.tensor([0.5, 1.5, 4.0])

    class Out:
        def __init__(self, x):
            self.logits = x

    model = lambda **kw: Out(logits)  # noqa: E731
    cfg = TrainConfig(fused=True)
    got = Classification().loss(
        model, {"input_ids": labels[:, None], "labels": labels}, 20, cfg=cfg, class_weight=w
    )
    ref_logits = logits.detach().double().requires_grad_(True)
    ref = F.cross_entropy(ref_logits, labels, weight=w.double(), reduction="sum") / 20
    (g,) = torch.autograd.grad(got, logits)
    (g_ref,) = torch.autograd.grad(ref, ref_logits)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-5, atol=1e-6)


def test_class_weights_bad_values_exit_2(env, tmp_path, capsys):
    flags = ["train", "--model", env["bert"], *file_flags(env["files"]), "--cache-dir", env["cache"]]
    rc = main([*flags, "--output-dir", str(tmp_path / "a"), "--class-weights", "1,2,3"])
    err = capsys.readouterr().err
    assert rc == 2 and "3 values but the data has 2 classes" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------------------------------------
# eval / predict


def test_eval_predict_refuse_an_untrained_head(env, tmp_path, capsys):
    base = env["bert"]  # saved as a plain BertModel: no classifier weights in the checkpoint
    f = env["files"]["test"]
    assert main(["eval", "--model", base, "--file", f, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert (
        "classifier.weight" in err and "--allow-untrained-head" in err and len(err.strip().splitlines()) == 1
    )
    out = str(tmp_path / "p.csv")
    assert main(["predict", "--model", base, "--file", f, "--output", out, "--device", "cpu"]) == 2
    assert not os.path.exists(out)
    capsys.readouterr()
    assert main(["predict", "--model", base, "--file", f, "--output", out, "--allow-untrained-head"]) == 0


def test_predict_keeps_an_auto_detected_text_column(tmp_path):
    model = save_tiny(str(tmp_path / "m"), head="cls")
    rows = [[t] for t, _, _ in sentences(5)]
    f = write_csv(str(tmp_path / "in.csv"), ["sentence"], rows)
    out = str(tmp_path / "pred.csv")
    assert main(["predict", "--model", model, "--file", f, "--output", out, "--device", "cpu"]) == 0
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["sentence"] for r in table] == [r[0] for r in rows]


# ---------------------------------------------------------------------------------------------
# smaller input fixes


def test_parse_errors_name_the_cause(tmp_path):
    from fastft.train.data.sources import load_file

    ragged = tmp_path / "r.csv"
    ragged.write_text("text,label\ngood,pos\nbad,neg,x,y\n")
    enc = tmp_path / "e.csv"
    enc.write_bytes(b"text,label\ngood,pos\nbad caf\xe9,neg\n")
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "a", "label": "pos"}\n{"text": oops\n')
    cases = [(ragged, "line 3, saw 4"), (enc, "byte 0xe9 at line 3"), (bad, "line 2 is not valid JSON")]
    for path, cause in cases:
        with pytest.raises(DataError, match=cause):
            load_file(str(path), str(tmp_path / "cache"), "--train-file")


def test_path_like_model_fails_at_once(tmp_path, monkeypatch):
    """A path-like value that is no folder is refused before transformers tries it as a hub id."""
    import transformers

    from fastft.train.models import check_model

    def no_hub(*a, **k):
        raise AssertionError("AutoConfig.from_pretrained must not be tried (hub retries)")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    monkeypatch.chdir(tmp_path)
    os.makedirs("models")
    (tmp_path / "weights.bin").write_bytes(b"x")
    for value in ("models/doesnotexist", "./nothere", "a/b/c", str(tmp_path / "none"), "weights.bin"):
        with pytest.raises(ConfigError, match=r"(does not exist|is a file); pass a model folder"):
            check_model(value)


def test_config_file_accepts_hf_names_and_suggests():
    cfg = config_from_dict({"learning_rate": 3e-5, "num_train_epochs": 2, "per_device_train_batch_size": 4})
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (3e-5, 2.0, 4)
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        config_from_dict({"learning_rat": 1e-4})
