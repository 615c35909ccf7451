"""``FusedAdamW``: AdamW + global grad-norm clipping + AMP unscaling in one fused step.

One ``step()`` does what ``clip_grad_norm_`` + ``torch.optim.AdamW`` do, reading each grad twice
(once for the global norm, once for the update) and never writing it, through the C++/CUDA op
``torch.ops.fastft.fused_adamw_`` (see ``csrc/``). Without the extension, without its kernels for the
params' device (a CPU-only build on a GPU), with ``FASTFT_BACKEND=torch`` or :data:`USE_EXTENSION` = False,
it runs :mod:`fastft.optim._reference`: torch's fused AdamW kernel fed a foreach norm and a device-side
clip coefficient, the same math to fp32 rounding and, like the op, no host sync (unlike the op, it
leaves the unscaled, clipped grads in fp32 ``.grad`` tensors, as ``clip_grad_norm_`` would).

Semantics per step, over all params that have a grad (all groups together):

* ``norm = ||g||_2 / grad_scale`` (fp32 accumulation) -- the pre-clip norm of the unscaled grads,
  left in :attr:`FusedAdamW.grad_norm` as a 0-dim tensor on the param device (no host sync);
* if any grad is inf/NaN (or ``torch.amp.GradScaler`` found one), nothing changes -- params, states
  and step counts -- and :attr:`FusedAdamW.found_inf` is 1.0 (GradScaler semantics);
* else ``g_hat = g / grad_scale * min(1, max_grad_norm / (norm + 1e-6))`` and, per group,
  ``p *= 1 - lr*wd; m = lerp(m, g_hat, 1-b1); v = b2*v + (1-b2)*g_hat^2;
  p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``.

States are fp32 for every param dtype (fp32/fp16/bf16) and use torch AdamW's keys (``step``,
``exp_avg``, ``exp_avg_sq``), so ``state_dict()`` loads into ``torch.optim.AdamW`` and back.

For DTensor params (FSDP2) the op runs on the local shards in two phases: local sum of squares, an
all-reduce over the mesh dims the grads are sharded on, then the update with the global norm -- so the
clip coefficient is the single-process one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from fastft import _ext
from fastft._backend import current_backend, log_once
from fastft.optim import _reference

__all__ = ["FusedAdamW", "USE_EXTENSION"]

#: Set to False to force the plain-torch path (tests use it); ``FASTFT_BACKEND=torch`` does the same.
USE_EXTENSION = True

try:  # DTensor exists in every supported torch, but torch.distributed can be compiled out
    from torch.distributed.tensor import DTensor
except Exception:  # pragma: no cover
    DTensor = None  # type: ignore[assignment, misc]


def _is_dtensor(t: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if _is_dtensor(t) else t


def _ext_ops(device: torch.device) -> Any | None:
    """``torch.ops.fastft`` when the extension can run on ``device``, else None (logged once)."""
    if not USE_EXTENSION or current_backend() == "torch":
        log_once("fused_adamw", "torch path (forced): torch._fused_adamw_ + foreach clip")
        return None
    if not _ext.available():
        _ext.warn_missing("FusedAdamW")
        return None
    if not torch._C._dispatch_has_kernel_for_dispatch_key("fastft::fused_adamw_", device.type.upper()):
        log_once(
            "fused_adamw",
            f"falls back to torch._fused_adamw_ + foreach clip: fastft._C was built without {device.type} kernels",
        )
        return None
    return torch.ops.fastft


class FusedAdamW(Optimizer):
    """AdamW with decoupled weight decay, optional global grad-norm clipping, and AMP unscaling, fused.

    Args:
        params: parameters or param-group dicts (each group may set lr, betas, eps, weight_decay).
        lr, betas, eps, weight_decay: as in ``torch.optim.AdamW``.
        max_grad_norm: clip the global L2 norm of all grads (all groups) to this value, like
            ``torch.nn.utils.clip_grad_norm_``; None disables clipping.

    After ``step()``: ``grad_norm`` is the pre-clip global norm of the unscaled grads and ``found_inf``
    is 1.0 if the step was skipped for inf/NaN grads, else 0.0 (0-dim fp32 tensors on the param device).
    Works with ``torch.amp.GradScaler`` (it hands its scale and inf flag to ``step``, which unscales inside
    the fused op) and with any ``torch.optim.lr_scheduler``.
    """

    # GradScaler.step then skips its host-synchronising `.item()` and instead sets `self.grad_scale` /
    # `self.found_inf` for the duration of step() (torch >= 2.1 contract); unscaling happens inside the op.
    # (GradScaler still runs its own inf-check pass over the grads first, as it does for torch's fused AdamW.)
    _step_supports_amp_scaling = True

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        max_grad_norm: float | None = None,
    ) -> None:
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("lr as a Tensor must have exactly one element")
        if not 0.0 <= float(lr):
            raise ValueError(f"invalid learning rate {lr}: must be >= 0")
        if not 0.0 <= eps:
            raise ValueError(f"invalid eps {eps}: must be >= 0")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}: both must be in [0, 1)")
        if not 0.0 <= weight_decay:
            raise ValueError(f"invalid weight_decay {weight_decay}: must be >= 0")
        if max_grad_norm is not None and not max_grad_norm > 0.0:
            raise ValueError(
                f"invalid max_grad_norm {max_grad_norm}: must be > 0, or None to disable clipping"
            )
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if not p.is_floating_point():
                    raise ValueError(
                        f"FusedAdamW: param {pi} of group {gi} has dtype {p.dtype}; only floating-point "
                        "params can be optimized (pass only model.parameters() that require grad)"
                    )
        self.max_grad_norm = max_grad_norm
        self.grad_norm: torch.Tensor | None = None
        self._found_inf: torch.Tensor | None = None
        self._amp_found_inf: torch.Tensor | None = None

    # GradScaler assigns `optimizer.found_inf` before step() and deletes it afterwards; the property
    # routes that to `_amp_found_inf` so `opt.found_inf` keeps reporting this optimizer's own result.
    @property
    def found_inf(self) -> torch.Tensor | None:
        """1.0 if the last step was skipped (inf/NaN grads), else 0.0; a 0-dim fp32 tensor."""
        return self._found_inf

    @found_inf.setter
    def found_inf(self, value: torch.Tensor | None) -> None:
        self._amp_found_inf = value

    @found_inf.deleter
    def found_inf(self) -> None:
        self._amp_found_inf = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("max_grad_norm", None)
        self.__dict__.setdefault("grad_norm", None)
        self.__dict__.setdefault("_found_inf", None)
        self.__dict__.setdefault("_amp_found_inf", None)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``FusedAdamW`` or ``torch.optim.AdamW`` state dict, keeping fp32 states and steps."""
        for g in state_dict["param_groups"]:
            if g.get("amsgrad") or g.get("maximize"):
                raise ValueError("FusedAdamW cannot load an AdamW state with amsgrad=True or maximize=True")
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        saved_state = state_dict["state"]
        super().load_state_dict(state_dict)
        # torch casts loaded states to the param dtype (bf16 params -> bf16 moments); re-read them from
        # the source so fp32 moments survive a round trip exactly.
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            src = saved_state.get(pid)
            if not src:
                continue
            st = self.state[p]
            for key in ("exp_avg", "exp_avg_sq"):
                if key in src:
                    st[key] = src[key].detach().to(device=p.device, dtype=torch.float32, copy=True)
            if "step" in src:
                st["step"] = torch.tensor(float(src["step"]), dtype=torch.float32, device=_local(p).device)

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        st = self.state[p]
        if len(st) == 0:
            st["step"] = torch.zeros((), dtype=torch.float32, device=_local(p).device)
            # zeros_like keeps DTensor-ness, so FSDP2 checkpoints shard the moments like torch AdamW does
            st["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        return st

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """One fused step over every param with a grad. Returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # bucket: (device, mesh, shard dims) -> lists. Buckets share one global norm.
        buckets: dict[Any, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        "FusedAdamW does not support sparse gradients; use torch.optim.SparseAdam"
                    )
                st = self._init_state(p)
                key = (_local(p).device, *_shard_key(p))
                b = buckets[key]
                b["params"].append(_local(p))
                b["grads"].append(_local(p.grad))
                b["exp_avgs"].append(_local(st["exp_avg"]))
                b["exp_avg_sqs"].append(_local(st["exp_avg_sq"]))
                b["state_steps"].append(st["step"])
                b["lrs"].append(float(group["lr"]))
                b["beta1s"].append(float(b1))
                b["beta2s"].append(float(b2))
                b["epss"].append(float(group["eps"]))
                b["weight_decays"].append(float(group["weight_decay"]))
        if not buckets:
            return loss

        grad_scale = getattr(self, "grad_scale", None)  # set by torch.amp.GradScaler around step()
        amp_found_inf = self._amp_found_inf
        kw = dict(max_norm=self.max_grad_norm)
        if len(buckets) == 1 and next(iter(buckets))[1] is None:
            # the common case: one device, no sharding -> one fused call
            (dev, _, _), b = next(iter(buckets.items()))
            ops = _ext_ops(dev) if _all_contiguous(b) else None
            fused = ops.fused_adamw_ if ops is not None else _reference.fused_adamw_
            norm, found = fused(**b, **kw, **_on(dev, grad_scale=grad_scale, found_inf=amp_found_inf))
        else:
            norm, found = self._phased_step(buckets, kw, grad_scale, amp_found_inf)
        self.grad_norm, self._found_inf = norm, found
        return loss

    def _phased_step(self, buckets, kw, grad_scale, amp_found_inf):
        """Several devices and/or sharded params: local stats, all-reduce, sum, then update each bucket."""
        total = None
        impl = {}
        for key, b in buckets.items():
            dev, mesh, shard_dims = key
            ops = _ext_ops(dev) if _all_contiguous(b) else None
            impl[key] = ops
            stats = (ops.grad_sumsq if ops is not None else _reference.grad_sumsq)(b["grads"])
            if mesh is not None:
                for d in shard_dims:
                    torch.distributed.all_reduce(stats, group=mesh.get_group(d))
            total = stats if total is None else total + stats.to(total.device)
        out = None  # every bucket reports the same global norm / flag
        for key, b in buckets.items():
            dev = key[0]
            update = impl[key].adamw_update_ if impl[key] is not None else _reference.adamw_update_
            res = update(
                **b, stats=total.to(dev), **kw, **_on(dev, grad_scale=grad_scale, found_inf=amp_found_inf)
            )
            out = res if out is None else out
        return out


def _shard_key(p: torch.Tensor) -> tuple[Any, tuple[int, ...] | None]:
    """(mesh, mesh dims the grad is sharded over) for DTensors, (None, None) for plain tensors."""
    if not _is_dtensor(p):
        return None, None
    g = p.grad
    placements = g.placements if _is_dtensor(g) else p.placements
    if any(pl.is_partial() for pl in placements):
        raise RuntimeError(
            "FusedAdamW: DTensor grad with a Partial placement; reduce the grads first (FSDP2 does this)"
        )
    return p.device_mesh, tuple(i for i, pl in enumerate(placements) if pl.is_shard())


def _all_contiguous(b: dict[str, list]) -> bool:
    ok = all(t.is_contiguous() for k in ("params", "grads", "exp_avgs", "exp_avg_sqs") for t in b[k])
    if not ok:
        log_once("fused_adamw", "falls back to torch: a param, grad or state is not contiguous")
    return ok


def _on(dev: torch.device, **scalars: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """GradScaler's scale / inf flag as fp32 one-element tensors on ``dev`` (non-blocking copies)."""
    out = {}
    for k, t in scalars.items():
        if t is not None:
            t = t.to(device=dev, dtype=torch.float32, non_blocking=True).reshape(())
        out[k] = t
    return out
