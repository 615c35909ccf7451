"""Safe handling of a run's output folder: a run lock, a manifest of what fastft wrote, storage errors.

Everything here is self-contained (no trainer state) so the trainer and the CLI can share it.

**Run lock.** :func:`acquire` takes an exclusive ``fcntl.flock`` on ``<dir>/.fastft.lock`` and writes
``{pid, host, started, argv}`` into it. A second run into the same folder gets a :class:`ConfigError`
naming the running process. The kernel drops a flock when its process dies, so a lock file left by a
killed run is simply taken over. ``acquire`` creates the folder (and missing parents) when needed and
remembers that: :meth:`RunLock.abort` (for a setup that failed before the run really started) removes
a folder the lock created as long as it only holds what fastft wrote; :meth:`RunLock.release` (the
normal end, also the context manager's exit) only removes the lock file, plus the folder if the lock
created it and it is empty. Take the lock on the main process only (rank 0), before writing anything.
flock works on local file systems and on NFSv4 (Linux maps it to byte-range locks).

**Wiring (trainer, rank 0).** ``lock = acquire(out)`` and ``check_writable(out)`` before anything is
written, then ``recover_deferred(out)``; ``--overwrite`` -> ``clear_run(out)``; the same config again ->
the recipe above; ``record(out, name)`` for each run file (``train_config.json``, ``split_indices.json``,
``metrics.jsonl``, ``results.json``, ``training_curve.png``, ``tensorboard``, ``adapter``) and
``with track(out): model.save_pretrained(out)``; checkpoints are recognised by name. A failed set-up calls
``lock.abort()``, the end of the run ``lock.release()``. Around ``save_checkpoint``/final saves:
``err = storage_error(e, out, payload_bytes(state)); raise err from None`` when it is not ``None``.

The manifest, ``--overwrite``'s clear and the same-config re-run recipe live in
:mod:`fastft.train.runfiles`; atomic writes and storage errors in :mod:`fastft.train.storage`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import socket
import sys
from typing import Any

from fastft.train.errors import ConfigError

# atomic_write, check_writable, record, storage_error: re-exported for their importers outside the
# trainer (cli, trackers, sweep), which import them from here
from fastft.train.runfiles import LOCK_FILE, clear_run, record
from fastft.train.storage import atomic_write, check_writable, storage_error

__all__ = ["RunLock", "acquire", "atomic_write", "check_writable", "record", "storage_error"]


# --------------------------------------------------------------------------------------------------
# run lock


def _holder_line(output_dir: str, info: dict[str, Any]) -> str:
    pid = info.get("pid", "?")
    when = info.get("started")
    host = info.get("host")
    where = f"started {when}" if when else "start time unknown"
    if host and host != socket.gethostname():
        where += f" on {host}"
    return f"{output_dir} is in use by fastft pid {pid} ({where}); wait for it, or pass another --output-dir"


class RunLock:
    """An exclusive lock on one output dir, held until :meth:`release` (or :meth:`abort`).

    Attributes: ``output_dir``, ``path`` (the lock file), ``created`` (the folders ``acquire`` made,
    deepest first; empty when the output dir existed).
    """

    def __init__(self, output_dir: str, fd: int, created: list[str]) -> None:
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.created = created
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock and remove the lock file; a folder ``acquire`` created is removed if it is now empty."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # safe: acquire re-checks the inode after locking
        os.close(self._fd)
        self._fd = None
        _remove_created(self.created)  # only succeeds when empty

    def abort(self) -> None:
        """For a setup that failed: release, and remove a folder this lock created if it only holds fastft's
        files (a folder that already existed keeps everything but the lock file)."""
        if self._fd is None:
            return
        if self.created:
            try:
                clear_run(self.output_dir)
            except (ConfigError, OSError):
                pass  # someone put their own files there meanwhile: keep them
        self.release()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # pragma: no cover - a forgotten lock must not leak its fd
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _makedirs(path: str) -> list[str]:
    """``os.makedirs`` that returns the folders it created, deepest first."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.exists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        _remove_created(missing)  # e.g. the disk filled up half-way down the path
        raise
    return missing


def _remove_created(created: list[str]) -> None:
    """Remove the folders ``_makedirs`` created (deepest first), as far as they are still empty."""
    for d in created:
        with contextlib.suppress(OSError):
            os.rmdir(d)


def acquire(output_dir: str | os.PathLike, argv: list[str] | None = None) -> RunLock:
    """Lock ``output_dir`` for this process (creating it if missing) or raise :class:`ConfigError`.

    Raises ``ConfigError`` with one line naming the holder when another live process has the lock,
    or the storage line of :func:`storage_error` when the folder cannot be created or written.
    """
    out = os.fspath(output_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--output-dir {out} is a file; pass a folder path")
    try:
        created = _makedirs(out)
    except OSError as e:
        raise (storage_error(e, out) or ConfigError(f"--output-dir {out}: {e.strerror}")) from None
    path = os.path.join(out, LOCK_FILE)
    for _ in range(20):  # retried only when the holder removed the file between our open and flock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            _remove_created(created)
            raise (storage_error(e, out) or ConfigError(f"--output-dir {out}: {e.strerror}")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_lock_info(fd)
            os.close(fd)
            raise ConfigError(_holder_line(out, info)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # we locked a file that was just unlinked by its releasing holder: try again
            os.close(fd)
            continue
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "argv": list(sys.argv if argv is None else argv),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError as e:  # e.g. a full disk: leave no 0-byte lock file and no folder we created
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
            _remove_created(created)
            raise (storage_error(e, out) or ConfigError(f"--output-dir {out}: {e.strerror}")) from None
        return RunLock(out, fd, created)
    raise ConfigError(
        f"{out}: could not take the run lock {path}; pass another --output-dir"
    )  # pragma: no cover


def _read_lock_info(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 1 << 16, 0)
        info = json.loads(raw.decode("utf-8"))
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):  # the holder is between truncate and write
        return {}
