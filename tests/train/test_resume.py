"""Checkpoints and resume: a run stopped mid-epoch and resumed gives exactly the losses and weights of a
run that was never stopped; SIGTERM saves a checkpoint and exits cleanly; checkpoint rotation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastft.cli import main
from fastft.train import TrainConfig, Trainer
from fastft.train.checkpoint import list_checkpoints, load_checkpoint, load_state_dict_file
from tests import child_env
from tests.train.trainutil import classification_files, file_flags, read_jsonl, save_tiny, train_losses


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    # dropout > 0 so that the RNG handling matters for exactness
    model = save_tiny(str(d / "m"), head="base", dropout=0.1)
    files = classification_files(str(d), n_train=26, n_val=8, n_test=8)
    return d, model, files


def _cfg(d, model, files, out, **kw):
    base = dict(
        model=model,
        train_file=files["train"],
        validation_file=files["validation"],
        test_file=files["test"],
        output_dir=str(out),
        epochs=2,
        batch_size=4,
        grad_accum=2,
        lr=5e-3,
        logging_steps=1,
        cache_dir=str(d / "cache"),
        save_total_limit=0,
        warmup_steps=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def _stop_at(trainer: Trainer, step: int):
    """Simulate a kill: request a stop (as SIGTERM does) once ``step`` optimizer steps are done."""
    from fastft.train.callbacks import Callback

    class StopAt(Callback):
        def on_step(self, done: int) -> None:
            if done == step:
                trainer.request_stop()

    trainer.callbacks.add(StopAt())
    return trainer


def test_resume_is_exact(setup, tmp_path):
    """Stopped in epoch 0, the resumed run crosses the partial accumulation window at the epoch end and the
    epoch-1 reshuffle, with dropout on."""
    d, model, files = setup
    stop_step = 3
    ref = Trainer(_cfg(d, model, files, tmp_path / "ref")).train()
    ref_losses = train_losses(str(tmp_path / "ref"))
    # 26 rows / batch 4 = 7 micro-batches (the last has 2 rows); accum 2 -> windows of 2,2,2,1 micro-batches
    assert sorted(ref_losses) == list(range(1, 9))

    out = tmp_path / "stopped"
    res = _stop_at(Trainer(_cfg(d, model, files, out)), stop_step).train()
    assert res["interrupted"] == "SIGTERM" and res["global_step"] == stop_step
    assert os.path.isdir(out / f"checkpoint-{stop_step}")
    st = load_checkpoint(str(out / f"checkpoint-{stop_step}"))["trainer_state"]
    assert st["global_step"] == stop_step
    # data position: (epoch, micro-batches consumed in it)
    assert (st["epoch"], st["batch_in_epoch"]) == (0, 6)

    res2 = Trainer(_cfg(d, model, files, out, resume="latest")).train()
    losses = train_losses(str(out))
    assert sorted(losses) == list(range(1, 9))
    for step in range(1, 9):
        assert losses[step] == ref_losses[step], (step, losses[step], ref_losses[step])
    # the same evaluations and the same final model
    ev = lambda p: [
        (r["step"], r["loss"]) for r in read_jsonl(str(p / "metrics.jsonl")) if r["type"] == "eval"
    ]
    assert ev(out) == ev(tmp_path / "ref")
    assert res2["test"]["loss"] == ref["test"]["loss"]
    a = load_state_dict_file(str(out / "model.safetensors"))
    b = load_state_dict_file(str(tmp_path / "ref" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_path_via_cli_and_rotation(setup, tmp_path, capsys):
    d, model, files = setup
    out = tmp_path / "rot"
    argv = [
        "train",
        "--model",
        model,
        *file_flags(files),
        "--output-dir",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--save-steps",
        "1",
        "--save-total-limit",
        "2",
        "--cache-dir",
        str(d / "cache"),
        "--eval-strategy",
        "no",
        "--max-steps",
        "5",
        "--logging-steps",
        "1",
    ]
    assert main(argv) == 0
    steps = [s for s, _ in list_checkpoints(str(out))]
    assert steps == [4, 5]  # only the newest 2 are kept
    assert not [n for n in os.listdir(out) if ".tmp-" in n]  # no half-written checkpoint
    ck = load_checkpoint(str(out / "checkpoint-5"))
    assert set(ck) >= {"model", "optimizer", "scheduler", "rng", "trainer_state"}
    assert ck["trainer_state"]["global_step"] == 5
    # a larger budget extends the run (HF Trainer's way): one warning line, the new length recorded
    capsys.readouterr()
    argv2 = [a if a != "5" else "7" for a in argv] + ["--resume", str(out / "checkpoint-4")]
    assert main(argv2) == 0
    warned = [ln for ln in capsys.readouterr().out.splitlines() if "new length" in ln]
    assert len(warned) == 1 and "--max-steps 5 -> 7" in warned[0] and "step 4 to step 7" in warned[0]
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["max_steps"] == 7 and saved["resume_length_changed"] == ["--max-steps 5 -> 7"]
    assert "resume_forced" not in saved
    losses = train_losses(str(out))
    assert sorted(losses) == list(range(1, 8))
    # another math field still needs --resume-force, and is recorded
    argv3 = [a if not a.endswith("checkpoint-4") else str(out / "checkpoint-6") for a in argv2]
    argv3 += ["--lr", "1e-3"]
    assert main(argv3) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and "-> 0.001" in err and "--resume-force" in err and err.count("\n") == 1
    assert main([*argv3, "--resume-force"]) == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert len(saved["resume_forced"]) == 1 and saved["resume_forced"][0].startswith("--lr ")
    # a length that ends at or before the checkpoint's step is refused, naming both
    capsys.readouterr()
    argv4 = [{"7": "3", str(out / "checkpoint-6"): "latest"}.get(a, a) for a in argv3]
    assert main(argv4) == 2
    err = capsys.readouterr().err
    assert "at step 7" in err and "ends at step 3" in err and err.count("\n") == 1


def test_extended_resume_takes_the_new_plans_lr_at_once(setup, tmp_path):
    """The checkpoint's optimizer holds the old plan's lr for its next step; the extended run's first
    step after the resume already uses the new plan's."""
    from fastft.train.schedule import lr_lambda

    d, model, files = setup
    out = tmp_path / "ext"
    cfg = dict(max_steps=4, save_steps=2, eval_strategy="no", warmup_steps=0, lr=1e-2)
    Trainer(_cfg(d, model, files, out, **cfg)).train()
    t = Trainer(_cfg(d, model, files, out, **{**cfg, "max_steps": 10}, resume=str(out / "checkpoint-2")))
    run = t.setup()
    try:
        want = 1e-2 * lr_lambda(10, 0, "linear")(2)
        assert max(g["lr"] for g in run.optimizer.param_groups) == pytest.approx(want, rel=1e-12)
        assert run.scheduler.get_last_lr()[0] == pytest.approx(want, rel=1e-12)
        assert want != pytest.approx(1e-2 * lr_lambda(4, 0, "linear")(2))
    finally:
        t.close()


def test_sigterm_saves_checkpoint_and_exits_cleanly(setup, tmp_path):
    d, model, files = setup
    out = tmp_path / "sig"
    cmd = [
        sys.executable,
        "-m",
        "fastft",
        "train",
        "--model",
        model,
        *file_flags(files),
        "--output-dir",
        str(out),
        "--max-steps",
        "100000",
        "--batch-size",
        "4",
        "--cache-dir",
        str(d / "cache"),
        "--eval-strategy",
        "no",
        "--logging-steps",
        "1",
    ]
    env = child_env()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = out / "metrics.jsonl"
    t0 = time.time()
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        if proc.poll() is not None or time.time() - t0 > 120:
            proc.kill()
            pytest.fail(f"training did not start: {proc.communicate()}")
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert "--resume latest" in stdout + stderr
    ckpts = list_checkpoints(str(out))
    assert len(ckpts) == 1
    state = json.loads((out / f"checkpoint-{ckpts[0][0]}" / "trainer_state.json").read_text())
    assert state["global_step"] == ckpts[0][0] >= 2
    assert not (out / "results.json").exists()


def test_resume_refuses_a_data_file_changed_under_its_name(setup, tmp_path, capsys):
    """Same path, other content (a label flipped, a row added): refused like a changed math flag,
    naming the file; --resume-force continues and records it."""
    d, model, _ = setup
    files = classification_files(str(tmp_path), n_train=26, n_val=8, n_test=8)  # own copies: edited
    out = tmp_path / "run"
    argv = ["train", "--model", model, *file_flags(files), "--output-dir", str(out), "--batch-size", "4"]
    argv += ["--max-steps", "2", "--save-steps", "1", "--save-total-limit", "1", "--eval-strategy", "no"]
    argv += ["--cache-dir", str(d / "cache")]
    assert main(argv) == 0
    recorded = load_checkpoint(list_checkpoints(str(out))[-1][1])["trainer_state"]["data_files"]
    assert set(recorded) == {"train_file", "validation_file"}  # the test file does not change training
    resume = [a if a != "2" else "3" for a in argv] + ["--resume", "latest"]
    train = files["train"]
    with open(train, newline="") as fh:
        original = fh.read()
    flipped = original.replace(",pos\r\n", ",neg\r\n", 1)
    assert flipped != original and len(flipped) == len(original)
    n = len(original)
    for content, size in (
        (flipped, f"size {n} -> {n} "),
        (flipped + "an added row,pos\r\n", f"size {n} -> "),
    ):
        with open(train, "w", newline="") as fh:
            fh.write(content)
        capsys.readouterr()
        assert main(resume) == 2
        err = capsys.readouterr().err
        assert f"--train-file {train}: content changed ({size}" in err and "sha256" in err, err
        assert "--resume-force" in err and err.count("\n") == 1 and "validation" not in err
    assert main([*resume, "--resume-force"]) == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert [f.split(":")[0] for f in saved["resume_forced"]] == [f"--train-file {train}"]
    capsys.readouterr()  # the forced run's checkpoint records the new content: no refusal now
    assert main([a if a != "3" else "4" for a in resume]) == 0
    assert "content changed" not in capsys.readouterr().out
