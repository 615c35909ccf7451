"""Joining the job: the process's place in it (:class:`DistState`), its device and process group.

Everything is a 1-process identity when no launcher set ``WORLD_SIZE`` > 1.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("fastft")


@dataclass
class DistState:
    """Where this process sits in the job. ``is_main`` (global rank 0) does logging, progress and writes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    is_main: bool = True
    #: "nccl" / "gloo" when a process group is in use, else None.
    backend: str | None = None
    #: True when :func:`init_distributed` created the process group (so :func:`cleanup` destroys it).
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={v!r} is not an integer; unset it or launch with torchrun"
        ) from None


def _device_error(msg: str) -> ValueError:
    from fastft.train.errors import ConfigError  # lazy: fastft.train imports this module

    return ConfigError(msg)  # a ValueError: the CLI prints its one line and exits 2


def _parse_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, or a one-line error for a name torch does not know or a device this
    machine lacks (e.g. ``tpu``, ``cuda`` without a GPU) instead of a traceback later on."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise _device_error(f"--device {device}: not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise _device_error(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):  # e.g. mps / xpu: fine where that backend is present
        backend = getattr(torch, dev.type, None)
        if not callable(getattr(backend, "is_available", None)) or not backend.is_available():
            raise _device_error(f"--device {device}: no {dev.type} device here; use cpu or cuda")
    return dev


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device of a single-process run (``None``/``"auto"``: CUDA when present, else CPU); a one-line
    ``ConfigError`` (a ``ValueError``) for a device that does not exist here."""
    return _resolve_device(device, 0, False)


def _resolve_device(device: str | torch.device | None, local_rank: int, distributed: bool) -> torch.device:
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = _parse_device(device)
    if dev.type == "cuda":
        if not distributed and dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise _device_error(
                f"--device {device}: only {n} GPU(s) visible here; use cuda:0 to cuda:{n - 1}"
            )
        if distributed:
            # One process per GPU: torchrun's LOCAL_RANK picks the GPU on this node.
            if dev.index is not None and dev.index != local_rank:
                log.warning(
                    "fastft.distributed: ignoring device %s, using cuda:%d (LOCAL_RANK)", dev, local_rank
                )
            if local_rank >= torch.cuda.device_count():
                raise ValueError(
                    f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible on this node; "
                    "set torchrun --nproc_per_node to at most the number of GPUs"
                )
            dev = torch.device("cuda", local_rank)
        elif dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


def init_distributed(device: str | torch.device | None = None, *, timeout_s: float = 1800.0) -> DistState:
    """Join the job described by torchrun's environment, or return a 1-process state without one.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT`` through the
    ``env://`` rendezvous). With ``WORLD_SIZE`` > 1 it initialises the default process group: NCCL on
    CUDA (after ``torch.cuda.set_device(LOCAL_RANK)``), gloo on CPU. If a process group already exists
    (e.g. created by a test harness) it is reused. ``device``: None/"auto" (CUDA if present), "cpu",
    "cuda". Seeding is the caller's job: every rank must use the same seed (same data order, same
    init of new heads; DDP and :func:`wrap_model` additionally broadcast rank 0's weights).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        dev = _resolve_device(device, local_rank, world > 1)
        return DistState(rank, world, local_rank, dev, rank == 0, dist.get_backend(), owns_group=False)

    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistState(device=_resolve_device(device, 0, False))
    if not dist.is_available():
        raise RuntimeError(
            "WORLD_SIZE > 1 but this torch build has no torch.distributed; run a single process"
        )
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(var):
            raise ValueError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun (it sets both)")
    dev = _resolve_device(device, local_rank, True)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
    if backend == "nccl":
        kwargs["device_id"] = dev  # binds the communicator to this GPU up front (no lazy init on barrier)
    _import_group_defaults()
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, **kwargs)
    state = DistState(rank, world, local_rank, dev, rank == 0, backend, owns_group=True)
    log.debug("fastft.distributed: rank %d/%d (local %d) on %s via %s", rank, world, local_rank, dev, backend)
    return state


def _import_group_defaults() -> None:
    """Import ``torch.distributed.nn`` before the process group exists.

    Its functions take ``group=group.WORLD`` as a default argument, evaluated at import: imported
    after ``init_process_group`` (``torch.distributed.fsdp`` imports it, e.g. from :func:`is_fsdp`)
    they hold the default group for good, so ``destroy_process_group`` cannot free it -- its gloo
    threads and sockets and rank 0's TCPStore server then live until interpreter exit, where their
    C++ teardown races the peer ranks' own exit (a rank dies with SIGABRT, "terminate called
    without an active exception"). Imported first, those defaults are ``None``.
    """
    try:
        import torch.distributed.nn  # noqa: F401
    except ImportError:  # pragma: no cover - a torch build without it
        pass


def _active(state: DistState | None = None) -> bool:
    if state is not None and not state.distributed:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device(state: DistState | None = None) -> torch.device:
    """The device collectives run on: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
