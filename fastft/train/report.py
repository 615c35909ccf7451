"""What a run prints: the start-up report (resolved config, summary, notes) and the final banner."""

from __future__ import annotations

import json
import sys
import textwrap

import torch

from fastft.train.runlog import RunLogger, fmt_duration
from fastft.train.setup import Run
from fastft.train.trackers import parse_report_to

__all__ = ["open_log", "summary_lines", "print_final", "kernel_report", "peak_memory_mb"]


def kernel_report() -> dict | None:
    """``fastft.report()`` (which path each fused op takes), ``None`` when it is unavailable."""
    try:
        from fastft._backend import report

        return report()
    except Exception:  # noqa: BLE001
        return None


def open_log(run: Run) -> None:
    """Open metrics.jsonl (and tensorboard), print the start-up report, call ``on_start``."""
    cfg = run.cfg
    run.log = RunLogger(
        cfg.output_dir,
        enabled=run.is_main,
        total_steps=run.plan.total_steps,
        start_step=run.state.global_step,
        report_to="tensorboard" if "tensorboard" in parse_report_to(cfg.report_to) else "none",
    )
    items = ", ".join(f"{k}={json.dumps(v)}" for k, v in cfg.to_dict().items())
    run.log.print("resolved config (saved as train_config.json):")
    run.log.print(textwrap.fill(items, width=110, initial_indent="  ", subsequent_indent="  "))
    for line in summary_lines(run) + run.notes:
        run.log.print(line)
    run.callbacks.on_start(cfg.to_dict(), cfg.output_dir, run.resumed_from is not None)


def summary_lines(run: Run) -> list[str]:
    """The start-up summary: model, params, task, data, strategy, steps, optimizer, precision, ..."""
    cfg, raw, plan = run.cfg, run.raw_model, run.plan
    n_total = sum(p.numel() for p in raw.parameters())
    n_train = sum(p.numel() for p in raw.parameters() if p.requires_grad)
    rep = run.data.report or {}
    sizes = {k: len(v) for k, v in run.data.splits.items() if v is not None}
    ops = kernel_report() or {}
    lines = [
        "fastft train",
        f"  model      {cfg.model} ({type(raw).__name__}, {run.model_config.model_type})",
        f"  params     {n_total / 1e6:.2f}M, trainable {n_train / 1e6:.3f}M ({100 * n_train / max(n_total, 1):.2f}%)",
        f"  task       {run.task.describe(run.labels)}",
        f"  data       {cfg.dataset or cfg.train_file}: " + ", ".join(f"{k} {v}" for k, v in sizes.items()),
    ]
    dropped = {k: v for k, v in rep.items() if "drop" in k or "duplicate" in k or "empty" in k}
    if dropped:
        lines.append(f"  cleaning   {json.dumps(dropped, default=str)}")
    lines += [
        f"  strategy   {cfg.strategy}"
        + (f", freeze {cfg.freeze_layers} layers" if cfg.freeze_layers else "")
        + (f", LLRD {cfg.layer_lr_decay}" if cfg.layer_lr_decay != 1.0 else "")
        + (f", LoRA r={cfg.lora_r} alpha={cfg.lora_alpha}" if cfg.strategy == "lora" else "")
        + (f", KD from {cfg.teacher} (T={cfg.kd_temperature}, alpha={cfg.kd_alpha})" if cfg.teacher else ""),
        f"  steps      {plan.total_steps} optimizer steps ({plan.steps_per_epoch}/epoch, {plan.num_epochs} epoch(s)), "
        f"batch {cfg.batch_size} x accum {cfg.grad_accum} x {run.world} process(es), warmup {plan.warmup}, {cfg.scheduler}",
        f"  optimizer  {run.optimizer_kind}, lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}, max grad norm {cfg.max_grad_norm:g}",
        f"  precision  {run.precision} on {run.device}"
        + (", gradient checkpointing" if cfg.gradient_checkpointing else ""),
        "  fused      "
        + (
            ", ".join(run.fused_parts)
            if run.fused_parts
            else ("off (--no-fused)" if not cfg.fused else "no fused part applies to this model")
        ),
    ]
    if ops:
        lines.append("  kernels    " + "; ".join(f"{k}: {v}" for k, v in sorted(ops.items())))
    lines.append(f"  output     {cfg.output_dir}")
    if run.resumed_from is not None:
        s = run.state
        lines.append(
            f"  resume     {run.resumed_from} (step {s.global_step}, epoch {s.epoch}, batch {s.batch_in_epoch})"
        )
    return lines


def print_final(run: Run, results: dict) -> None:
    """The final banner: the task's headline on the test split, where everything was written."""
    test = results.get("test") or {}
    head = run.task.headline(test) or "no test split: see the validation metrics in results.json"
    n = len(run.data.splits.get("test") or [])
    print("=" * 72)
    print(head + (f"  (n={n} test rows)" if n else ""))
    print(
        f"trained {results['global_step']} steps in {fmt_duration(results['train_runtime_s'])}; "
        f"model, metrics.jsonl, training_curve.png and results.json in {run.cfg.output_dir}"
    )
    kernels = results.get("kernels") or {}
    if kernels or run.fused_parts:
        print(
            "fused paths: "
            + (", ".join(run.fused_parts) or "none")
            + (" | " + "; ".join(f"{k}: {v}" for k, v in sorted(kernels.items())) if kernels else "")
        )
    print("=" * 72, flush=True)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA max allocated on a GPU, else the process's max RSS (this process's peak, tests share it)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)
