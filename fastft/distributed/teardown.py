"""Ending the job: destroy the process group and release everything that still holds one."""

from __future__ import annotations

import gc
import logging
from typing import Any

import torch.distributed as dist
from torch import nn

from fastft.distributed.launch import DistState

log = logging.getLogger("fastft")


def cleanup(state: DistState | None = None) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if state is not None and not state.owns_group:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _release_process_groups()


def _release_process_groups() -> None:
    """Let the destroyed process groups really go: their backend threads and sockets, and rank 0's
    TCPStore server, stop here, while every rank is still alive, instead of whenever the last
    reference dies.

    ``destroy_process_group`` only unregisters a group; it lives on (gloo's ``shutdown``/``abort``
    stop no thread) while anything refers to it: a DDP wrapper the caller still holds (its
    ``Reducer`` and ``Logger``), FSDP2's mesh info, a DeviceMesh (``_pg_registry``; DTensor's
    caches keep every mesh ever used). Its ``pt_gloo_runloop`` / ``gloo_tcp_loop`` threads then
    run on after cleanup: the group is torn down later, after the peer ranks have exited and
    closed their sockets, or during interpreter exit (a rank dies with SIGABRT or SIGSEGV).
    """
    import sys

    holders = _group_holder_types()
    # type(), not isinstance(): the heap holds weak proxies, and isinstance() on a dead one raises.
    for obj in gc.get_objects():
        if issubclass(type(obj), holders):
            _drop_groups(obj)
    if "torch.distributed.tensor" in sys.modules:  # only if DTensor was used (private APIs: best effort)
        for clear in _dtensor_cache_clearers():
            try:
                clear()
            except Exception as e:  # noqa: BLE001 - a torch version without that cache
                log.debug("fastft.distributed: could not clear a DTensor cache: %s", e)
    gc.collect()  # the groups sit in reference cycles (mesh <-> specs); free them now, not at exit


def _group_holder_types() -> tuple[type, ...]:
    """The classes whose instances keep a process group alive (only those already imported)."""
    import sys

    out: list[type] = [nn.parallel.DistributedDataParallel]
    if "torch.distributed.device_mesh" in sys.modules:
        from torch.distributed.device_mesh import DeviceMesh

        out.append(DeviceMesh)
    if "torch.distributed.fsdp._fully_shard._fsdp_common" in sys.modules:
        from torch.distributed.fsdp._fully_shard._fsdp_common import FSDPMeshInfo

        out.append(FSDPMeshInfo)
    return tuple(out)


def _drop_groups(obj: Any) -> None:
    """Drop ``obj``'s references to process groups: a wrapper cannot run collectives after cleanup
    anyway (a DDP forward then fails); its inner module stays usable."""
    registry = getattr(obj, "_pg_registry", None)
    if isinstance(registry, dict):  # DeviceMesh: every mesh, deep copies too (each resolves its own)
        registry.clear()
    d = getattr(obj, "__dict__", {})
    for name in ("reducer", "logger", "process_group"):  # DDP: its C++ Reducer holds the group
        if name in d:
            d[name] = None
    for name in [k for k, v in d.items() if k.endswith("_process_group") and v is not None]:
        d[name] = None  # FSDP2 mesh info: shard / replicate (/ reduce-scatter) groups


def _dtensor_cache_clearers() -> list:
    """The clear() of each DTensor cache that keeps DeviceMeshes (torch 2.11 .. 2.13; missing ones skipped)."""
    out = []
    try:
        from torch.distributed.tensor.debug import _clear_sharding_prop_cache

        out.append(_clear_sharding_prop_cache)
    except ImportError:
        pass
    try:
        from torch.distributed.tensor import _redistribute as R

        out += [f for f in (getattr(R, "clear_redistribute_planner_cache", None),) if f]
        out += [
            f.cache_clear for f in (getattr(R, "_gen_transform_infos", None),) if hasattr(f, "cache_clear")
        ]
    except ImportError:
        pass
    try:
        from torch.distributed.tensor._collective_utils import MeshTopoInfo

        out.append(MeshTopoInfo.build_from_mesh.cache_clear)
    except (ImportError, AttributeError):
        pass
    return out
