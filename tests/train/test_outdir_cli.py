"""The output dir through ``fastft train|eval|predict``: one run per folder (lock), ``--overwrite`` deletes
only fastft's files, a same-config re-run keeps the old checkpoints until it has its own, ``--resume``
refuses a changed config, a full / read-only disk is one line, ``--max-length`` is capped and recorded,
``predict/eval --output`` are written atomically, and a second SIGTERM exits 143."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fastft.cli import main
from fastft.train import step
from fastft.train.checkpoint import list_checkpoints, load_checkpoint
from fastft.train.trainer import Trainer
from tests import child_env
from tests.train.trainutil import file_flags, read_jsonl, workspace, write_csv


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return workspace(tmp_path_factory.mktemp("outcli"), 24, 8, 8, model=dict(head="base"))


def argv(env, out, *extra):
    return [
        "train",
        "--model",
        env["model"],
        *file_flags(env["files"]),
        "--output-dir",
        str(out),
        "--cache-dir",
        env["cache"],
        "--batch-size",
        "4",
        "--max-steps",
        "4",
        "--save-steps",
        "2",
        "--eval-strategy",
        "no",
        "--logging-steps",
        "1",
        *extra,
    ]


def one_line_error(capsys, args, *expect) -> str:
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for e in expect:
        assert e in err, err
    return err


@pytest.fixture(scope="module")
def finished(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("fin") / "run"
    assert main(argv(env, out)) == 0
    return out


def _env():
    return child_env()


# ------------------------------------------------------------------------------------------ lock


def test_second_run_into_a_locked_dir_exits_2_naming_the_pid(env, tmp_path, capsys):
    out = tmp_path / "run"
    code = "import sys, time\nfrom fastft.train.outdir import acquire\nl = acquire(sys.argv[1])\n"
    code += "print('locked', flush=True)\ntime.sleep(120)\n"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_line_error(capsys, argv(env, out), f"pid {holder.pid}", "--output-dir")
        assert sorted(os.listdir(out)) == [".fastft.lock"]  # the holder's folder was not touched
    finally:
        holder.kill()
        holder.wait()
    assert main(argv(env, out)) == 0  # the kernel dropped the dead holder's lock
    assert not (out / ".fastft.lock").exists()
    steps = [r["step"] for r in read_jsonl(str(out / "metrics.jsonl")) if r["type"] == "train"]
    assert steps == [1, 2, 3, 4]  # one run's lines, in order


# ------------------------------------------------------------------------------------------ deleting


def test_overwrite_refuses_a_folder_with_user_files(env, tmp_path, capsys):
    out = tmp_path / "thesis"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "sub" / "thesis.tex").write_text("mine too")
    one_line_error(capsys, argv(env, out, "--overwrite"), "notes.txt", "sub/")
    assert sorted(os.listdir(out)) == ["notes.txt", "sub"] and (out / "sub" / "thesis.tex").exists()


def test_overwrite_clears_only_fastft_files(env, finished, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    assert main(argv(env, out, "--overwrite", "--max-steps", "2")) == 0
    assert [s for s, _ in list_checkpoints(str(out))] == [2]  # the old run's checkpoint-4 went
    (out / "notes.txt").write_text("mine")  # a user file in a fastft run: --overwrite refuses
    one_line_error(capsys, argv(env, out, "--overwrite"), "notes.txt")
    assert (out / "notes.txt").exists() and (out / "results.json").exists()


def test_same_config_rerun_warns_once_and_keeps_checkpoints_until_its_first(
    env, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert main(argv(env, out)) == 0
    assert [s for s, _ in list_checkpoints(str(out))] == [2, 4]

    def boom(run, window):  # the re-run dies before its first checkpoint (a Ctrl-C, a crash)
        raise RuntimeError("killed")

    monkeypatch.setattr(step, "train_step", boom)
    capsys.readouterr()
    with pytest.raises(RuntimeError, match="killed"):
        main(argv(env, out))
    err = capsys.readouterr().err.strip().splitlines()
    warn = [line for line in err if "same config" in line]
    assert len(warn) == 1 and "step 0" in warn[0] and "--resume latest" in warn[0], err
    monkeypatch.undo()
    # the old checkpoints come back when the next run starts, so --resume latest still finds them
    capsys.readouterr()
    assert main(argv(env, out, "--resume", "latest")) == 0
    assert "checkpoint-4" in capsys.readouterr().out
    assert [s for s, _ in list_checkpoints(str(out))] == [2, 4]
    # a re-run that gets to its own checkpoint replaces the old ones and leaves no deferral behind
    assert main(argv(env, out)) == 0
    assert not (out / ".fastft-previous").exists()
    st = load_checkpoint(str(out / "checkpoint-4"))["trainer_state"]
    assert st["global_step"] == 4


# ------------------------------------------------------------------------------------------ resume


def test_resume_refuses_a_changed_lr_and_force_records_it(env, finished, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    resume = ["--resume", str(out / "checkpoint-2")]
    err = one_line_error(capsys, argv(env, out, *resume, "--lr", "0.003", "--weight-decay", "0.1"))
    assert "--lr 0.0001 -> 0.003" in err and "--weight-decay 0.01 -> 0.1" in err and "--resume-force" in err
    # output / logging fields do not count
    assert main(argv(env, out, *resume, "--logging-steps", "2", "--save-total-limit", "3")) == 0
    assert main(argv(env, out, *resume, "--lr", "0.003", "--resume-force")) == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["lr"] == 0.003 and saved["resume_forced"] == ["--lr 0.0001 -> 0.003"]


def test_checkpoint_of_another_config_says_what_differs(env, finished, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    err = one_line_error(capsys, argv(env, out, "--resume", "latest", "--strategy", "lora"), "--strategy")
    assert "corrupt" not in err and "delete" not in err
    three = write_csv(
        str(tmp_path / "three.csv"),
        ["text", "label"],
        [[f"good movie {i}", ["pos", "neg", "neu"][i % 3]] for i in range(24)],
    )
    args = argv(env, out, "--resume", "latest", "--resume-force")
    args[args.index("--train-file") + 1] = three
    err = one_line_error(capsys, args, "classifier.weight is [2, 32] in the checkpoint, [3, 32] here")
    assert "corrupt" not in err and "delete" not in err
    err = one_line_error(capsys, argv(env, out, "--resume", "latest", "--strategy", "lora", "--resume-force"))
    assert "lora" in err and "corrupt" not in err and "delete" not in err
    assert [s for s, _ in list_checkpoints(str(out))] == [2, 4]  # nothing was touched


def test_overwrite_refuses_user_files_inside_a_checkpoint(env, finished, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "checkpoint-2" / "notes.txt").write_text("mine")  # #21 §7: --overwrite deleted it
    before = sorted(os.listdir(out))
    one_line_error(capsys, argv(env, out, "--overwrite"), "checkpoint-2/notes.txt", "--output-dir")
    assert sorted(os.listdir(out)) == before and (out / "checkpoint-2" / "notes.txt").read_text() == "mine"


def test_every_file_of_a_run_has_the_umask_mode(finished):
    """#21 §7: model.safetensors (final and in checkpoints) was 0600 while the rest was 0644."""
    mask = os.umask(0o022)
    os.umask(mask)
    modes = {
        os.path.relpath(os.path.join(d, f), finished): os.stat(os.path.join(d, f)).st_mode & 0o777
        for d, _, fs in os.walk(finished)
        for f in fs
    }
    assert "model.safetensors" in modes and "checkpoint-4/model.safetensors" in modes
    assert {p: m for p, m in modes.items() if m != 0o666 & ~mask} == {}


# ------------------------------------------------------------------------------------------ storage


@contextlib.contextmanager
def _tmpfs(path, opts):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()[:80]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _du(path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(env, finished, tmp_path, capsys):
    size = _du(finished / "checkpoint-2")
    with _tmpfs(tmp_path / "mnt", f"size={int(size * 1.6) // 1024}k") as mnt:
        out = mnt / "run"
        err = one_line_error(
            capsys, argv(env, out, "--save-steps", "1"), f"no space left on {out}", "MB needed"
        )
        steps = [s for s, _ in list_checkpoints(str(out))]
        assert (
            steps and load_checkpoint(str(out / f"checkpoint-{steps[-1]}"))["state"].global_step == steps[-1]
        )
        assert not [n for n in os.listdir(out) if ".tmp-" in n], err


def test_full_disk_at_start_is_one_line_and_leaves_nothing(env, tmp_path, capsys):
    with _tmpfs(tmp_path / "full", "size=4k") as mnt:
        (mnt / "fill").write_bytes(b"\0" * 4096)  # #21 §7: a traceback and an empty dir with a 0-byte lock
        one_line_error(capsys, argv(env, mnt / "run"), f"no space left on {mnt / 'run'}", "--output-dir")
        assert os.listdir(mnt) == ["fill"]


def test_read_only_output_dir_is_one_line(env, tmp_path, capsys):
    with _tmpfs(tmp_path / "ro", "size=64k,ro") as mnt:
        one_line_error(capsys, argv(env, mnt / "run"), f"{mnt / 'run'} is read-only")
    with _tmpfs(tmp_path / "ro2", "size=64k") as mnt:  # an existing folder remounted read-only
        (mnt / "run").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        one_line_error(capsys, argv(env, mnt / "run"), f"{mnt / 'run'} is read-only")


# ------------------------------------------------------------------------------------------ max length


def test_max_length_above_the_model_is_capped_and_recorded(env, tmp_path, capsys):
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(argv(env, out, "--pad-to-max-length", "--max-length", "100000", "--max-steps", "1")) == 0
    assert "using 64" in capsys.readouterr().out
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["max_length"] == 64 and saved["pad_to_max_length"] is True


# ------------------------------------------------------------------------------------------ eval / predict


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_output_that_is_a_directory(env, finished, tmp_path, capsys, command):
    target = tmp_path / "existing"
    target.mkdir()
    args = [command, "--model", str(finished), "--file", env["files"]["test"], "--output", str(target)]
    one_line_error(capsys, args + (["--overwrite"] if command == "predict" else []), "is a directory")
    assert os.listdir(target) == [] and sorted(os.listdir(tmp_path)) == ["existing"]  # no .tmp anywhere
    ok = tmp_path / "out.json"
    assert main([*args[:-1], str(ok)]) == 0 and ok.exists()
    assert sorted(os.listdir(tmp_path)) == ["existing", "out.json"]


# ------------------------------------------------------------------------------------------ signals


def test_double_sigterm_exits_143(env, tmp_path, capsys, monkeypatch):
    """The first SIGTERM asks for a checkpoint; the second stops at once and the CLI exits 128 + 15."""
    from fastft.train.signals import StopNow, stop_on_signals

    tr = Trainer(model=env["model"], train_file=env["files"]["train"], output_dir=str(tmp_path / "x"))

    def mine(signum, frame):
        pass

    prev = signal.signal(signal.SIGTERM, mine)
    try:
        with stop_on_signals(tr.stop):  # what train() installs around the loop
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert tr.stop.signum == signal.SIGTERM
            with pytest.raises(StopNow) as e:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1.0)
            assert e.value.signum == signal.SIGTERM
    finally:
        restored = signal.signal(signal.SIGTERM, prev)
    assert restored is mine  # the trainer put the previous handler back

    def stopped(self):
        raise StopNow(signal.SIGTERM)

    monkeypatch.setattr(Trainer, "train", stopped)
    capsys.readouterr()
    assert main(argv(env, tmp_path / "run")) == 143
    assert capsys.readouterr().err.strip() == "fastft train: interrupted"
    monkeypatch.setattr(Trainer, "train", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(argv(env, tmp_path / "run")) == 130  # Ctrl-C without the trainer's handler


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_read_only_output_names_the_output_flag(env, finished, tmp_path, capsys, monkeypatch, command):
    """#21 §7: predict/eval --output on a read-only folder told the user to change --output-dir."""
    import errno
    import tempfile

    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):  # EROFS for the target folder only (root ignores chmod)
        if str(dir) == str(tmp_path / "ro"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    target = tmp_path / "ro" / "out.json"
    args = [command, "--model", str(finished), "--file", env["files"]["test"], "--output", str(target)]
    err = one_line_error(capsys, args, f"{tmp_path / 'ro'} is read-only; pass a writable --output")
    assert "--output-dir" not in err and os.listdir(tmp_path / "ro") == []
