"""Knowledge distillation: loss = (1-alpha)*CE + alpha*T^2*KL(softmax(t/T) || softmax(s/T)), checked against a
hand-written torch formula, both for the functional op the trainer uses and for the trainer's own loss."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fastft.cli import main
from fastft.functional import kd_loss
from fastft.train import TrainConfig, Trainer
from fastft.train.setup import train_loader
from fastft.train.step import compute_loss
from tests.compare import assert_close, randn
from tests.train.trainutil import classification_files, file_flags, save_tiny, sentences, write_csv


def kd_reference(s, t, y, T, alpha, ignore_index=-100):
    """Per-item KD loss in float64, written out term by term; ignored items contribute 0."""
    s, t = s.double(), t.double()
    log_ps = torch.log_softmax(s / T, -1)
    pt = torch.softmax(t / T, -1)
    kl = (pt * (torch.log(pt) - log_ps)).sum(-1)
    valid = y != ignore_index
    ce = -torch.log_softmax(s, -1).gather(-1, y.clamp_min(0)[:, None])[:, 0]
    per = (1 - alpha) * ce + alpha * T * T * kl
    return torch.where(valid, per, torch.zeros_like(per))


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (2.0, 0.0), (4.0, 1.0), (0.5, 0.3)])
@pytest.mark.parametrize("n,c", [(1, 2), (7, 5), (33, 130)])
def test_kd_loss_formula(T, alpha, n, c):
    s = randn(n, c, scale=2.0, dtype=torch.float64).requires_grad_()
    t = randn(n, c, scale=2.0, dtype=torch.float64)
    y = torch.randint(0, c, (n,))
    if n > 2:
        y[1] = -100  # an ignored item
    ref = kd_reference(s, t, y, T, alpha)
    out_sum = kd_loss(s, t, y, temperature=T, alpha=alpha, reduction="sum")
    assert_close(out_sum, ref.sum(), name="kd sum")
    out_mean = kd_loss(s, t, y, temperature=T, alpha=alpha)
    assert_close(out_mean, ref.sum() / (y != -100).sum(), name="kd mean")
    g = torch.autograd.grad(out_sum, s)[0]
    s2 = s.detach().clone().requires_grad_()
    g_ref = torch.autograd.grad(kd_reference(s2, t, y, T, alpha).sum(), s2)[0]
    assert_close(g, g_ref, name="kd grad")


def test_kd_alpha0_is_cross_entropy():
    s, t = randn(6, 4), randn(6, 4)
    y = torch.randint(0, 4, (6,))
    assert_close(kd_loss(s, t, y, alpha=0.0, temperature=3.0), F.cross_entropy(s, y))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("kd")
    return {
        "d": d,
        "student": save_tiny(str(d / "student"), head="base", seed=1),
        "teacher": save_tiny(str(d / "teacher"), seed=2),
        "files": classification_files(str(d), 32, 8, 8),
    }


def _trainer(models, out, **kw):
    f = models["files"]
    cfg = TrainConfig(
        model=models["student"],
        train_file=f["train"],
        validation_file=f["validation"],
        test_file=f["test"],
        output_dir=str(out),
        batch_size=8,
        cache_dir=str(models["d"] / "cache"),
        **kw,
    )
    tr = Trainer(cfg)
    tr.setup()
    return tr


def test_trainer_kd_loss_matches_formula(models, tmp_path):
    T, alpha = 3.0, 0.7
    tr = _trainer(models, tmp_path / "o", teacher=models["teacher"], kd_temperature=T, kd_alpha=alpha)
    run = tr.run
    batch = run.to_device(next(iter(train_loader(run, 0))))
    n = batch["labels"].shape[0] + 5  # the accumulated batch is larger than this micro-batch
    tr.model.eval()  # no dropout: the logits below are the ones the loss saw
    loss = compute_loss(run, tr.model, batch, n)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    with torch.no_grad():
        s = tr.model(**inputs).logits
        t = run.teacher(**inputs).logits
    assert_close(loss, kd_reference(s, t, batch["labels"], T, alpha).sum() / n, name="trainer kd")
    # alpha = 0: plain cross-entropy normalised by the accumulated item count
    tr.cfg.kd_alpha = 0.0
    assert_close(
        compute_loss(run, tr.model, batch, n), F.cross_entropy(s, batch["labels"], reduction="sum") / n
    )


def test_trainer_kd_causal_lm(tmp_path):
    student = save_tiny(str(tmp_path / "s"), "gpt2", head="lm", seed=1)
    teacher = save_tiny(str(tmp_path / "t"), "gpt2", head="lm", seed=2)
    train = write_csv(str(tmp_path / "lm.csv"), ["text"], [[t] for t, _, _ in sentences(30, seed=9)])
    T, alpha = 2.0, 0.4
    tr = Trainer(
        TrainConfig(
            model=student,
            teacher=teacher,
            train_file=train,
            task="causal_lm",
            batch_size=6,
            output_dir=str(tmp_path / "o"),
            kd_temperature=T,
            kd_alpha=alpha,
            cache_dir=str(tmp_path / "cache"),
        )
    )
    run = tr.setup()
    batch = run.to_device(next(iter(train_loader(run, 0))))
    n = int((batch["labels"][:, 1:] != -100).sum())
    tr.model.eval()
    loss = compute_loss(run, tr.model, batch, n)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        s = tr.model(**inputs).logits[:, :-1].flatten(0, 1)
        t = run.teacher(**inputs).logits[:, :-1].flatten(0, 1)
    y = batch["labels"][:, 1:].flatten()
    assert (y == -100).any()  # padding positions are excluded
    assert_close(loss, kd_reference(s, t, y, T, alpha).sum() / n, name="causal kd")


def test_kd_end_to_end(models, tmp_path):
    out = tmp_path / "kd"
    rc = main(
        [
            "train",
            "--model",
            models["student"],
            *file_flags(models["files"]),
            "--teacher",
            models["teacher"],
            "--kd-alpha",
            "0.8",
            "--kd-temperature",
            "2",
            "--output-dir",
            str(out),
            "--max-steps",
            "3",
            "--cache-dir",
            str(models["d"] / "cache"),
            "--batch-size",
            "8",
        ]
    )
    assert rc == 0
    res = json.load(open(out / "results.json"))
    assert res["global_step"] == 3 and "accuracy" in res["test"]
    saved = json.load(open(out / "train_config.json"))
    assert saved["teacher"] == models["teacher"] and saved["kd_alpha"] == 0.8


def test_teacher_refused_for_a_task_without_distillation(models, tmp_path):
    """Regression's loss has no KD term: a --teacher would be ignored silently, so it is refused."""
    from fastft.train.errors import ConfigError

    rows = [[t, float(p - n)] for t, p, n in sentences(24, seed=5)]
    path = write_csv(str(tmp_path / "reg.csv"), ["text", "score"], rows)
    cfg = TrainConfig(
        model=models["student"], train_file=path, output_dir=str(tmp_path / "r"), batch_size=8,
        cache_dir=str(models["d"] / "cache"), teacher=models["teacher"], task="regression",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="--teacher .* not supported for --task regression"):
        Trainer(cfg).setup()
