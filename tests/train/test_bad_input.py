"""Bad input: exit code 2, ONE line on stderr naming the problem and the fix, no traceback, and no output dir
left behind (or an existing one left untouched)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from fastft.cli import main
from tests import child_env
from tests.train.trainutil import file_flags, save_tiny, workspace, write_csv


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return workspace(tmp_path_factory.mktemp("bad"), 24, 8, 8, model=dict(head="base"))


def run_bad(capsys, argv, out, *expect):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for e in expect:
        assert e in err, err
    if out is not None:
        assert not os.path.exists(out), f"{out} was left behind"
    return err


def base(env, out, *extra):
    return [
        "train",
        "--model",
        env["model"],
        *file_flags(env["files"]),
        "--output-dir",
        str(out),
        "--cache-dir",
        env["cache"],
        *extra,
    ]


CASES = {
    "lr zero": (["--lr", "0"], ["--lr", "> 0"]),
    "lr negative": (["--lr", "-0.0001"], ["--lr"]),
    "batch size": (["--batch-size", "0"], ["--batch-size"]),
    "lora r": (["--strategy", "lora", "--lora-r", "0"], ["--lora-r"]),
    "kd alpha high": (["--kd-alpha", "1.5"], ["--kd-alpha", "[0, 1]"]),
    "kd alpha low": (["--kd-alpha", "-0.1"], ["--kd-alpha"]),
    "kd temperature": (["--kd-temperature", "0"], ["--kd-temperature"]),
    "epochs": (["--epochs", "0"], ["--epochs"]),
    "split ratios": (["--split-ratios", "0.5", "0.2", "0.2"], ["--split-ratios"]),
    "freeze too many": (["--strategy", "freeze", "--freeze-layers", "9"], ["--freeze-layers"]),
    "missing teacher": (["--teacher", "/no/such/teacher"], ["--teacher"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_hyperparameters(env, tmp_path, capsys, case):
    extra, expect = CASES[case]
    out = tmp_path / "out"
    run_bad(capsys, base(env, out, *extra), out, *expect)


def test_missing_file(env, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "train",
        "--model",
        env["model"],
        "--train-file",
        str(tmp_path / "nope.csv"),
        "--output-dir",
        str(out),
    ]
    run_bad(capsys, argv, out, "nope.csv", "not found")
    argv[argv.index("--train-file") + 1] = str(tmp_path)  # a folder is not "not found"
    err = run_bad(capsys, argv, out, "is a directory; pass a file")
    assert "not found" not in err


def test_missing_column_lists_columns(env, tmp_path, capsys):
    out = tmp_path / "out"
    run_bad(
        capsys, base(env, out, "--text-column", "review"), out, "'review'", "text", "label", "--text-column"
    )
    run_bad(capsys, base(env, out, "--label-column", "stars"), out, "'stars'", "--label-column")


def test_unknown_model(env, tmp_path, capsys):
    out = tmp_path / "out"
    argv = base(env, out)
    argv[argv.index("--model") + 1] = "no-such-org/no-such-model-xyz"
    run_bad(capsys, argv, out, "no-such-model-xyz", "--model")
    argv[argv.index("--model") + 1] = str(tmp_path)  # a folder without config.json
    run_bad(capsys, argv, out, "config.json")


def test_labels_do_not_match_num_labels(env, tmp_path, capsys):
    out = tmp_path / "out"
    run_bad(capsys, base(env, out, "--num-labels", "3"), out, "3", "2")
    # a fine-tuned 5-label classifier on 2-label data
    clf = save_tiny(str(tmp_path / "clf5"), num_labels=5)
    argv = base(env, out)
    argv[argv.index("--model") + 1] = clf
    run_bad(capsys, argv, out, "5", "--num-labels")


def test_empty_after_cleaning(env, tmp_path, capsys):
    empty = write_csv(
        str(tmp_path / "empty.csv"), ["text", "label"], [["", "pos"], ["   ", "neg"], ["", "neg"]]
    )
    out = tmp_path / "out"
    argv = [
        "train",
        "--model",
        env["model"],
        "--train-file",
        empty,
        "--output-dir",
        str(out),
        "--cache-dir",
        env["cache"],
    ]
    run_bad(capsys, argv, out, "empty")


def _tree_digest(path) -> str:
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(p.encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def finished_run(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("done") / "run"
    assert main(base(env, out, "--max-steps", "2", "--save-steps", "1", "--eval-strategy", "no")) == 0
    return out


@pytest.mark.parametrize("damage", ["model", "optimizer", "state", "missing_rng"])
def test_corrupt_checkpoint(env, finished_run, tmp_path, capsys, damage):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    ck = out / "checkpoint-2"
    if damage == "model":
        data = (ck / "model.safetensors").read_bytes()
        (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "optimizer":
        (ck / "optimizer.pt").write_bytes(b"not a torch file")
    elif damage == "state":
        (ck / "trainer_state.json").write_text("{ broken")
    else:
        (ck / "rng.pt").unlink()
    before = _tree_digest(out)
    err = run_bad(
        capsys, base(env, out, "--max-steps", "3", "--resume", "latest"), None, "corrupt", "checkpoint-2"
    )
    assert "--resume" in err
    assert _tree_digest(out) == before  # nothing touched


def test_resume_without_checkpoint(env, tmp_path, capsys):
    out = tmp_path / "none"
    run_bad(capsys, base(env, out, "--resume", "latest"), out, "no checkpoint")


def test_existing_output_dir_of_another_run(env, finished_run, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = _tree_digest(out)
    run_bad(capsys, base(env, out, "--max-steps", "3"), None, "--overwrite")
    assert _tree_digest(out) == before
    # --overwrite replaces it
    assert main(base(env, out, "--max-steps", "1", "--eval-strategy", "no", "--overwrite")) == 0
    assert not (out / "checkpoint-2").exists()


def test_config_file_errors(env, tmp_path, capsys):
    out = tmp_path / "out"
    bad_key = tmp_path / "a.yaml"
    bad_key.write_text("learning_rat: 0.1\n")
    run_bad(capsys, ["train", "-c", str(bad_key), "--output-dir", str(out)], out, "learning_rat")
    bad_yaml = tmp_path / "b.yaml"
    bad_yaml.write_text("lr: [1, 2\n")
    run_bad(capsys, ["train", "-c", str(bad_yaml), "--output-dir", str(out)], out, "b.yaml")
    run_bad(capsys, ["train", "-c", str(tmp_path / "none.yaml")], None, "none.yaml")
    bad_type = tmp_path / "c.json"
    bad_type.write_text('{"batch_size": "many"}')
    run_bad(capsys, ["train", "-c", str(bad_type), "--output-dir", str(out)], out, "batch_size")


def test_bad_flag_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--lr", "abc"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--lr" in err


def test_eval_predict_bad_input(env, finished_run, tmp_path, capsys):
    run_bad(capsys, ["eval", "--model", str(finished_run), "--file", str(tmp_path / "x.csv")], None, "x.csv")
    run_bad(
        capsys,
        ["eval", "--model", str(tmp_path / "nomodel"), "--file", env["files"]["test"]],
        None,
        "nomodel",
    )
    run_bad(
        capsys,
        ["eval", "--model", str(finished_run), "--file", env["files"]["test"], "--label-column", "y"],
        None,
        "'y'",
    )
    unknown = write_csv(str(tmp_path / "u.csv"), ["text", "label"], [["good film", "meh"]])
    run_bad(capsys, ["eval", "--model", str(finished_run), "--file", unknown], None, "meh")


def test_data_input_errors_name_the_fix(env, finished_run, tmp_path, capsys):
    """Issue #21: each a one-line exit 2 that says what is wrong and what to do, no output dir."""
    out = tmp_path / "out"
    evaluate = ["eval", "--model", str(finished_run), "--file", "/dev/zero"]
    for argv in (base(env, out, "--train-file", "/dev/zero"), evaluate):
        err = run_bad(capsys, argv, out, "/dev/zero", "not a regular file")
        assert "does not exist" not in err
    afile = tmp_path / "afile"
    afile.write_text("x")
    err = run_bad(capsys, base(env, out, "--cache-dir", str(afile / "c")), out, "--cache-dir", "writable")
    assert "train.csv" not in err  # the data file is fine: the cache dir is not
    reg = write_csv(
        str(tmp_path / "r.csv"), ["text", "label"], [[f"good film {i}", i / 3] for i in range(20)]
    )
    with open(reg, "a") as fh:
        fh.write("bad film,inf\n")
    flags = ["--train-file", reg, "--validation-file", reg, "--test-file", reg]
    run_bad(capsys, base(env, out, *flags), out, "r.csv row 21", "'label'", "fix or remove the row")
    for template in ("a {} photo {", "a {x} photo of {}"):
        run_bad(capsys, base(env, out, "--task", "contrastive", "--prompt-template", template), out, "'{{'")


def test_real_cli_process_prints_one_line(env, tmp_path):
    """The installed entry point (python -m fastft): exit code 2, one stderr line, nothing else."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastft",
            "train",
            "--model",
            env["model"],
            "--train-file",
            str(tmp_path / "no.csv"),
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no.csv" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


def test_eval_predict_refuse_torchrun(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = str(tmp_path / "p.csv")
    err = run_bad(
        capsys, ["predict", "--model", env["model"], "--file", env["files"]["test"], "--output", out], out
    )
    assert "without torchrun" in err


@pytest.mark.parametrize(
    "device,expect",
    [("cuda", "no CUDA GPU is visible here; use --device cpu"), ("tpu", "not a device name; use cpu")],
)
def test_unavailable_device_is_one_line(env, tmp_path, capsys, monkeypatch, device, expect):
    """#21 §7: --device cuda without a GPU and --device tpu were tracebacks (train, eval, predict)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    out = tmp_path / "out"
    run_bad(capsys, base(env, out, "--device", device), out, f"--device {device}: {expect}")
    pred = tmp_path / "p.csv"
    for cmd in (["eval"], ["predict", "--output", str(pred)]):
        args = [*cmd, "--model", env["model"], "--file", env["files"]["test"], "--device", device]
        run_bad(capsys, args, pred, f"--device {device}: {expect}")
