"""Training checkpoints: ``checkpoint-<step>/``, written atomically, read without pickle.

Layout of one checkpoint folder:

    model.safetensors      full model state dict (tied weights stored once, aliases in the metadata)
    optimizer.pt           optimizer state_dict   (torch.save; read with weights_only=True)
    scheduler.pt           LR scheduler state_dict
    scaler.pt              fp16 GradScaler state_dict (only with fp16)
    rng.pt                 python / numpy / torch (CPU + CUDA) RNG states
    trainer_state.json     step, epoch, batch position in the epoch, best metric, early-stopping
                           counter, unfrozen groups, the config it was written under

Atomicity: everything is written into ``.checkpoint-<step>.tmp-<pid>``, each file fsync'ed, then the
folder is renamed to ``checkpoint-<step>`` and the parent fsync'ed; a crash leaves either the old
state or a complete new checkpoint (stray ``.tmp`` folders are ignored and cleaned up).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch

from fastft.train.errors import ConfigError, first_line
from fastft.train.runfiles import is_stray_tmp
from fastft.train.state import TrainState
from fastft.train.storage import fix_mode

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "rotate_checkpoints",
    "rng_state",
    "set_rng_state",
    "save_state_dict",
    "load_state_dict_file",
    "config_diffs",
    "data_diffs",
    "state_dict_mismatch",
    "STATE_FILE",
]

STATE_FILE = "trainer_state.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def _fsync_file(path: str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def save_state_dict(sd: dict[str, torch.Tensor], path: str) -> None:
    """safetensors file of ``sd``; tensors that share storage (tied weights) are stored once."""
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for k, v in sd.items():
        v = v.detach()
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else None
        if key is not None and key in seen:
            aliases[k] = seen[key]
            continue
        if key is not None:
            seen[key] = k
        out[k] = v.to("cpu").contiguous()
    save_file(out, path, metadata={"format": "pt", "fastft_aliases": json.dumps(aliases)})
    fix_mode(path)  # safetensors writes through a 0600 temp file; the other checkpoint files are 0644


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    sd: dict[str, torch.Tensor] = {}
    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata() or {}
        for k in fh.keys():
            sd[k] = fh.get_tensor(k)
    for alias, src in json.loads(meta.get("fastft_aliases", "{}")).items():
        sd[alias] = sd[src]
    return sd


# --------------------------------------------------------------------------------------------------
# RNG


def rng_state() -> dict[str, Any]:
    """Every RNG the run touches, in a form ``torch.load(weights_only=True)`` accepts."""
    py = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(s: dict[str, Any]) -> None:
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = s["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


# --------------------------------------------------------------------------------------------------
# save / load


def save_checkpoint(
    output_dir: str,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    scaler_state: dict[str, Any] | None,
    state: TrainState,
    meta: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
) -> str:
    """Write ``output_dir/checkpoint-<step>`` atomically and return its path (call on rank 0 only).

    ``trainer_state.json`` = ``state.to_dict(**meta)`` (``meta``: run facts such as the config)."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = os.path.join(output_dir, f".checkpoint-{step}.tmp-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        files = []
        p = os.path.join(tmp, "model.safetensors")
        save_state_dict(model_state, p)
        files.append(p)
        for name, obj in (
            ("optimizer.pt", optimizer_state),
            ("scheduler.pt", scheduler_state),
            ("scaler.pt", scaler_state),
            ("rng.pt", rng if rng is not None else rng_state()),
        ):
            if obj is None:
                continue
            p = os.path.join(tmp, name)
            torch.save(obj, p)
            files.append(p)
        p = os.path.join(tmp, STATE_FILE)
        with open(p, "w", encoding="utf-8") as fh:
            json.dump(state.to_dict(**(meta or {})), fh, indent=2, default=str)
        files.append(p)
        for f in files:
            _fsync_file(f)
        _fsync_dir(tmp)
        if os.path.exists(final):  # same step saved twice (e.g. interrupt right after a save)
            old = final + f".old-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def corrupt(path: str, why: str) -> ConfigError:
    return ConfigError(
        f"checkpoint {path} is corrupt or incomplete ({why}); delete it and pass --resume with an older "
        "checkpoint, or start over with --overwrite"
    )


def config_diffs(
    saved: dict[str, Any], current: dict[str, Any], saved_world: int = 1, world: int = 1
) -> list[str]:
    """``["--lr 0.0001 -> 5e-05", ...]``: the fields that change the math and differ from the checkpoint's
    config (fields in :data:`fastft.train.config.RESUME_EXEMPT` and keys only one side has are skipped)."""
    from fastft.train.config import RESUME_EXEMPT

    out = []
    for key, now in current.items():
        if key in RESUME_EXEMPT or key not in saved or saved[key] == now:
            continue
        was = saved[key]
        if key == "grad_accum" and isinstance(was, int) and was * saved_world == now * world:
            continue  # the same global batch with another number of processes (torchrun)
        out.append(f"--{key.replace('_', '-')} {json.dumps(was)} -> {json.dumps(now)}")
    return out


def data_diffs(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> list[str]:
    """``["--train-file data.csv: content changed (size 120 -> 131 bytes, sha256 1a2b3c4d -> ...)"]``:
    data files whose fingerprint (:func:`fastft.train.data.sources.fingerprint`) differs from the
    checkpoint's. A file only one side fingerprinted (an older checkpoint, a hub dataset) is skipped;
    a renamed path is already a config difference."""
    out = []
    for key, now in (current or {}).items():
        was = (saved or {}).get(key)
        if not isinstance(was, dict) or not isinstance(now, dict):
            continue
        if (was.get("size"), was.get("sha256")) == (now.get("size"), now.get("sha256")):
            continue
        sizes = f"size {was.get('size')} -> {now.get('size')} bytes"
        hashes = f"sha256 {str(was.get('sha256'))[:8]} -> {str(now.get('sha256'))[:8]}"
        out.append(f"--{key.replace('_', '-')} {now.get('path')}: content changed ({sizes}, {hashes})")
    return out


def state_dict_mismatch(saved: dict[str, Any], expected: dict[str, Any]) -> str | None:
    """What keeps ``saved`` (a checkpoint's model weights) from loading into a model whose state dict is
    ``expected`` -- a shape or missing/unexpected names, shown briefly -- or ``None`` when it fits."""
    shapes = [
        f"{k} is {list(saved[k].shape)} in the checkpoint, {list(v.shape)} here"
        for k, v in expected.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    parts = shapes[:2]
    for what, keys in (("missing from the checkpoint", missing), ("not in this model", extra)):
        if keys:
            parts.append(f"{len(keys)} weight(s) {what} (e.g. {keys[0]})")
    return "; ".join(parts) or None


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read and check every file of a checkpoint; :class:`ConfigError` if anything is wrong.

    Returns ``{"path", "trainer_state" (the JSON), "state" (its :class:`TrainState`), "model",
    "optimizer", "scheduler", "scaler", "rng"}``.
    """
    if not os.path.isdir(path):
        raise ConfigError(
            f"--resume {path}: no such checkpoint folder; pass 'latest' or a checkpoint-<step> folder"
        )
    out: dict[str, Any] = {"path": path}
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as fh:
            out["trainer_state"] = json.load(fh)
        for key in ("global_step", "epoch", "batch_in_epoch"):
            if not isinstance(out["trainer_state"].get(key), int):
                raise ValueError(f"{STATE_FILE} has no integer {key!r}")
        out["state"] = TrainState.from_dict(out["trainer_state"])
    except (OSError, ValueError, TypeError) as e:
        raise corrupt(path, f"{STATE_FILE}: {first_line(e)}") from None
    try:
        out["model"] = load_state_dict_file(os.path.join(path, "model.safetensors"))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise corrupt(path, f"model.safetensors: {first_line(e)}") from None
    for name, required in (("optimizer", True), ("scheduler", True), ("scaler", False), ("rng", True)):
        f = os.path.join(path, f"{name}.pt")
        if not os.path.exists(f):
            if required:
                raise corrupt(path, f"{name}.pt is missing")
            out[name] = None
            continue
        try:
            out[name] = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise corrupt(path, f"{name}.pt: {first_line(e)}") from None
    return out


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """``[(step, path)]`` of complete checkpoints, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    out = []
    for name in os.listdir(output_dir):
        m = _CKPT_RE.match(name)
        if m and os.path.isdir(os.path.join(output_dir, name)):
            out.append((int(m.group(1)), os.path.join(output_dir, name)))
    return sorted(out)


def latest_checkpoint(output_dir: str) -> str | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def rotate_checkpoints(output_dir: str, limit: int, keep: tuple[str | None, ...] = ()) -> list[str]:
    """Delete the oldest checkpoints beyond ``limit`` (never one in ``keep``, e.g. the best); returns deleted."""
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        if name.startswith(".checkpoint-") and is_stray_tmp(name):  # left by a killed run, not a live one's
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
    if limit <= 0:
        return []
    ckpts = list_checkpoints(output_dir)
    protected = {os.path.abspath(k) for k in keep if k}
    deleted = []
    excess = len(ckpts) - limit
    for _, path in ckpts:
        if excess <= 0:
            break
        if os.path.abspath(path) in protected:
            continue
        shutil.rmtree(path, ignore_errors=True)
        deleted.append(path)
        excess -= 1
    return deleted
