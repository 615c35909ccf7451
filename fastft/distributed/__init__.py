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

Modules: :mod:`~fastft.distributed.launch` (joining the job), :mod:`~fastft.distributed.wrap`
(DDP / FSDP2), :mod:`~fastft.distributed.collectives`, :mod:`~fastft.distributed.state_dicts`
(checkpoints), :mod:`~fastft.distributed.teardown` (:func:`cleanup`).
"""

from __future__ import annotations

from fastft.distributed.collectives import (
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_object,
    gather_for_metrics,
    main_process_first,
)
from fastft.distributed.launch import DistState, init_distributed, resolve_device
from fastft.distributed.state_dicts import (
    full_state_dict,
    load_full_state_dict,
    load_optim_state_dict,
    optim_state_dict,
)
from fastft.distributed.teardown import cleanup
from fastft.distributed.wrap import STRATEGIES, is_fsdp, no_sync, unwrap_model, wrap_model

# the differentiable gather is an autograd op: it lives in fastft.ops (the contrastive loss needs it)
from fastft.ops.all_gather import all_gather_with_grad, all_gather_with_grad_offset

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
