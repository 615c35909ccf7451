"""The optimizer (parameter groups, weight decay, layer-wise LR) and the LR schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastft.train import strategies as strat

__all__ = ["lr_lambda", "Plan", "plan_steps", "build_optimizer", "build_scheduler"]


def lr_lambda(total: int, warmup: int, kind: str):
    """LR multiplier of an optimizer step: linear warmup, then linear / cosine decay or constant."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        progress = min(max(progress, 0.0), 1.0)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return f


@dataclass(frozen=True)
class Plan:
    """How long the run is, in loader batches and optimizer steps."""

    loader_len: int
    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    warmup: int


def plan_steps(cfg, loader_len: int) -> Plan:
    steps_per_epoch = max(1, math.ceil(loader_len / cfg.grad_accum))
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else int(cfg.warmup_ratio * total)
    return Plan(loader_len, steps_per_epoch, total, math.ceil(total / steps_per_epoch), min(warmup, total))


def build_optimizer(model, cfg) -> tuple[torch.optim.Optimizer, str, bool]:
    """-> (optimizer, its name, whether the trainer clips gradients itself). FusedAdamW clips inside
    its step; torch AdamW (``--no-fused`` or no fastft._C) is clipped by the trainer."""
    groups = strat.param_groups(model, cfg.lr, cfg.weight_decay, cfg.layer_lr_decay)
    if cfg.strategy == "lora":  # frozen base weights need no optimizer state at all
        groups = [g for g in groups if any(p.requires_grad for p in g["params"])]
        for g in groups:
            keep = [(n, p) for n, p in zip(g["param_names"], g["params"]) if p.requires_grad]
            g["param_names"] = [n for n, _ in keep]
            g["params"] = [p for _, p in keep]
    kw = dict(
        lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    if cfg.fused:
        try:
            from fastft.optim import FusedAdamW
        except ImportError:
            FusedAdamW = None
        if FusedAdamW is not None:
            return (
                FusedAdamW(groups, max_grad_norm=cfg.max_grad_norm or None, **kw),
                "fastft.FusedAdamW",
                False,
            )
    return torch.optim.AdamW(groups, **kw), "torch.optim.AdamW", cfg.max_grad_norm > 0


def build_scheduler(optimizer, plan: Plan, kind: str):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(plan.total_steps, plan.warmup, kind))
