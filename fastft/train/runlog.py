"""Run logging: progress bar / plain lines, ``metrics.jsonl``, TensorBoard, the training-curve PNG.

Only the main process (rank 0) creates a :class:`RunLogger` with ``enabled=True``; on the other
ranks every method is a no-op, so the trainer calls it unconditionally.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

from fastft.train.metrics_log import read_records

__all__ = ["RunLogger", "plot_curves", "fmt_duration"]


def fmt_duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def _num(v: Any) -> Any:
    """JSON-friendly numbers (no NaN/inf, which json would write as invalid tokens)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunLogger:
    def __init__(
        self,
        output_dir: str | None,
        *,
        enabled: bool = True,
        total_steps: int = 0,
        start_step: int = 0,
        report_to: str = "none",
        tty: bool | None = None,
        stream=None,
    ) -> None:
        self.enabled = enabled and output_dir is not None
        self.output_dir = output_dir
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = total_steps
        self.bar = None
        self.tb = None
        self._t0 = time.perf_counter()
        self._start_step = start_step
        if not self.enabled:
            return
        self.metrics_path = os.path.join(output_dir, "metrics.jsonl")
        if self.tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_steps,
                initial=start_step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                file=self.stream,
                leave=True,
            )
        if report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.print(
                    "tensorboard is not installed (pip install fastft[tensorboard]); not logging to it"
                )
            else:
                self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    # ----------------------------------------------------------------------------------------------
    def print(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)
        else:
            print(msg, file=self.stream, flush=True)

    def event(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl (and TensorBoard scalars)."""
        if not self.enabled:
            return
        record = {k: _num(v) for k, v in record.items()}
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None and "step" in record:
            prefix = record.get("type", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step",):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def step(
        self,
        step: int,
        *,
        loss: float | None = None,
        lr: float | None = None,
        samples_per_s: float | None = None,
        epoch: float | None = None,
        line: bool = False,
    ) -> None:
        """Advance the progress bar to ``step``; with ``line`` (every logging_steps) print a plain line
        when there is no TTY."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = step
            post = {}
            if loss is not None:
                post["loss"] = f"{loss:.4f}"
            if lr is not None:
                post["lr"] = f"{lr:.2e}"
            if samples_per_s is not None:
                post["samples/s"] = f"{samples_per_s:.1f}"
            self.bar.set_postfix(post, refresh=False)
            self.bar.refresh()
        elif line:
            elapsed = time.perf_counter() - self._t0
            done = max(step - self._start_step, 1)
            eta = elapsed / done * (self.total - step) if self.total else float("nan")
            parts = [f"step {step}/{self.total}"]
            if epoch is not None:
                parts.append(f"epoch {epoch:.2f}")
            if loss is not None:
                parts.append(f"loss {loss:.4f}")
            if lr is not None:
                parts.append(f"lr {lr:.2e}")
            if samples_per_s is not None:
                parts.append(f"{samples_per_s:.1f} samples/s")
            parts.append(f"elapsed {fmt_duration(elapsed)}")
            parts.append(f"ETA {fmt_duration(eta)}")
            print(" | ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None


def plot_curves(metrics_path: str, out_png: str, metric: str | None = None) -> str | None:
    """Training loss (and eval loss / ``metric``) against the optimizer step, as a PNG (matplotlib Agg)."""
    records = read_records(metrics_path)
    train = [r for r in records if r.get("type") == "train" and r.get("loss") is not None]
    evals = [r for r in records if r.get("type") == "eval"]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    has_metric = metric is not None and any(r.get(metric) is not None for r in evals)
    fig, axes = plt.subplots(1, 2 if has_metric else 1, figsize=(10 if has_metric else 6, 4), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    ev = [r for r in evals if r.get("loss") is not None]
    if ev:
        ax.plot([r["step"] for r in ev], [r["loss"] for r in ev], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if has_metric:
        ax2 = axes[0][1]
        em = [r for r in evals if r.get(metric) is not None]
        ax2.plot([r["step"] for r in em], [r[metric] for r in em], "o-", color="tab:green")
        ax2.set_xlabel("optimizer step")
        ax2.set_ylabel(f"eval {metric}")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
