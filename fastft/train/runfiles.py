"""What fastft owns in a run's output folder: the manifest, ``--overwrite``'s clear, and the
deferral of a same-config re-run's checkpoints; plus the trainer's helpers on a folder's run files.

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
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator

from fastft.train.errors import ConfigError
from fastft.train.metrics_log import iter_lines
from fastft.train.storage import atomic_write, fix_mode

__all__ = [
    "LOCK_FILE",
    "MANIFEST_FILE",
    "PREVIOUS_DIR",
    "CHECKPOINT_FILES",
    "pid_alive",
    "is_stray_tmp",
    "record",
    "track",
    "manifest",
    "is_fastft_run",
    "clear_run",
    "Deferred",
    "defer_old_checkpoints",
    "recover_deferred",
    "entries",
    "same_run",
    "truncate_metrics",
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
# the trainer's view of a folder's run files


def entries(out: str) -> list[str]:
    """The folder's entries other than the run lock and the main process's write probe (which other
    ranks may see for an instant), ``[]`` when it does not exist."""
    if not os.path.isdir(out):
        return []
    return [n for n in os.listdir(out) if n != LOCK_FILE and not n.startswith(".fastft-probe.")]


def same_run(saved_config: str, cfg) -> bool:
    """Whether ``train_config.json`` describes the same run as ``cfg`` (a ``TrainConfig``;
    resume/overwrite do not count)."""
    try:
        with open(saved_config, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return False
    ignored = ("resume", "overwrite", "resume_force", "resume_forced", "resume_length_changed")

    def comparable(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in ignored}

    return comparable(saved) == comparable(cfg.to_dict())


def truncate_metrics(path: str, step: int) -> None:
    """On resume, drop metrics.jsonl lines written after the checkpoint (the killed run's tail)."""
    if not os.path.exists(path):
        return
    keep = [
        line
        for line, r in iter_lines(path)
        if r.get("step", 0) <= step and r.get("type") not in ("test", "end")
    ]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(keep)
