"""fastft.train.outdir: run lock across processes, manifest-guarded --overwrite, deferred checkpoints,
storage errors (real read-only / full tmpfs when we may mount, faked errnos otherwise), atomic writes."""

import contextlib
import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastft.train import checkpoint as ckpt
from fastft.train import outdir as od
from fastft.train import runfiles as runf
from fastft.train import storage as stg
from fastft.train.errors import ConfigError
from fastft.train.state import TrainState
from tests import child_env


# ------------------------------------------------------------------------------------------ helpers
def _holder(out):
    """A child process that holds the run lock on ``out`` until its stdin closes."""
    code = textwrap.dedent(
        f"""
        import sys
        from fastft.train import outdir
        lock = outdir.acquire({str(out)!r}, argv=["fastft", "train"])
        print("locked", flush=True)
        sys.stdin.read()
        """
    )
    env = child_env()
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@contextlib.contextmanager
def _tmpfs(path, opts):
    """Mount a tmpfs at ``path`` (skip when not permitted, e.g. not root or in an unprivileged container)."""
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()[:80]}")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# ------------------------------------------------------------------------------------------ lock
def test_lock_held_by_another_process_names_it(tmp_path):
    out = tmp_path / "run"
    p = _holder(out)
    try:
        info = json.loads((out / runf.LOCK_FILE).read_text())
        assert info["pid"] == p.pid and info["argv"] == ["fastft", "train"] and info["host"]
        with pytest.raises(ConfigError) as e:
            od.acquire(out)
        msg = str(e.value)
        assert "\n" not in msg and f"fastft pid {p.pid}" in msg and info["started"] in msg
        assert msg.startswith(f"{out} is in use") and "--output-dir" in msg
    finally:
        p.stdin.close()
        p.wait()
    # the holder exited without releasing (no unlock, file left behind): the stale lock is taken over
    assert (out / runf.LOCK_FILE).exists()
    with od.acquire(out) as lock:
        assert json.loads((out / runf.LOCK_FILE).read_text())["pid"] == os.getpid()
        assert lock.held and lock.created == []
    assert not (out / runf.LOCK_FILE).exists()


def test_lock_killed_holder_is_taken_over(tmp_path):
    p = _holder(tmp_path)
    p.kill()
    p.wait()
    lock = od.acquire(tmp_path)
    lock.release()


def test_lock_is_exclusive_within_a_process_and_reusable(tmp_path):
    a = od.acquire(tmp_path)
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        od.acquire(tmp_path)
    a.release()
    a.release()  # idempotent
    b = od.acquire(tmp_path)
    b.release()


def test_acquire_creates_the_dir_and_abort_removes_only_that(tmp_path):
    out = tmp_path / "a" / "b"
    lock = od.acquire(out)
    assert out.is_dir() and lock.created == [str(out), str(tmp_path / "a")]
    (out / "train_config.json").write_text("{}")
    runf.record(out, "train_config.json")
    lock.abort()
    assert not (tmp_path / "a").exists()
    # a folder that existed keeps everything but the lock file
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    lock = od.acquire(tmp_path / "keep")
    lock.abort()
    assert os.listdir(tmp_path / "keep") == ["notes.txt"]
    # a created folder a user wrote into meanwhile is kept too
    lock = od.acquire(tmp_path / "c")
    (tmp_path / "c" / "notes.txt").write_text("mine")
    lock.abort()
    assert os.listdir(tmp_path / "c") == ["notes.txt"]


def test_release_removes_a_created_empty_dir(tmp_path):
    with od.acquire(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()


def test_acquire_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """#21 §7: ENOSPC writing the lock info was a traceback, and left the folder with a 0-byte lock."""

    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(od.os, "pwrite", enospc)
    with pytest.raises(ConfigError, match=rf"^no space left on {tmp_path / 'a' / 'b'} \(.*MB free\); free"):
        od.acquire(tmp_path / "a" / "b")
    assert os.listdir(tmp_path) == []
    (tmp_path / "old").mkdir()  # a folder that existed stays, without a lock file
    with pytest.raises(ConfigError, match="no space left"):
        od.acquire(tmp_path / "old")
    assert os.listdir(tmp_path / "old") == []
    monkeypatch.undo()
    real = os.mkdir

    def mkdir_then_full(p, *a, **k):  # the disk fills up half-way down the path
        if os.path.basename(p) == "d":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(p, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir_then_full)
    with pytest.raises(ConfigError, match="no space left"):
        od.acquire(tmp_path / "c" / "d")
    assert sorted(os.listdir(tmp_path)) == ["old"]


def test_acquire_on_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        od.acquire(tmp_path / "f")


# ------------------------------------------------------------------------------------------ pids / tmp
def test_pid_alive_and_stray_tmp():
    assert runf.pid_alive(os.getpid())
    dead = _dead_pid()
    assert not runf.pid_alive(dead) and not runf.pid_alive(0) and not runf.pid_alive(-3)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    with contextlib.suppress(Exception):
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert not runf.pid_alive(zombie.pid)
    zombie.wait()
    assert runf.is_stray_tmp(f".checkpoint-5.tmp-{dead}")
    assert not runf.is_stray_tmp(f".checkpoint-5.tmp-{os.getpid()}")
    assert not runf.is_stray_tmp(".checkpoint-5.tmp-1")  # init is alive
    assert not runf.is_stray_tmp("checkpoint-5")


def test_rotate_keeps_a_live_runs_tmp_folder(tmp_path):
    """Before the fix rotation deleted any ``.tmp-`` folder, also one another live run was writing."""
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        dead = _dead_pid()
        for name in (f".checkpoint-9.tmp-{live.pid}", f".checkpoint-8.tmp-{dead}", "checkpoint-1"):
            (tmp_path / name).mkdir()
        ckpt.rotate_checkpoints(str(tmp_path), limit=3)
        assert sorted(os.listdir(tmp_path)) == [f".checkpoint-9.tmp-{live.pid}", "checkpoint-1"]
    finally:
        live.stdin.close()
        live.wait()


# ------------------------------------------------------------------------------------------ manifest
def _fake_run(out, names=("train_config.json", "results.json", "metrics.jsonl")):
    out.mkdir(exist_ok=True)
    for n in names:
        (out / n).write_text("{}")
    (out / "checkpoint-10").mkdir()
    (out / "checkpoint-10" / "model.safetensors").write_text("w")


def test_record_track_and_clear(tmp_path):
    out = tmp_path
    with od.acquire(out):
        assert not runf.is_fastft_run(out)
        runf.record(out, "train_config.json", "adapter/adapter_config.json")
        assert runf.manifest(out) == {"train_config.json", "adapter"}
        assert runf.is_fastft_run(out)
        with runf.track(out):
            (out / "model.safetensors").write_text("m")
            (out / "vocab.txt").write_text("v")
        assert runf.manifest(out) == {"train_config.json", "adapter", "model.safetensors", "vocab.txt"}
        with pytest.raises(RuntimeError), runf.track(out):  # a save that fails half-way is still recorded
            (out / "tokenizer.json").write_text("t")
            raise RuntimeError
        assert "tokenizer.json" in runf.manifest(out)
        (out / "train_config.json").write_text("{}")
        (out / "adapter").mkdir()
        (out / "checkpoint-3").mkdir()
        deleted = runf.clear_run(out)
        assert deleted[-1] == runf.MANIFEST_FILE
        assert os.listdir(out) == [runf.LOCK_FILE]  # the held lock is never deleted
        with pytest.raises(ValueError):
            runf.record(out, "../x")


def test_overwrite_refuses_foreign_files(tmp_path):
    """--overwrite on a folder with user files must delete nothing (red-team: notes.txt, sub/thesis.tex)."""
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError) as e:
        runf.clear_run(tmp_path)
    assert str(e.value) == (
        "--overwrite would delete files fastft did not write (notes.txt, sub/); "
        "empty the folder or pick another --output-dir"
    )
    _fake_run(tmp_path)  # a legacy fastft run with a user file in it: still refused, nothing deleted
    runf.record(tmp_path, "results.json")
    assert runf.manifest(tmp_path) == {"checkpoint-10", "metrics.jsonl", "results.json", "train_config.json"}
    with pytest.raises(ConfigError, match=r"\(notes.txt, sub/\)"):
        runf.clear_run(tmp_path)
    assert (tmp_path / "sub" / "thesis.tex").exists() and (tmp_path / "results.json").exists()


def test_overwrite_refuses_user_files_inside_checkpoints(tmp_path):
    """#21 §7: a user file inside checkpoint-N/ went with the folder; now clear_run refuses, deleting nothing."""
    _fake_run(tmp_path)
    runf.record(tmp_path, "results.json")
    (tmp_path / "checkpoint-10" / "notes.txt").write_text("mine")
    (tmp_path / "checkpoint-10" / "plots").mkdir()
    for dry in (True, False):
        with pytest.raises(ConfigError, match=r"\(checkpoint-10/notes.txt, checkpoint-10/plots/\); empty"):
            runf.clear_run(tmp_path, dry_run=dry)
    assert (tmp_path / "checkpoint-10" / "notes.txt").exists() and (tmp_path / "results.json").exists()
    (tmp_path / "checkpoint-10" / "plots").rmdir()
    runf.defer_old_checkpoints(tmp_path, warn=lambda s: None)  # a deferred checkpoint is guarded too
    with pytest.raises(ConfigError, match=r"\(\.fastft-previous/checkpoint-10/notes.txt\)"):
        runf.clear_run(tmp_path)
    os.remove(tmp_path / runf.PREVIOUS_DIR / "checkpoint-10" / "notes.txt")
    runf.recover_deferred(tmp_path)
    # every file save_checkpoint writes (scaler included) is fastft's
    st = TrainState(global_step=3)
    sd = {"w": torch.zeros(2)}
    ckpt.save_checkpoint(
        str(tmp_path), 3, model_state=sd, optimizer_state={}, scheduler_state={}, scaler_state={}, state=st
    )
    assert set(os.listdir(tmp_path / "checkpoint-3")) <= runf.CHECKPOINT_FILES
    runf.clear_run(tmp_path)
    assert os.listdir(tmp_path) == []


def test_many_foreign_files_are_summarised(tmp_path):
    for i in range(8):
        (tmp_path / f"f{i}").write_text("x")
    with pytest.raises(ConfigError, match=r"f4 and 3 more\)"):
        runf.clear_run(tmp_path)


def test_legacy_run_without_manifest(tmp_path):
    out = tmp_path / "old"
    _fake_run(out, ("train_config.json", "results.json", "config.json", "model.safetensors", "vocab.txt"))
    (out / "model-00001-of-00002.safetensors").write_text("x")
    (out / f".checkpoint-20.tmp-{_dead_pid()}").mkdir()
    assert runf.is_fastft_run(out)
    runf.clear_run(out)
    assert os.listdir(out) == []
    assert runf.clear_run(out) == [] and runf.clear_run(tmp_path / "missing") == []
    # train_config.json alone (no results, no checkpoint) is not a run
    (out / "train_config.json").write_text("{}")
    assert not runf.is_fastft_run(out)


def test_clear_keeps_a_live_tmp(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        _fake_run(tmp_path)
        (tmp_path / f".checkpoint-20.tmp-{live.pid}").mkdir()
        runf.clear_run(tmp_path)
        assert os.listdir(tmp_path) == [f".checkpoint-20.tmp-{live.pid}"]
    finally:
        live.stdin.close()
        live.wait()


# ------------------------------------------------------------------------------------------ re-run
def test_rerun_keeps_old_checkpoints_until_the_first_new_one(tmp_path, capsys):
    out = tmp_path
    _fake_run(out)
    (out / "checkpoint-20").mkdir()
    runf.record(out, "train_config.json", "results.json", "metrics.jsonl")
    prev = runf.defer_old_checkpoints(out)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "same config: starting again at step 0" in err and "2 checkpoint" in err
    runf.clear_run(out, keep=(runf.PREVIOUS_DIR,))
    assert sorted(os.listdir(out / runf.PREVIOUS_DIR)) == ["checkpoint-10", "checkpoint-20"]
    assert ckpt.list_checkpoints(str(out)) == []  # the new run does not see (or rotate) the old ones
    # the new run dies before its first checkpoint: the next start gets the old ones back
    assert runf.recover_deferred(out) == ["checkpoint-10", "checkpoint-20"]
    assert (out / "checkpoint-10" / "model.safetensors").exists() and not (out / runf.PREVIOUS_DIR).exists()
    # this time the new run saves: the old ones go
    prev = runf.defer_old_checkpoints(out, warn=lambda s: None)
    (out / "checkpoint-5").mkdir()
    prev.discard()
    assert sorted(os.listdir(out)) == [runf.MANIFEST_FILE, "checkpoint-5"]
    # deferring again while an older deferral is pending settles that one first
    (out / "checkpoint-7").mkdir()
    runf.defer_old_checkpoints(out, warn=lambda s: None)
    (out / "checkpoint-7").mkdir()
    runf.defer_old_checkpoints(out, warn=lambda s: None)
    assert os.listdir(out / runf.PREVIOUS_DIR) == ["checkpoint-7"]
    assert runf.recover_deferred(out) == ["checkpoint-7"]
    os.rename(out / "checkpoint-7", out / "checkpoint-5")
    # a run killed between its first save and discard(): recover drops the obsolete ones
    (out / runf.PREVIOUS_DIR / "checkpoint-1").mkdir(parents=True)
    assert runf.recover_deferred(out) == [] and not (out / runf.PREVIOUS_DIR).exists()


# ------------------------------------------------------------------------------------------ storage
@pytest.mark.parametrize(
    "exc,expect",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on D: 120 MB needed"),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), "no space"),
        (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), "no space"),
        (Exception("Error while serializing: I/O error: No space left on device (os error 28)"), "no space"),
        (OSError(errno.EROFS, "Read-only file system"), "D is read-only; pass a writable --output-dir"),
        (
            RuntimeError(
                "[enforce fail at inline_container.cc:747] . open file failed with strerror: "
                "Read-only file system"
            ),
            "D is read-only",
        ),
        (OSError(errno.EACCES, "Permission denied"), "D is not writable (permission denied)"),
    ],
)
def test_storage_error_lines(tmp_path, exc, expect):
    d = str(tmp_path)
    err = stg.storage_error(exc, d, needed_bytes=120_000_000)
    assert isinstance(err, ConfigError) and "\n" not in str(err)
    assert expect.replace("D", d) in str(err)


def test_storage_error_follows_the_cause_and_ignores_others(tmp_path):
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError as inner:
            raise RuntimeError("save failed") from inner
    except RuntimeError as e:
        assert "no space left" in str(stg.storage_error(e, tmp_path))
    assert stg.storage_error(ValueError("bad"), tmp_path) is None
    assert stg.storage_error(OSError(errno.ENOENT, "x"), tmp_path) is None


def test_full_tmpfs_checkpoint_and_atomic_write(tmp_path):
    with _tmpfs(tmp_path / "mnt", "size=256k") as d:
        sd = {"w": torch.zeros(200_000)}  # 800 kB > 256 kB
        with pytest.raises(Exception) as e:
            ckpt.save_checkpoint(
                d,
                1,
                model_state=sd,
                optimizer_state={},
                scheduler_state={},
                scaler_state=None,
                state=TrainState(global_step=1),
            )
        assert os.listdir(d) == []  # the temp folder went away
        line = str(stg.storage_error(e.value, d, stg.payload_bytes(sd)))
        assert line.startswith(f"no space left on {d}: 0.8 MB needed, 0.") and "MB free" in line
        with pytest.raises(RuntimeError) as e:  # torch's own error (inline_container.cc) for a full disk
            torch.save(sd, os.path.join(d, "optimizer.pt"))
        os.remove(os.path.join(d, "optimizer.pt"))
        assert str(stg.storage_error(e.value, d, stg.payload_bytes(sd))).startswith(
            f"no space left on {d}: 0.8 MB"
        )
        with pytest.raises(ConfigError, match="no space left"):
            stg.check_writable(d, needed_bytes=10**9)
        with pytest.raises(ConfigError, match="no space left"):
            stg.atomic_write(os.path.join(d, "p.csv"), "x" * 400_000, overwrite=False)
        assert os.listdir(d) == []


def test_read_only_mount(tmp_path):
    with _tmpfs(tmp_path / "ro", "size=64k,ro") as d:
        with pytest.raises(ConfigError, match=rf"^{d} is read-only; pass a writable --output-dir$"):
            stg.check_writable(d)
        with pytest.raises(ConfigError, match="is read-only"):
            stg.check_writable(os.path.join(d, "not", "yet"))
        with pytest.raises(ConfigError, match="is read-only"):
            od.acquire(os.path.join(d, "run"))
        with pytest.raises(RuntimeError) as e:  # torch's own wording for the same thing
            torch.save({"a": torch.zeros(3)}, os.path.join(d, "x.pt"))
        assert "is read-only" in str(stg.storage_error(e.value, d))


def test_read_only_faked(tmp_path, monkeypatch):
    """Same as above without mount rights: the OS call raises EROFS (root ignores chmod)."""

    def erofs(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(stg.tempfile, "mkstemp", erofs)
    with pytest.raises(ConfigError, match=rf"^{tmp_path} is read-only"):
        stg.check_writable(tmp_path)
    with pytest.raises(ConfigError, match="is read-only"):
        stg.atomic_write(tmp_path / "x.json", "{}", overwrite=False)
    monkeypatch.setattr(od.os, "open", erofs)
    with pytest.raises(ConfigError, match="is read-only"):
        od.acquire(tmp_path / "run")
    assert not (tmp_path / "run").exists()  # the folder acquire created is removed again


def test_payload_bytes():
    import numpy as np

    assert stg.payload_bytes({"a": torch.zeros(10), "s": {"b": [torch.zeros(2, dtype=torch.float64)]}}) == 56
    assert stg.payload_bytes(np.zeros(4, np.int32), b"abc", "text", 5) == 19


# ------------------------------------------------------------------------------------------ atomic_write
def test_atomic_write_text_bytes_callback(tmp_path):
    import csv

    p = tmp_path / "sub" / "out.csv"
    stg.atomic_write(p, lambda fh: csv.writer(fh).writerows([["a", "b"], ["1", "2"]]), overwrite=False)
    assert p.read_bytes() == b"a,b\r\n1,2\r\n"
    with pytest.raises(ConfigError, match=r"^--output .*out.csv already exists; pass --overwrite"):
        stg.atomic_write(p, "x", overwrite=False)
    stg.atomic_write(p, b"\x00\x01", overwrite=True)
    assert p.read_bytes() == b"\x00\x01"
    stg.atomic_write(p, "é", overwrite=True)
    assert p.read_text(encoding="utf-8") == "é"
    mask = os.umask(0o022)
    os.umask(mask)
    assert (p.stat().st_mode & 0o777) == 0o666 & ~mask
    assert sorted(os.listdir(p.parent)) == ["out.csv"]


def test_atomic_write_to_a_directory_refuses_and_leaves_nothing(tmp_path):
    """Red-team: predict --output <existing dir> --overwrite gave IsADirectoryError and left a .tmp."""
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError) as e:
        stg.atomic_write(tmp_path / "d", "x", overwrite=True)
    assert str(e.value) == f"--output {tmp_path / 'd'} is a directory; pass a file path"
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []


def test_atomic_write_error_in_callback_keeps_old_file_and_no_tmp(tmp_path):
    p = tmp_path / "m.json"
    p.write_text("old")

    def boom(fh):
        fh.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stg.atomic_write(p, boom, overwrite=True)
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["m.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_safetensors_files_get_the_umask_mode_like_the_rest(tmp_path, umask):
    """#21 §7: model.safetensors came out 0600 (safetensors' temp file) beside 0644 files."""
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        want = 0o666 & ~umask
        ckpt.save_checkpoint(
            str(tmp_path),
            1,
            model_state={"w": torch.zeros(2)},
            optimizer_state={},
            scheduler_state={},
            scaler_state=None,
            state=TrainState(global_step=1),
        )
        modes = {
            f: os.stat(tmp_path / "checkpoint-1" / f).st_mode & 0o777
            for f in os.listdir(tmp_path / "checkpoint-1")
        }
        assert set(modes.values()) == {want}, modes
        (tmp_path / "secret.txt").write_text("mine")
        os.chmod(tmp_path / "secret.txt", 0o600)
        save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))  # replaced in the block
        with runf.track(tmp_path):  # like save_pretrained: a new file, a replaced one, one in a subfolder
            save_file({"w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
            os.makedirs(tmp_path / "adapter")
            save_file({"w": torch.ones(2)}, str(tmp_path / "adapter" / "adapter_model.safetensors"))
        for f in ("model.safetensors", "adapter/adapter_model.safetensors"):
            assert os.stat(tmp_path / f).st_mode & 0o777 == want, f
        assert os.stat(tmp_path / "secret.txt").st_mode & 0o777 == 0o600  # not written in the block: kept
    finally:
        os.umask(old)


def test_atomic_write_temp_is_recognised_by_clear_run(tmp_path):
    """A temp file a SIGKILL left behind counts as fastft's, not as a user file."""
    import tempfile

    _fake_run(tmp_path)
    fd, name = tempfile.mkstemp(dir=tmp_path, prefix=".results.json.", suffix=f".tmp-{_dead_pid()}")
    os.close(fd)
    runf.clear_run(tmp_path)
    assert os.listdir(tmp_path) == []


def test_lock_mutual_exclusion_under_contention(tmp_path):
    """Processes that take and release (unlink) the lock in a loop never hold it at the same time:
    the inode re-check after flock closes the unlink-between-open-and-lock race."""
    code = textwrap.dedent(
        f"""
        import os, time
        from fastft.train import outdir
        from fastft.train.errors import ConfigError
        out, got = {str(tmp_path)!r}, 0
        for _ in range(200):
            try:
                lock = outdir.acquire(out)
            except ConfigError:
                time.sleep(0.001)
                continue
            fd = os.open(os.path.join(out, "holder"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails on overlap
            os.close(fd)
            os.remove(os.path.join(out, "holder"))
            lock.release()
            got += 1
        print(got)
        """
    )
    env = child_env()
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(int(o[0]) for o in outs) > 0
