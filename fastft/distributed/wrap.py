"""Data-parallel wrapping: DDP or FSDP2 (:func:`wrap_model`), the inverse, and gradient accumulation
without a sync (:func:`no_sync`)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from fastft.distributed.launch import DistState, _active

log = logging.getLogger("fastft")

STRATEGIES = ("ddp", "fsdp")


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
      (:func:`fastft.nn.families.blocks`) and then on the root, after broadcasting rank 0's
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

    from fastft.nn.families import blocks, family_of

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
