"""torch.distributed integration: launch under ``torchrun``, wrap with DDP or FSDP2, gather, checkpoint.

Everything here is an identity / local operation when the process was not started by a launcher
(no ``WORLD_SIZE`` > 1 in the environment), so the trainer calls the same functions for 1 process,
N GPUs on one node and N nodes:

    state = init_distributed(cfg.device)          # reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
    model = wrap_model(model.to(state.device), state, strategy="ddp")   # or "fsdp" (FSDP2)
    for i, batch in enumerate(loader):
        with no_sync(model, active=not last_micro_step):
            loss.backward()
    probs = gather_for_metrics(local_probs, state, total=len(eval_ds))
    sd = full_state_dict(model, state)             # full on rank 0 (FSDP2: gathered, others get {})
    if state.is_main: save(...)
    cleanup(state)

Multi-node is whatever torchrun's rendezvous provides; nothing here depends on the node count.

Checkpoint format: the model state is a plain (unsharded, un-prefixed) state dict, and the optimizer
state is the format of ``torch.optim.Optimizer.state_dict()`` (integer parameter ids in
``param_groups`` order) whatever the strategy, so a checkpoint written by N processes under DDP or
FSDP2 loads in one process with plain ``load_state_dict`` and vice versa.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistState",
    "STRATEGIES",
    "init_distributed",
    "resolve_device",
    "wrap_model",
    "unwrap_model",
    "no_sync",
    "all_reduce_sum",
    "all_reduce_mean",
    "broadcast_object",
    "gather_for_metrics",
    "barrier",
    "main_process_first",
    "cleanup",
    "full_state_dict",
    "load_full_state_dict",
    "optim_state_dict",
    "load_optim_state_dict",
    "is_fsdp",
    "all_gather_with_grad",
    "all_gather_with_grad_offset",
]

log = logging.getLogger("fastft")

STRATEGIES = ("ddp", "fsdp")


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


# ---------------------------------------------------------------------------------------------------
# wrapping


def is_fsdp(model: nn.Module) -> bool:
    """True if ``model`` was sharded with FSDP2 ``fully_shard``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(unwrap_model(model), FSDPModule)


def _broadcast_params(model: nn.Module, src: int = 0) -> None:
    """Make every rank hold rank ``src``'s parameters and buffers (FSDP2 does not, unlike DDP)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src)


def wrap_model(
    model: nn.Module,
    state: DistState,
    strategy: str = "ddp",
    *,
    find_unused_parameters: bool = False,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Wrap ``model`` for data-parallel training; identity when ``state.world_size == 1``.

    * ``"ddp"``: :class:`~torch.nn.parallel.DistributedDataParallel` (rank 0's weights are broadcast
      at construction). Only parameters with ``requires_grad`` at wrap time are synchronised: if the
      trainable set changes later (gradual unfreezing), call ``wrap_model`` again on the wrapped model
      (it re-wraps the inner module).
    * ``"fsdp"``: FSDP2 -- ``fully_shard`` on every transformer block
      (:func:`fastft.patching.families.blocks`) and then on the root, after broadcasting rank 0's
      weights. The model's classes are swapped in place, parameters become DTensors sharded on dim 0;
      ``fastft.optim.FusedAdamW`` updates local shards and all-reduces the squared grad norm.

    The model is moved to ``state.device`` first. Build the optimizer *after* wrapping (FSDP2 replaces
    the parameters).
    """
    strategy = (strategy or "ddp").lower()
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown distributed strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if not state.distributed:
        return model
    if not _active(state):
        raise RuntimeError("wrap_model: world_size > 1 but no process group; call init_distributed() first")
    inner = unwrap_model(model)
    if strategy == "ddp":
        if is_fsdp(inner):
            raise ValueError(
                "wrap_model: the model is already sharded with FSDP2; it cannot also be wrapped in DDP"
            )
        inner = inner.to(state.device)
        if not any(p.requires_grad for p in inner.parameters()):
            raise ValueError("wrap_model: the model has no trainable parameters; nothing to train under DDP")
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(
            inner,
            device_ids=[state.device.index] if state.device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
            # HF buffers (position ids, token type ids) are constants: no per-forward broadcast.
            broadcast_buffers=False,
        )
    # FSDP2
    if is_fsdp(inner):
        return inner
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from fastft.patching.families import blocks, family_of

    inner = inner.to(state.device)
    _broadcast_params(inner)
    mesh = init_device_mesh(state.device.type, (state.world_size,))
    if family_of(inner) is not None:
        for block in blocks(inner):
            name = type(block).__name__  # before fully_shard renames the class to FSDP<name>
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
            # HF blocks return views of their output, which FSDP2 warns about in case the caller
            # modifies them in place; the HF stacks do not (FSDP2 == 1-process grads in our tests).
            warnings.filterwarnings(
                "ignore",
                message=rf"FSDP2-wrapped module \(FSDP{name}\) returned a view tensor",
            )
    else:
        log.warning("fastft.distributed: unknown model family; FSDP2 shards the whole model as one unit")
    # The root keeps embeddings, final norm and heads; it is never resharded after forward
    # because its parameters are needed again right at the start of backward.
    fully_shard(inner, mesh=mesh, reshard_after_forward=False)
    return inner


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / ``torch.compile`` wrappers (an FSDP2 model is its own root)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def no_sync(model: nn.Module, active: bool) -> Iterator[None]:
    """Skip the gradient all-reduce for this backward when ``active`` (gradient accumulation).

    Use ``with no_sync(model, active=not last_micro_step): loss.backward()``: gradients accumulate
    locally and are synchronised once, on the last micro-step. DDP: ``model.no_sync()``; FSDP2:
    ``set_requires_gradient_sync(False)`` (unsharded gradients are kept until the sync step).
    """
    if not active:
        yield
        return
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    inner = unwrap_model(model)
    if is_fsdp(inner):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
        return
    yield


# ---------------------------------------------------------------------------------------------------
# collectives


def _comm_device(state: DistState | None = None) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, state: DistState | None = None) -> torch.Tensor:
    """Sum ``t`` over ranks (in place where possible) and return it; identity in one process."""
    if not _active(state):
        return t
    dev = _comm_device(state)
    buf = t if t.device == dev else t.to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if buf is not t:
        t.copy_(buf)
    return t


def all_reduce_mean(t: torch.Tensor, state: DistState | None = None) -> torch.Tensor:
    """Mean of ``t`` over ranks (for logging a loss); identity in one process."""
    if not _active(state):
        return t
    return all_reduce_sum(t, state).div_(dist.get_world_size())


def broadcast_object(obj: Any, state: DistState | None = None, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (small control data only, e.g. a stop flag)."""
    if not _active(state):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _all_gather_var(t: torch.Tensor, pad_value: float) -> list[torch.Tensor]:
    """All-gather tensors whose sizes differ across ranks (any dim); each rank's rows, padded trailing dims."""
    dev = _comm_device()
    world = dist.get_world_size()
    shape = torch.tensor(list(t.shape), dtype=torch.long, device=dev)
    ndim = torch.tensor([t.dim()], dtype=torch.long, device=dev)
    ndims = [torch.empty_like(ndim) for _ in range(world)]
    dist.all_gather(ndims, ndim)
    if len({int(n) for n in ndims}) != 1:
        raise ValueError("gather_for_metrics: tensors have a different number of dims on different ranks")
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes_l = [tuple(int(x) for x in s.tolist()) for s in shapes]
    max_shape = [max(s[d] for s in shapes_l) for d in range(t.dim())]
    padded = torch.full(max_shape, pad_value, dtype=t.dtype, device=dev)
    padded[tuple(slice(0, n) for n in t.shape)] = t.to(dev)
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    # Cut each rank's rows back to its own count; trailing dims stay padded to the common maximum.
    return [o[: s[0]] if o.dim() else o for o, s in zip(out, shapes_l)]


def gather_for_metrics(
    t: torch.Tensor,
    state: DistState,
    total: int,
    *,
    index: torch.Tensor | None = None,
    pad_value: float = 0,
) -> torch.Tensor:
    """Every rank's rows of ``t`` (dim 0 = samples), once each: ``total`` rows in dataset order.

    * ``index`` (the dataset row of each local row, shape (n_local,); every batch of
      ``fastft.train.data.make_dataloader`` carries it as ``batch["index"]``): any sharding works --
      rows are placed by index, duplicates (shard padding) dropped, and a missing row raises.
    * no ``index``: the ranks' tensors are concatenated in rank order and cut at ``total`` (rank r
      evaluated the contiguous r-th shard, padding at the end of the last shard).

    Trailing dims that differ across ranks (e.g. sequence length) are padded with ``pad_value``.
    Returns on ``t``'s device, on every rank. In one process: ``t[:total]`` (or ordered by ``index``).
    """
    if index is not None and index.shape[0] != t.shape[0]:
        raise ValueError(
            f"gather_for_metrics: index has {index.shape[0]} rows but the tensor has {t.shape[0]}"
        )
    if _active(state):
        parts = _all_gather_var(t, pad_value)
        cat = torch.cat(parts, 0) if parts[0].dim() > 0 else torch.stack(parts)
        idx = torch.cat(_all_gather_var(index.long(), -1), 0) if index is not None else None
    else:
        cat, idx = t, (index.long() if index is not None else None)
    if idx is None:
        if cat.shape[0] < total:
            raise ValueError(
                f"gather_for_metrics: gathered {cat.shape[0]} rows across ranks but total={total}"
            )
        return cat[:total].to(t.device)
    idx = idx.to(cat.device)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= total):
        raise ValueError(f"gather_for_metrics: index out of range [0, {total})")
    # First occurrence of each dataset row wins (shard padding repeats samples already seen).
    n = idx.shape[0]
    first = torch.full((total,), n, dtype=torch.long, device=cat.device)
    first.scatter_reduce_(0, idx, torch.arange(n, device=cat.device), reduce="amin")
    missing = int((first == n).sum())
    if missing:
        raise ValueError(f"gather_for_metrics: {missing} of {total} rows were evaluated by no rank")
    out = cat[first]
    return out.to(t.device)


def barrier(state: DistState | None = None) -> None:
    """Wait for every rank; no-op in one process."""
    if not _active(state):
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@contextlib.contextmanager
def main_process_first(state: DistState) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. tokenising into the datasets cache), then the others, which
    then find the cache instead of racing to write it."""
    if not state.is_main:
        barrier(state)
    try:
        yield
    finally:
        if state.is_main:
            barrier(state)


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


# ---------------------------------------------------------------------------------------------------
# state dicts (checkpoints)


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


# ---------------------------------------------------------------------------------------------------
# gather with gradients (contrastive losses over the global batch)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather rows (dim 0) across ranks, keeping the autograd graph to this rank's rows.

    Forward: ``out = cat(t_0, ..., t_{W-1})`` (rank order; ranks may hold different row counts).

    Backward: every rank's loss L_r may read every rank's rows, so the gradient of this rank's
    rows t_s is ``sum_r dL_r/dout[rows of s]``: the incoming ``grad_out`` is summed over ranks
    (all-reduce) and this rank's slice is returned. Under DDP, which averages parameter gradients
    over ranks, the towers then get ``d/dtheta (1/W) sum_r L_r``: the gradient of the global loss.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        dev = _comm_device()
        width = max(sizes)
        buf = t.new_zeros((width, *t.shape[1:]), device=dev)
        buf[: t.shape[0]] = t.to(dev)
        parts = [torch.empty_like(buf) for _ in sizes]
        dist.all_gather(parts, buf.contiguous())
        ctx.sizes, ctx.rank, ctx.device = sizes, rank, t.device
        return torch.cat([p[:n] for p, n in zip(parts, sizes)], 0).to(t.device)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        dev = _comm_device()
        g = grad_out.contiguous().to(dev, copy=True)
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return g[start : start + ctx.sizes[ctx.rank]].to(ctx.device), None, None


def all_gather_with_grad_offset(t: torch.Tensor, state: DistState | None = None) -> tuple[torch.Tensor, int]:
    """(every rank's rows of ``t`` in rank order, the row where this rank's rows start).

    Differentiable (see :class:`_AllGatherWithGrad`); ranks may hold different row counts (one
    small collective finds them). One process: ``(t, 0)``.
    """
    if not _active(state):
        return t, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=_comm_device())
    counts = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    sizes = tuple(int(c) for c in counts)
    return _AllGatherWithGrad.apply(t, sizes, rank), sum(sizes[:rank])


def all_gather_with_grad(t: torch.Tensor, state: DistState | None = None) -> torch.Tensor:
    """Every rank's rows of ``t`` concatenated in rank order, with gradients flowing back to each
    rank's own rows (open_clip's ``gather_with_grad``); ``t`` itself in one process."""
    return all_gather_with_grad_offset(t, state)[0]
