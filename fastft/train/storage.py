"""Writing files safely: :func:`atomic_write` (temp file in the same folder, fsync, rename),
:func:`fix_mode` (a private temp file's 0600 -> the run's normal mode), and storage errors:
:func:`storage_error` turns a full disk or a read-only / unwritable folder (as an ``OSError``, torch's
``inline_container.cc`` ``RuntimeError`` or safetensors' error) into one line; :func:`check_writable`
fails early. :func:`atomic_write` is the one helper for single output files (``predict``/``eval
--output``, JSON side files). Self-contained: no trainer state.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from typing import IO, Any

from fastft.train.errors import ConfigError

__all__ = ["atomic_write", "fix_mode", "storage_error", "check_writable", "payload_bytes"]


def fix_mode(path: str | os.PathLike) -> None:
    """Give a file written through a private temp file (mode 0600, e.g. by safetensors' ``save_file``)
    the mode of the run's other files: 0666 minus the umask. Other files and links are left alone."""
    with contextlib.suppress(OSError):  # a mode is never worth failing a run over
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600:
            os.chmod(path, 0o666 & ~_umask())


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
