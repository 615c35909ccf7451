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

**Manifest.** ``<dir>/.fastft-manifest.json`` lists the top-level entries fastft wrote; :func:`record`
and :func:`track` add to it (atomically). :func:`clear_run` (``--overwrite``) deletes only those and
refuses when the folder holds anything else. Folders written by fastft versions without a manifest
are recognised by their ``train_config.json`` (:func:`is_fastft_run`) and their known file names.
Only top-level names are tracked, but a ``checkpoint-<step>/`` folder must hold only
:data:`CHECKPOINT_FILES`: a user file put inside one makes ``clear_run`` refuse too.

**Re-running a finished or interrupted config without --resume.** The recipe::

    prev = defer_old_checkpoints(out)          # one warning line; checkpoint-* -> .fastft-previous/
    clear_run(out, keep=(PREVIOUS_DIR,))       # the old run's other files
    ...                                        # the new run writes its first checkpoint
    prev.discard()                             # only now are the old checkpoints deleted

If the new run dies before its first checkpoint, :func:`recover_deferred` (call it before looking for
``--resume latest``) moves the old checkpoints back, so nothing was lost.

**Wiring (trainer, rank 0).** ``lock = acquire(out)`` and ``check_writable(out)`` before anything is
written, then ``recover_deferred(out)``; ``--overwrite`` -> ``clear_run(out)``; the same config again ->
the recipe above; ``record(out, name)`` for each run file (``train_config.json``, ``split_indices.json``,
``metrics.jsonl``, ``results.json``, ``training_curve.png``, ``tensorboard``, ``adapter``) and
``with track(out): model.save_pretrained(out)``; checkpoints are recognised by name. A failed set-up calls
``lock.abort()``, the end of the run ``lock.release()``. Around ``save_checkpoint``/final saves:
``err = storage_error(e, out, payload_bytes(state)); raise err from None`` when it is not ``None``.

**Storage errors.** :func:`storage_error` turns a full disk or a read-only / unwritable folder (as an
``OSError``, torch's ``inline_container.cc`` ``RuntimeError`` or safetensors' error) into one line;
:func:`check_writable` fails early. :func:`atomic_write` is the one helper for single output files
(``predict``/``eval --output``, JSON side files): temp file in the same folder, fsync, rename.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from fastft.train.config import ConfigError

__all__ = [
    "LOCK_FILE",
    "MANIFEST_FILE",
    "PREVIOUS_DIR",
    "RunLock",
    "acquire",
    "pid_alive",
    "is_stray_tmp",
    "record",
    "track",
    "fix_mode",
    "manifest",
    "is_fastft_run",
    "clear_run",
    "Deferred",
    "defer_old_checkpoints",
    "recover_deferred",
    "storage_error",
    "check_writable",
    "payload_bytes",
    "atomic_write",
]

LOCK_FILE = ".fastft.lock"
MANIFEST_FILE = ".fastft-manifest.json"
PREVIOUS_DIR = ".fastft-previous"

#: Names fastft always owns in an output dir, manifest or not (checkpoints and their temp/backup folders).
_OWN_PATTERNS = (
    re.compile(r"^checkpoint-\d+$"),
    re.compile(r"^checkpoint-\d+\.old-\d+$"),
    re.compile(r"^\.checkpoint-\d+\.tmp-\d+$"),
    re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp-\d+$"),  # atomic_write / check_writable temp files
)
#: What fastft versions without a manifest wrote at the top of an output dir (run files, HF model/tokenizer).
_LEGACY_NAMES = frozenset(
    {
        "train_config.json",
        "split_indices.json",
        "metrics.jsonl",
        "results.json",
        "training_curve.png",
        "tensorboard",
        "adapter",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
        "tokenizer.model",
        "chat_template.jinja",
        "chat_template.json",
    }
)
_LEGACY_SHARD = re.compile(r"^model-\d+-of-\d+\.safetensors$")
#: What :func:`fastft.train.checkpoint.save_checkpoint` writes into a ``checkpoint-<step>/`` folder (keep in
#: sync): anything else in one is the user's, and ``--overwrite`` refuses rather than delete it.
CHECKPOINT_FILES = frozenset(
    {"model.safetensors", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng.pt", "trainer_state.json"}
)
_TMP_RE = re.compile(r"\.tmp-(\d+)$")


# --------------------------------------------------------------------------------------------------
# processes


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as dead)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # an exited but un-reaped child still answers kill(0)
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_stray_tmp(name: str, output_dir: str | os.PathLike | None = None) -> bool:
    """True for a ``*.tmp-<pid>`` entry left by a dead process (never our own, never a live one's).

    ``output_dir`` is accepted for symmetry with the other helpers; a pid is only meaningful on the
    host that wrote it, and on shared storage the run lock is what keeps two hosts apart.
    """
    m = _TMP_RE.search(os.path.basename(name))
    if m is None:
        return False
    pid = int(m.group(1))
    return pid != os.getpid() and not pid_alive(pid)


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


# --------------------------------------------------------------------------------------------------
# manifest


def manifest(output_dir: str | os.PathLike) -> set[str] | None:
    """The names in the folder's manifest, or ``None`` when it has none (or an unreadable one)."""
    try:
        with open(os.path.join(output_dir, MANIFEST_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
        names = data.get("files") if isinstance(data, dict) else None
        return {str(n) for n in names} if isinstance(names, list) else None
    except (OSError, ValueError):
        return None


def _top_name(name: str | os.PathLike) -> str:
    parts = [p for p in os.path.normpath(os.fspath(name)).split(os.sep) if p not in ("", ".")]
    if not parts or parts[0] == ".." or os.path.isabs(os.fspath(name)):
        raise ValueError(f"record: {name!r} is not a path inside the output dir")
    return parts[0]


def record(output_dir: str | os.PathLike, *names: str | os.PathLike) -> None:
    """Add entries (relative paths; only their top-level component is kept) to the manifest, atomically.

    The first record in a folder written by an older fastft (no manifest, :func:`is_fastft_run`) also
    adopts that run's files, so a resumed legacy run stays clearable.
    """
    new = {_top_name(n) for n in names}
    have = manifest(output_dir)
    if have is None:  # first record in a folder an older fastft wrote: adopt that run's files
        have = (
            set(_owned(os.fspath(output_dir))[0]) - {MANIFEST_FILE}
            if _legacy_run(os.fspath(output_dir))
            else set()
        )
    if new <= have and os.path.exists(os.path.join(output_dir, MANIFEST_FILE)):
        return
    files = sorted(have | new)
    atomic_write(
        os.path.join(output_dir, MANIFEST_FILE),
        json.dumps({"version": 1, "files": files}, indent=1) + "\n",
        overwrite=True,
        flag="manifest",
    )


@contextlib.contextmanager
def track(output_dir: str | os.PathLike) -> Iterator[None]:
    """Record every top-level entry that appears in ``output_dir`` inside the block (e.g. around
    ``save_pretrained``, whose file names vary by model), also when the block raises. Files written in
    the block (at any depth) that came out 0600 get the normal mode (:func:`fix_mode`)."""
    before = set(os.listdir(output_dir))
    files = _file_ids(os.fspath(output_dir))
    try:
        yield
    finally:
        for path, ident in _file_ids(os.fspath(output_dir)).items():
            if files.get(path) != ident:  # new, or replaced (safetensors renames a temp file over it)
                fix_mode(path)
        new = set(os.listdir(output_dir)) - before - {LOCK_FILE, MANIFEST_FILE}
        if new:
            record(output_dir, *new)


def _file_ids(root: str) -> dict[str, tuple[int, int]]:
    """``{path: (inode, mtime_ns)}`` of the regular files under ``root``."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                out[path] = (st.st_ino, st.st_mtime_ns)
    return out


def fix_mode(path: str | os.PathLike) -> None:
    """Give a file written through a private temp file (mode 0600, e.g. by safetensors' ``save_file``)
    the mode of the run's other files: 0666 minus the umask. Other files and links are left alone."""
    with contextlib.suppress(OSError):  # a mode is never worth failing a run over
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600:
            os.chmod(path, 0o666 & ~_umask())


def _legacy_run(output_dir: str) -> bool:
    if not os.path.isfile(os.path.join(output_dir, "train_config.json")):
        return False
    names = os.listdir(output_dir)
    return "results.json" in names or any(_OWN_PATTERNS[0].match(n) for n in names)


def is_fastft_run(output_dir: str | os.PathLike) -> bool:
    """A folder fastft trained into: it has a manifest, or (older fastft) ``train_config.json`` plus
    ``results.json`` or a ``checkpoint-<step>`` folder."""
    out = os.fspath(output_dir)
    if not os.path.isdir(out):
        return False
    return manifest(out) is not None or _legacy_run(out)


def _owned(output_dir: str) -> tuple[list[str], list[str]]:
    """``(fastft's entries, everything else)`` at the top of ``output_dir`` (the lock file is in neither)."""
    listed = manifest(output_dir)
    legacy = listed is None and os.path.isfile(os.path.join(output_dir, "train_config.json"))
    mine, other = [], []
    for name in sorted(os.listdir(output_dir)):
        if name == LOCK_FILE:
            continue
        if (
            name in (MANIFEST_FILE, PREVIOUS_DIR)
            or (listed is not None and name in listed)
            or any(p.match(name) for p in _OWN_PATTERNS)
            or (legacy and (name in _LEGACY_NAMES or _LEGACY_SHARD.match(name)))
        ):
            mine.append(name)
        else:
            other.append(name)
    return mine, other


def _foreign_inside(output_dir: str, names: Iterable[str]) -> list[str]:
    """Entries (``checkpoint-4/notes.txt``) that fastft did not write inside its checkpoint folders, also
    those deferred under ``.fastft-previous/``: top-level names only vouch for the folder, not its content."""
    ckpt = _OWN_PATTERNS[:2]  # checkpoint-<step>, checkpoint-<step>.old-<pid> (tmp folders are in flux)
    found = []
    for name in names:
        path = os.path.join(output_dir, name)
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        if name == PREVIOUS_DIR:
            for sub in sorted(os.listdir(path)):
                is_ckpt = any(p.match(sub) for p in ckpt) and os.path.isdir(os.path.join(path, sub))
                found += [f"{name}/{f}" for f in (_foreign_inside(path, [sub]) if is_ckpt else [sub])]
        elif any(p.match(name) for p in ckpt):
            found += [
                f"{name}/{f}"
                for f in sorted(os.listdir(path))
                if f not in CHECKPOINT_FILES or not os.path.isfile(os.path.join(path, f))
            ]
    return found


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def clear_run(output_dir: str | os.PathLike, keep: Iterable[str] = (), *, dry_run: bool = False) -> list[str]:
    """Delete what fastft wrote in ``output_dir`` (``--overwrite``); returns the deleted names.

    ``dry_run``: only check (the same refusal) and return what would be deleted, e.g. before a set-up
    that must not write anything until every check passed.

    Refuses with :class:`ConfigError` (nothing deleted) when the folder holds anything fastft did not
    write. An empty or missing folder is fine. Never touches the lock file, the names in ``keep``, or a
    ``.tmp-<pid>`` folder of a live process. What marks the folder as a run (``train_config.json``, the
    manifest) goes last, so an interrupted clear can be repeated.
    """
    out = os.fspath(output_dir)
    if not os.path.isdir(out):
        return []
    mine, other = _owned(out)
    skip = set(keep)
    other += _foreign_inside(out, (n for n in mine if n not in skip))
    if other:
        shown = [n + "/" if os.path.isdir(os.path.join(out, n)) else n for n in other[:5]]
        more = f" and {len(other) - 5} more" if len(other) > 5 else ""
        raise ConfigError(
            f"--overwrite would delete files fastft did not write ({', '.join(shown)}{more}); "
            "empty the folder or pick another --output-dir"
        )
    doomed = [n for n in mine if n not in skip and not (_TMP_RE.search(n) and not is_stray_tmp(n))]
    doomed.sort(key=lambda n: (n == MANIFEST_FILE, n == "train_config.json"))  # what marks a run goes last
    if dry_run:
        return doomed
    for name in doomed:
        _remove(os.path.join(out, name))
    return doomed


# --------------------------------------------------------------------------------------------------
# re-running the same config: keep the old checkpoints until the new run has one


class Deferred:
    """The previous run's checkpoints, moved into ``<dir>/.fastft-previous/`` by
    :func:`defer_old_checkpoints`; :meth:`discard` deletes them once the new run has saved."""

    def __init__(self, output_dir: str, names: list[str]) -> None:
        self.output_dir = output_dir
        self.names = names

    @property
    def folder(self) -> str:
        return os.path.join(self.output_dir, PREVIOUS_DIR)

    def discard(self) -> None:
        """Delete the old checkpoints (call right after the new run's first checkpoint is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.names = []


def defer_old_checkpoints(
    output_dir: str | os.PathLike, *, warn: Callable[[str], None] | None = None
) -> Deferred:
    """Move the ``checkpoint-<step>`` folders aside and warn in one line that the run restarts at step 0.

    ``warn`` gets the line (default: printed to stderr). The folders stay under ``.fastft-previous/``
    until :meth:`Deferred.discard`; :func:`recover_deferred` brings them back if the new run dies first.
    """
    out = os.fspath(output_dir)
    recover_deferred(out)  # a previous deferral that never finished: settle it first
    names = [n for n in sorted(os.listdir(out)) if _OWN_PATTERNS[0].match(n)] if os.path.isdir(out) else []
    line = f"{out} holds a run with the same config: starting again at step 0 (pass --resume latest to continue it)"
    if names:
        line += f"; its {len(names)} checkpoint(s) are kept until this run writes its first one"
    (warn or (lambda s: print(s, file=sys.stderr, flush=True)))(line)
    if names:
        prev = os.path.join(out, PREVIOUS_DIR)
        os.makedirs(prev, exist_ok=True)
        for n in names:
            os.replace(os.path.join(out, n), os.path.join(prev, n))  # same file system: a rename
        record(out, PREVIOUS_DIR)
    return Deferred(out, names)


def recover_deferred(output_dir: str | os.PathLike) -> list[str]:
    """Move checkpoints deferred by a run that died before saving its own back; returns their names.

    Does nothing when the folder already has a ``checkpoint-<step>`` (the new run got that far; the
    deferred ones are then obsolete and deleted).
    """
    out = os.fspath(output_dir)
    prev = os.path.join(out, PREVIOUS_DIR)
    if not os.path.isdir(prev):
        return []
    if any(_OWN_PATTERNS[0].match(n) for n in os.listdir(out)):
        shutil.rmtree(prev, ignore_errors=True)
        return []
    moved = []
    for n in sorted(os.listdir(prev)):
        if _OWN_PATTERNS[0].match(n):
            os.replace(os.path.join(prev, n), os.path.join(out, n))
            moved.append(n)
    shutil.rmtree(prev, ignore_errors=True)
    return moved


# --------------------------------------------------------------------------------------------------
# storage errors

_NOSPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READONLY = (errno.EROFS,)
_DENIED = (errno.EACCES, errno.EPERM)
# what torch (inline_container.cc) and safetensors put in their messages instead of an errno
_TEXT = (
    (
        _NOSPACE,
        ("no space left", "os error 28", "disk quota", "os error 122", "unexpected pos", "file write failed"),
    ),
    (_READONLY, ("read-only file system", "os error 30")),
    (_DENIED, ("permission denied", "os error 13")),
)


def _errno_of(exc: BaseException) -> int | None:
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # the cause chain: torch/safetensors wrap the OSError
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno
        text = str(e).lower()
        for codes, needles in _TEXT:
            if any(s in text for s in needles):
                return codes[0]
        e = e.__cause__ or e.__context__
    return None


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f}" if n >= 1e6 else f"{n / 1e6:.1f}"


def _free_bytes(path: str) -> int | None:
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def storage_error(
    exc: BaseException,
    output_dir: str | os.PathLike,
    needed_bytes: int | None = None,
    *,
    flag: str = "--output-dir",
) -> ConfigError | None:
    """One-line :class:`ConfigError` for a full disk or an unwritable folder, ``None`` for anything else.

    ``needed_bytes`` (e.g. :func:`payload_bytes` of what was being saved) makes the line say how much;
    ``flag`` is the option the line tells the user to change (``--output`` for eval/predict files).
    """
    out = os.fspath(output_dir)
    code = _errno_of(exc)
    if code in _NOSPACE:
        free = _free_bytes(out)
        have = f", {_mb(free)} MB free" if free is not None else ""
        need = (
            f": {_mb(needed_bytes)} MB needed{have}" if needed_bytes else (f" ({have[2:]})" if have else "")
        )
        return ConfigError(f"no space left on {out}{need}; free some space or pass another {flag}")
    if code in _READONLY:
        return ConfigError(f"{out} is read-only; pass a writable {flag}")
    if code in _DENIED:
        return ConfigError(f"{out} is not writable (permission denied); pass a writable {flag}")
    return None


def payload_bytes(*objs: Any) -> int:
    """Bytes of the tensors/arrays in nested dicts/lists/tuples (a lower bound of a checkpoint's size)."""
    total = 0
    stack = list(objs)
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif hasattr(o, "nbytes") and not isinstance(o, (bytes, bytearray, str)):
            try:
                total += int(o.nbytes)
            except (TypeError, ValueError):
                pass
        elif isinstance(o, (bytes, bytearray)):
            total += len(o)
    return total


def check_writable(output_dir: str | os.PathLike, needed_bytes: int | None = None) -> None:
    """Fail early (:class:`ConfigError`) when ``output_dir`` (or, if missing, its nearest existing parent)
    cannot be written, or has less than ``needed_bytes`` free."""
    out = os.fspath(output_dir)
    probe_dir = os.path.abspath(out)
    while not os.path.isdir(probe_dir) and os.path.dirname(probe_dir) != probe_dir:
        probe_dir = os.path.dirname(probe_dir)
    try:
        fd, p = tempfile.mkstemp(dir=probe_dir, prefix=".fastft-probe.", suffix=f".tmp-{os.getpid()}")
        try:
            os.write(fd, b"x")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(p)
    except OSError as e:
        raise (storage_error(e, out) or ConfigError(f"--output-dir {out}: {e.strerror}")) from None
    if needed_bytes:
        free = _free_bytes(out)
        if free is not None and free < needed_bytes:
            raise storage_error(OSError(errno.ENOSPC, "No space left on device"), out, needed_bytes)


# --------------------------------------------------------------------------------------------------
# atomic single-file writes


def _umask() -> int:
    try:  # Linux >= 4.7: read it without changing it (os.umask(0) would race with other threads)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(
    path: str | os.PathLike,
    data: str | bytes | Callable[[IO[Any]], None],
    *,
    overwrite: bool,
    flag: str = "--output",
    binary: bool = False,
) -> None:
    """Write ``path`` in one piece: a temp file in the same folder, fsync'ed, then renamed over ``path``.

    ``data`` is text, bytes, or a callback that writes into the open file (text mode, UTF-8, ``newline=""``
    so ``csv.writer`` works; binary with ``binary=True``). Refuses with one line when ``path`` is a folder,
    or exists and ``overwrite`` is false (``flag`` names the option in those lines). A full disk or
    read-only folder becomes the :func:`storage_error` line, naming ``flag`` when it is an option
    (``--output``, ``--output-dir``), else ``--output-dir`` (fastft's own files such as the manifest).
    No temp file is left behind on any error.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        raise ConfigError(f"{flag} {p} is a directory; pass a file path")
    if os.path.lexists(p) and not overwrite:
        raise ConfigError(f"{flag} {p} already exists; pass --overwrite or another {flag}")
    parent = os.path.dirname(os.path.abspath(p))
    tmp = None
    try:
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=parent, prefix=f".{os.path.basename(p)}.", suffix=f".tmp-{os.getpid()}"
        )
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        as_bytes = binary or isinstance(data, (bytes, bytearray))
        with open(fd, "wb") if as_bytes else open(fd, "w", encoding="utf-8", newline="") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        err = storage_error(e, parent, flag=flag if flag.startswith("--") else "--output-dir")
        if err is not None:
            raise err from None
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
