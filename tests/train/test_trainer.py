"""Trainer mechanics: loss normalisation under gradient accumulation, precisions, non-finite losses, early
stopping with the best checkpoint kept, schedules, gradient checkpointing, LoRA outputs, TensorBoard."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from fastft.cli import main
from fastft.train import TrainConfig, Trainer, TrainingError
from fastft.train.checkpoint import list_checkpoints, load_state_dict_file
from fastft.train.schedule import lr_lambda as _lr_lambda
from tests.train.trainutil import (
    classification_files,
    file_flags,
    read_jsonl,
    sentences,
    train_config,
    train_losses,
    workspace,
    write_csv,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return workspace(
        tmp_path_factory.mktemp("trainer"),
        24,
        8,
        8,
        bert=dict(head="base"),
        gpt2lm=dict(kind="gpt2", head="lm"),
    )


_cfg = train_config


@pytest.mark.parametrize("kind", ["classification", "causal_lm"])
def test_accumulation_normalises_by_items_of_the_whole_batch(env, tmp_path, kind):
    """10 rows as micro-batches of 4+4+2 (accum 3) give the same update as one batch of 10: the loss is divided
    by the items (sequences / label tokens) of the accumulated batch, not averaged per micro-batch."""
    if kind == "classification":
        rows = [[t, "pos" if p > q else "neg"] for t, p, q in sentences(10, seed=11)]
        train = write_csv(str(tmp_path / "t.csv"), ["text", "label"], rows)
        extra = dict(model=env["bert"])
    else:
        rows = [[t] for t, _, _ in sentences(10, seed=12)]
        train = write_csv(str(tmp_path / "t.csv"), ["text"], rows)
        extra = dict(model=env["gpt2lm"], task="causal_lm")
    common = dict(
        train_file=train,
        validation_file=train,
        test_file=train,
        max_steps=1,
        eval_strategy="no",
        group_by_length=False,
        warmup_steps=0,
        scheduler="constant",
        lr=1e-2,
        max_grad_norm=0.0,
        weight_decay=0.0,
        **extra,
    )
    grads = {}
    for name, bs, accum in (("a", 4, 3), ("b", 10, 1)):
        tr = Trainer(_cfg(env, tmp_path / name, batch_size=bs, grad_accum=accum, **common))
        run = tr.setup()  # the set-up run; train() goes on from it
        step = run.optimizer.step

        def capture(*a, _tr=tr, _name=name, _step=step, **k):
            grads[_name] = {
                n: p.grad.clone() for n, p in _tr.raw_model.named_parameters() if p.grad is not None
            }
            return _step(*a, **k)

        run.optimizer.step = capture
        tr.train()
    a, b = grads["a"], grads["b"]
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-4, msg=k)
    assert max(float(g.abs().max()) for g in a.values()) > 1e-3  # non-trivial gradients
    la, lb = train_losses(str(tmp_path / "a")), train_losses(str(tmp_path / "b"))
    assert la[1] == pytest.approx(lb[1], rel=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_runs(env, tmp_path, precision):
    out = tmp_path / precision
    res = Trainer(_cfg(env, out, precision=precision, max_steps=3, save_steps=1, eval_strategy="no")).train()
    assert res["precision"] == precision and res["global_step"] == 3
    assert all(math.isfinite(v) for v in train_losses(str(out)).values())
    assert (out / "checkpoint-3" / "scaler.pt").exists() == (precision == "fp16")


def test_nonfinite_loss_skip_and_stop(env, tmp_path, monkeypatch):
    from fastft.train import step

    orig = step.compute_loss

    def nan_at_step_2(run, model, batch, n):
        loss = orig(run, model, batch, n)
        return loss * float("nan") if run.state.global_step == 1 else loss

    monkeypatch.setattr(step, "compute_loss", nan_at_step_2)
    out = tmp_path / "skip"
    tr = Trainer(_cfg(env, out, max_steps=3, save_steps=1, save_total_limit=0, eval_strategy="no"))
    res = tr.train()
    assert res["skipped_steps"] == 1 and res["global_step"] == 3
    a = load_state_dict_file(str(out / "checkpoint-1" / "model.safetensors"))
    b = load_state_dict_file(str(out / "checkpoint-2" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the NaN step changed nothing
    assert all(torch.isfinite(v).all() for v in b.values())
    with pytest.raises(TrainingError, match="NaN"):
        Trainer(_cfg(env, tmp_path / "stop", max_steps=3, on_nonfinite="stop", eval_strategy="no")).train()


def test_early_stopping_keeps_best_checkpoint(env, tmp_path):
    out = tmp_path / "es"
    # a learning rate so small that the metric cannot improve after the first evaluation
    res = Trainer(
        _cfg(
            env,
            out,
            lr=1e-12,
            max_steps=20,
            eval_strategy="steps",
            eval_steps=1,
            early_stopping_patience=2,
            save_total_limit=1,
            batch_size=4,
        )
    ).train()
    assert res["stopped_early"] and res["global_step"] == 3  # a tie is no improvement for patience
    evals = [r for r in read_jsonl(str(out / "metrics.jsonl")) if r["type"] == "eval"]
    # equal accuracy: the best is picked by eval loss, then the later step (diagnose.better)
    ranked = sorted(evals, key=lambda r: (-r["accuracy"], r["loss"], -r["step"]))
    assert res["best_step"] == ranked[0]["step"]
    kept = [s for s, _ in list_checkpoints(str(out))]
    assert res["best_step"] in kept and 3 in kept  # the limit never deletes the best one


def test_schedules():
    lin = _lr_lambda(total=10, warmup=4, kind="linear")
    assert [round(lin(s), 4) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]  # warmup never gives lr 0
    assert lin(4) == 1.0 and lin(7) == pytest.approx(0.5) and lin(10) == 0.0
    cos = _lr_lambda(total=10, warmup=0, kind="cosine")
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    const = _lr_lambda(total=10, warmup=2, kind="constant")
    assert const(1) == pytest.approx(2 / 3) and const(2) == const(9) == 1.0


def test_warmup_ratio_and_logged_lr(env, tmp_path):
    out = tmp_path / "lr"
    Trainer(_cfg(env, out, max_steps=6, warmup_ratio=0.5, lr=1e-3, eval_strategy="no")).train()
    lrs = [r["lr"] for r in read_jsonl(str(out / "metrics.jsonl")) if r["type"] == "train"]
    # lr after step s (scheduler already stepped): warmup 3 steps, then linear to 0
    expected = [1e-3 * _lr_lambda(6, 3, "linear")(s) for s in range(1, 7)]
    assert lrs == pytest.approx(expected)


def test_gradient_checkpointing_same_loss(env, tmp_path):
    a = Trainer(_cfg(env, tmp_path / "gc", max_steps=2, gradient_checkpointing=True, eval_strategy="no"))
    a.train()
    b = Trainer(_cfg(env, tmp_path / "nogc", max_steps=2, eval_strategy="no"))
    b.train()
    la, lb = train_losses(str(tmp_path / "gc")), train_losses(str(tmp_path / "nogc"))
    assert la == pytest.approx(lb, rel=1e-5)


def test_lora_outputs_adapter_and_merged_model(env, tmp_path, capsys):
    import transformers

    out = tmp_path / "lora"
    rc = main(
        [
            "train",
            "--model",
            env["bert"],
            *file_flags(env["files"]),
            "--output-dir",
            str(out),
            "--cache-dir",
            env["cache"],
            "--strategy",
            "lora",
            "--lora-r",
            "4",
            "--lora-alpha",
            "8",
            "--epochs",
            "2",
            "--lr",
            "1e-2",
            "--batch-size",
            "8",
        ]
    )
    assert rc == 0
    assert "LoRA r=4" in capsys.readouterr().out
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    cfg = json.load(open(out / "adapter" / "adapter_config.json"))
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8
    # the merged model is a plain HF model (no lora keys) and reproduces the run's test metrics
    merged = load_state_dict_file(str(out / "model.safetensors"))
    assert not [k for k in merged if "lora" in k]
    transformers.AutoModelForSequenceClassification.from_pretrained(out)
    res = json.load(open(out / "results.json"))
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--file", env["files"]["test"]]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["loss"] == pytest.approx(res["test"]["loss"], rel=1e-4)
    assert m["accuracy"] == pytest.approx(res["test"]["accuracy"])


def test_tensorboard_and_curve(env, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    Trainer(_cfg(env, out, max_steps=2, report_to="tensorboard")).train()
    tb = out / "tensorboard"
    assert tb.is_dir() and any(n.startswith("events.") for n in os.listdir(tb))
    png = (out / "training_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_unfused_path_matches_fused(env, tmp_path):
    """--no-fused (plain torch AdamW + HF modules, clipping in the trainer) trains the same as the default
    (fastft.patch + FusedAdamW, clipping inside the optimizer), up to float rounding."""
    kw = dict(max_steps=3, eval_strategy="no", max_grad_norm=0.01, lr=1e-2)
    fused = Trainer(_cfg(env, tmp_path / "f", **kw)).train()
    plain = Trainer(_cfg(env, tmp_path / "p", fused=False, deterministic=True, **kw)).train()
    assert plain["optimizer"] == "torch.optim.AdamW" and plain["fused_parts"] == []
    assert fused["optimizer"] == "fastft.FusedAdamW"
    assert not torch.are_deterministic_algorithms_enabled()  # --deterministic does not leak out of train()
    lf, lp = train_losses(str(tmp_path / "f")), train_losses(str(tmp_path / "p"))
    assert lf == pytest.approx(lp, rel=1e-4)
    gf = [r["grad_norm"] for r in read_jsonl(str(tmp_path / "f" / "metrics.jsonl")) if r["type"] == "train"]
    gp = [r["grad_norm"] for r in read_jsonl(str(tmp_path / "p" / "metrics.jsonl")) if r["type"] == "train"]
    assert gf == pytest.approx(gp, rel=1e-4) and min(gf) > 0.01  # pre-clip norms, so clipping was active


def test_llama_style_classification(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from tests.models import build, tiny_llama_config
    from tests.train.trainutil import _save_gpt2_tokenizer

    path = str(tmp_path / "llama")
    _save_gpt2_tokenizer(path)
    build("AutoModel", tiny_llama_config(pad_token_id=None, bos_token_id=0, eos_token_id=0)).save_pretrained(
        path
    )
    files = classification_files(str(tmp_path), 24, 8, 8)
    res = Trainer(
        TrainConfig(
            model=path,
            **{k + "_file": v for k, v in files.items()},
            output_dir=str(tmp_path / "o"),
            max_steps=3,
            batch_size=8,
            cache_dir=str(tmp_path / "cache"),
        )
    ).train()
    assert res["global_step"] == 3 and "accuracy" in res["test"]
    m = AutoModelForSequenceClassification.from_pretrained(tmp_path / "o")
    assert type(m).__name__ == "LlamaForSequenceClassification" and m.config.pad_token_id == 0
