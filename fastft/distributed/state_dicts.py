"""Checkpoint state dicts under any strategy: the model's full state dict and the optimizer's in
``torch.optim.Optimizer.state_dict()`` format, unsharded, so they load at any world size."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastft.distributed.collectives import broadcast_object
from fastft.distributed.launch import DistState
from fastft.distributed.wrap import is_fsdp, unwrap_model


def _sd_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def full_state_dict(model: nn.Module, state: DistState) -> dict[str, torch.Tensor]:
    """The complete model state dict with the user's key names (no ``module.`` prefix).

    FSDP2: a collective (call it on every rank); the full tensors are gathered to rank 0 on the CPU
    and the other ranks get ``{}``. DDP / one process: ``state_dict()`` of the inner module, on every
    rank.
    """
    inner = unwrap_model(model)
    if is_fsdp(inner):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(inner, options=_sd_options(full_state_dict=True, cpu_offload=True))
    return inner.state_dict()


def load_full_state_dict(
    model: nn.Module, sd: dict[str, torch.Tensor], state: DistState, *, strict: bool = True
):
    """Load a full (unsharded) state dict into a plain, DDP or FSDP2 model; every rank passes ``sd``."""
    inner = unwrap_model(model)
    if is_fsdp(inner):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        return set_model_state_dict(inner, sd, options=_sd_options(full_state_dict=True, strict=strict))
    return inner.load_state_dict(sd, strict=strict)


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def optim_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: DistState) -> dict[str, Any]:
    """The optimizer state in ``torch.optim.Optimizer.state_dict()`` format, unsharded.

    FSDP2: a collective (call it on every rank): every sharded moment is all-gathered and rank 0
    keeps a CPU copy, the other ranks get ``{}``. Keys stay the integer ids of ``param_groups``
    order, so the result loads into a 1-process optimizer. DDP / one process:
    ``optimizer.state_dict()``.
    """
    osd = optimizer.state_dict()
    if not is_fsdp(model):
        return osd
    ordered = [p for g in optimizer.param_groups for p in g["params"]]
    layout = [(pid, key) for pid in sorted(osd["state"]) for key in sorted(osd["state"][pid])]
    # Every rank must gather the same tensors in the same order, else full_tensor() would hang.
    if broadcast_object(layout, state) != layout:
        raise RuntimeError(
            "optim_state_dict: the ranks hold different optimizer state entries (a rank skipped a "
            "parameter with an empty shard?); the optimizer must keep state for every parameter on every rank"
        )
    full: dict[int, dict[str, Any]] = {}
    for pid in sorted(osd["state"]):
        entry = {}
        for key in sorted(osd["state"][pid]):
            v = osd["state"][pid][key]
            p = ordered[pid]
            if _is_dtensor(p) and torch.is_tensor(v) and not _is_dtensor(v) and v.dim() > 0:
                raise RuntimeError(
                    f"optim_state_dict: state {key!r} of a sharded parameter is a plain tensor of shape "
                    f"{tuple(v.shape)}; keep FSDP2 optimizer state as DTensors (e.g. torch.zeros_like(param))"
                )
            if _is_dtensor(v):
                v = v.full_tensor()  # collective: same order on every rank (sorted ids and keys)
            if torch.is_tensor(v) and state.is_main:
                v = v.detach().to("cpu", copy=True)
            entry[key] = v
        full[pid] = entry
    if not state.is_main:
        return {}
    return {"state": full, "param_groups": osd["param_groups"]}


def load_optim_state_dict(
    model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict[str, Any], state: DistState
) -> None:
    """Load a state dict written by :func:`optim_state_dict` (any strategy, any world size).

    Every rank passes the full ``osd``. Under FSDP2 each moment that has its parameter's full shape
    is re-sharded like the parameter (same mesh and placements), so each rank keeps its slice.
    """
    ordered = [p for g in optimizer.param_groups for p in g["params"]]
    n_saved = sum(len(g["params"]) for g in osd.get("param_groups", []))
    if n_saved != len(ordered) or len(osd.get("param_groups", [])) != len(optimizer.param_groups):
        raise ValueError(
            f"optimizer checkpoint has {len(osd.get('param_groups', []))} groups / {n_saved} params but the "
            f"optimizer has {len(optimizer.param_groups)} / {len(ordered)}; resume with the same model and strategy"
        )
    if is_fsdp(model):
        from torch.distributed.tensor import distribute_tensor

        state_in = osd["state"]
        sharded: dict[int, dict[str, Any]] = {}
        for pid in sorted(state_in, key=int):
            p = ordered[int(pid)]
            entry = {}
            for key in sorted(state_in[pid]):
                v = state_in[pid][key]
                if _is_dtensor(p) and torch.is_tensor(v) and tuple(v.shape) == tuple(p.shape):
                    v = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                entry[key] = v
            sharded[int(pid)] = entry
        osd = {"state": sharded, "param_groups": osd["param_groups"]}
    optimizer.load_state_dict(osd)
