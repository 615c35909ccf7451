"""Where a ``fastft train`` step spends its CPU time, against the HF Trainer at its best.

    python -m bench.profile_step                      # both trainers, 3 warm-up + 3 x 12 steps each
    python -m bench.profile_step --sides fastft --steps 20 --out /tmp/profile.json

Each side is one real training run of the default (``TrainConfig()``: all-MiniLM-L6-v2 on
Rotten Tomatoes, batch 32, max_length 64, fp32, no evaluation) through its own trainer: fastft's
``Trainer`` and ``transformers.Trainer`` as ``bench.e2e_cpu_train.build_hf_trainer`` builds it
(length grouping, ``adamw_torch_fused``, sdpa). A global torch optimizer post-step hook cuts the
run into windows of ``--steps`` optimizer steps after ``--warmup`` steps:

1. ``time``: no profiler; process CPU ms and wall ms per step (the honest step cost);
2. ``torch``: ``torch.profiler`` (CPU activity): self CPU time per aten op, grouped into buckets
   (GEMM, attention, index/unpad/pad work, host syncs, elementwise, ...) and the optimizer's
   ``Optimizer.step#...`` range;
3. ``cprofile``: ``cProfile`` with ``time.process_time`` as its clock: cumulative CPU time of
   the Python functions of interest (fastft's patch hooks, collation, logging, optimizer,
   forward, backward). cProfile inflates Python-heavy code, so read its shares, not its ms.

The step's fraction of the fp32 matmul peak: model FLOPs per step (``bench.e2e_data``'s count:
6 per dense weight per real token + attention, from the train split's mean length and mean
squared length) / wall time per step / the box's measured fp32 GEMM peak (``measure_peaks``: a
big ``torch.mm``). The GEMMs' own efficiency (same FLOPs / the profiler's GEMM time) says how
much of the gap is the GEMMs and how much is everything around them. On a loaded machine wall
times are inflated: compare CPU times, and re-run on a quiet one for the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from bench.common import environment, measure_peaks
from bench.e2e_cpu_train import build_hf_trainer
from bench.e2e_data import matmul_param_flops_per_token

MODES = ("time", "torch", "cprofile")

# aten op name -> bucket, by substring, first match wins (self CPU time, so no double counting)
OP_BUCKETS = (
    ("gemm", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn", "aten::linear")),
    ("attention", ("scaled_dot_product", "flash", "efficient_attention", "fastft::", "attention")),
    (
        "index/unpad/pad",
        (
            "aten::index",
            "aten::nonzero",
            "aten::masked",
            "aten::gather",
            "aten::scatter",
            "aten::cumsum",
            "aten::argsort",
            "aten::sort",
            "aten::take",
            "aten::embedding_dense_backward",
            "aten::embedding",
        ),
    ),
    ("host sync (.item/bool)", ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal")),
    ("optimizer kernel", ("_fused_adamw", "fastft_adamw", "adamw", "_foreach", "aten::_fused")),
    ("softmax/loss", ("softmax", "cross_entropy", "nll_loss", "log_softmax")),
    ("layernorm/gelu/dropout", ("layer_norm", "gelu", "dropout", "native_layer_norm", "bernoulli")),
    ("copy/alloc/view", ("aten::copy_", "aten::empty", "aten::zeros", "aten::to", "aten::contiguous",
                         "aten::clone", "aten::cat", "aten::stack", "aten::fill_", "aten::zero_",
                         "aten::view", "aten::reshape", "aten::transpose", "aten::permute",
                         "aten::expand", "aten::slice", "aten::select", "aten::as_strided",
                         "aten::_to_copy", "aten::detach", "aten::t", "aten::unsqueeze",
                         "aten::split", "aten::narrow", "aten::pad", "aten::constant_pad_nd")),
    ("elementwise/reduce", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::sum",
                            "aten::mean", "aten::tanh", "aten::where", "aten::eq", "aten::ne",
                            "aten::pow", "aten::sqrt", "aten::norm", "aten::linalg", "aten::rsub",
                            "aten::ge", "aten::lt", "aten::max", "aten::min", "aten::neg",
                            "aten::clamp", "aten::abs", "aten::isfinite", "aten::logical", "aten::any",
                            "aten::all", "aten::threshold", "aten::exp", "aten::log", "aten::fill",
                            "aten::ones", "aten::arange", "aten::full", "aten::lerp", "aten::addc")),
)  # fmt: skip

# (label, path fragment, function name or None for every function in the file) for cProfile
PY_FUNCS = (
    ("model forward (whole)", "torch/nn/modules/module.py", "_call_impl"),
    ("backward (whole)", "torch/_tensor.py", "backward"),
    ("optimizer.step (whole)", "torch/optim/optimizer.py", "wrapper"),
    ("fastft patch: attention forward", "fastft/patching/attention.py", "fastft_attention_forward"),
    ("fastft patch: unpadded attention", "fastft/patching/attention.py", "_unpadded_attention"),
    ("fastft patch: unpad state (index work)", "fastft/patching/attention.py", "_unpad_state"),
    ("fastft patch: pack pre-hook", "fastft/patching/attention.py", "_pack_pre_hook"),
    ("fastft patch: unpack hook", "fastft/patching/attention.py", "_unpack_hook"),
    ("fastft patch: mask check", "fastft/patching/attention.py", "_mask_reason"),
    ("fastft patch: is_packed check", "fastft/patching/attention.py", "_is_packed"),
    ("fastft patch: mask fn", "fastft/patching/attention.py", "fastft_mask"),
    ("fastft patch: loss hooks", "fastft/patching/loss.py", None),
    ("fastft ops: varlen torch path (pad/SDPA/pack)", "fastft/ops/attention.py", "_varlen_reference"),
    ("fastft ops: pad_input", "fastft/ops/attention.py", "pad_input"),
    ("fastft ops: reference SDPA", "fastft/ops/attention.py", "reference_attention"),
    ("fastft ops: cross entropy", "fastft/ops/cross_entropy.py", None),
    ("fastft backend dispatch", "fastft/_backend.py", None),
    ("fastft FusedAdamW", "fastft/optim/fused_adamw.py", None),
    ("fastft collation/loader", "fastft/train/data.py", None),
    ("fastft logging", "fastft/train/runlog.py", None),
    ("fastft trainer _step", "fastft/train/trainer.py", "_step"),
    ("fastft trainer _loss", "fastft/train/trainer.py", "_loss"),
    ("HF collator", "transformers/data/data_collator.py", None),
    ("HF tokenizer pad", "transformers/tokenization_utils_base.py", "pad"),
    ("HF Trainer training_step", "transformers/trainer.py", "training_step"),
    ("HF Trainer logging", "transformers/trainer.py", "_maybe_log_save_evaluate"),
    ("HF grad clipping", "torch/nn/utils/clip_grad.py", None),
    ("HF masks (masking_utils)", "transformers/masking_utils.py", None),
    ("HF attention forward (sdpa)", "transformers/integrations/sdpa_attention.py", "sdpa_attention_forward"),
    ("datasets __getitem__", "datasets/arrow_dataset.py", "__getitems__"),
    ("DataLoader next", "torch/utils/data/dataloader.py", "__next__"),
)


class Windows:
    """Optimizer-step hook that runs each mode's instrument over its window of steps."""

    def __init__(self, warmup: int, steps: int, modes: tuple[str, ...]) -> None:
        self.bounds = [(m, warmup + i * steps, warmup + (i + 1) * steps) for i, m in enumerate(modes)]
        self.total = warmup + steps * len(modes)
        self.count = 0
        self.owner: int | None = None
        self.clock: dict[str, dict[str, float]] = {}
        self.torch_prof: torch.profiler.profile | None = None
        self.cprof: cProfile.Profile | None = None

    def __call__(self, opt, args, kwargs) -> None:
        if self.owner is None:
            self.owner = id(opt)
        if id(opt) != self.owner:
            return
        self.count += 1
        now = (time.process_time(), time.perf_counter())
        for mode, _a, b in self.bounds:  # stop the ending window before starting the next
            if self.count == b:
                self._stop(mode, now)
        for mode, a, _b in self.bounds:
            if self.count == a:
                self._start(mode)

    def _start(self, mode: str) -> None:
        if mode == "torch":
            self.torch_prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.torch_prof.start()
        elif mode == "cprofile":
            self.cprof = cProfile.Profile(time.process_time)
            self.cprof.enable()
        self.clock[mode] = {"c0": time.process_time(), "w0": time.perf_counter()}

    def _stop(self, mode: str, now: tuple[float, float]) -> None:
        if mode == "torch" and self.torch_prof is not None:
            self.torch_prof.stop()
        elif mode == "cprofile" and self.cprof is not None:
            self.cprof.disable()
        self.clock[mode].update(c1=now[0], w1=now[1])


def _bucket(name: str) -> str:
    for label, keys in OP_BUCKETS:
        if any(k in name for k in keys):
            return label
    return "other ops"


def torch_summary(prof: torch.profiler.profile, steps: int, top: int = 25) -> dict[str, Any]:
    """Self CPU ms per step by bucket and the top ops, plus the optimizer's whole range."""
    rows = prof.key_averages()
    buckets: dict[str, float] = {}
    ops = []
    optimizer_range = zero_grad_range = 0.0
    for r in rows:
        if r.key.startswith("Optimizer.step"):
            optimizer_range += r.cpu_time_total
            continue
        if r.key.startswith("Optimizer.zero_grad"):
            zero_grad_range += r.cpu_time_total
            continue
        ms = r.self_cpu_time_total / 1e3 / steps
        buckets[_bucket(r.key)] = buckets.get(_bucket(r.key), 0.0) + ms
        ops.append((r.key, ms, r.count / steps))
    ops.sort(key=lambda t: -t[1])
    return {
        "self_ms_per_step_by_bucket": dict(sorted(buckets.items(), key=lambda kv: -kv[1])),
        "op_ms_per_step_total": sum(buckets.values()),
        "optimizer_step_range_ms_per_step": optimizer_range / 1e3 / steps,
        "zero_grad_range_ms_per_step": zero_grad_range / 1e3 / steps,
        "top_ops": [{"op": k, "self_ms_per_step": ms, "calls_per_step": c} for k, ms, c in ops[:top]],
    }


def cprofile_summary(prof: cProfile.Profile, steps: int, top: int = 25) -> dict[str, Any]:
    """Cumulative CPU ms per step of the functions in ``PY_FUNCS`` (outermost calls only, as
    pstats reports), and the top functions by own time."""
    st = pstats.Stats(prof, stream=io.StringIO())
    found: dict[str, float] = {}
    own = []
    for (path, _line, fn), (_cc, _nc, tt, ct, _callers) in st.stats.items():
        p = path.replace(os.sep, "/")
        own.append((f"{p.rsplit('site-packages/', 1)[-1]}:{fn}", tt * 1e3 / steps))
        for label, frag, name in PY_FUNCS:
            if frag in p and (name is None or fn == name):
                if name is None:  # a whole file: its functions' own time (no double counting)
                    found[label] = found.get(label, 0.0) + tt * 1e3 / steps
                else:
                    found[label] = max(found.get(label, 0.0), ct * 1e3 / steps)
    own.sort(key=lambda t: -t[1])
    return {
        "total_ms_per_step": st.total_tt * 1e3 / steps,
        "functions_ms_per_step": found,
        "top_own_time": [{"function": k, "own_ms_per_step": v} for k, v in own[:top]],
    }


def flops_per_step(cfg, model_path: str, train) -> dict[str, float]:
    """Model FLOPs of one optimizer step (mean over the train split's rows)."""
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=2, trust_remote_code=False
    )
    lens = [len(x) for x in train["input_ids"]]
    per_tok = matmul_param_flops_per_token(model)
    c = model.config
    mean_len, mean_sq = statistics.fmean(lens), statistics.fmean(n * n for n in lens)
    rows = cfg.batch_size * cfg.grad_accum
    dense = per_tok * mean_len * rows
    attn = 12 * c.num_hidden_layers * c.hidden_size * mean_sq * rows
    return {"flops": dense + attn, "dense": dense, "attention": attn, "mean_len": mean_len, "rows": rows}


def run_side(side: str, base, tokenizer, warmup: int, steps: int, modes: tuple[str, ...]) -> dict[str, Any]:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    win = Windows(warmup, steps, modes)
    cfg = dataclasses.replace(base, max_steps=win.total, output_dir=tempfile.mkdtemp(prefix=f"prof-{side}-"))
    handle = register_optimizer_step_post_hook(win)
    try:
        if side == "fastft":
            from fastft.train import Trainer

            Trainer(cfg).train()
        else:
            trainer, _, _ = build_hf_trainer(cfg, tokenizer)
            trainer.train()
    finally:
        handle.remove()
    out: dict[str, Any] = {"windows": {}}
    for mode in modes:
        ck = win.clock.get(mode, {})
        if "c1" not in ck:
            out["windows"][mode] = {"error": "window not reached"}
            continue
        w = {
            "cpu_ms_per_step": (ck["c1"] - ck["c0"]) * 1e3 / steps,
            "wall_ms_per_step": (ck["w1"] - ck["w0"]) * 1e3 / steps,
        }
        if mode == "torch" and win.torch_prof is not None:
            w.update(torch_summary(win.torch_prof, steps))
        if mode == "cprofile" and win.cprof is not None:
            w.update(cprofile_summary(win.cprof, steps))
        out["windows"][mode] = w
    return out


def _print_side(side: str, res: dict[str, Any], fl: dict[str, float], peak_tflops: float) -> None:
    w = res["windows"]
    t = w.get("time", {})
    print(f"\n=== {side} ===")
    if "cpu_ms_per_step" in t:
        frac = fl["flops"] / (t["wall_ms_per_step"] / 1e3) / (peak_tflops * 1e12)
        print(
            f"step: {t['cpu_ms_per_step']:.1f} ms CPU, {t['wall_ms_per_step']:.1f} ms wall; "
            f"{fl['flops'] / 1e9:.1f} GFLOP/step -> {100 * frac:.1f}% of the fp32 matmul peak (wall)"
        )
    tp = w.get("torch", {})
    if "self_ms_per_step_by_bucket" in tp:
        print(f"torch.profiler (self CPU ms/step; ops total {tp['op_ms_per_step_total']:.1f}, "
              f"window {tp['cpu_ms_per_step']:.1f} CPU / {tp['wall_ms_per_step']:.1f} wall):")  # fmt: skip
        for k, v in tp["self_ms_per_step_by_bucket"].items():
            print(f"  {k:<28} {v:8.2f}")
        print(f"  [Optimizer.step range {tp['optimizer_step_range_ms_per_step']:.2f}, "
              f"zero_grad range {tp['zero_grad_range_ms_per_step']:.2f}]")  # fmt: skip
        gemm = tp["self_ms_per_step_by_bucket"].get("gemm")
        if gemm:
            eff = fl["flops"] / (gemm / 1e3) / (peak_tflops * 1e12)
            print(f"  GEMMs alone run at {100 * eff:.0f}% of the measured peak (model FLOPs / GEMM time)")
        print("  top ops:")
        for o in tp["top_ops"][:15]:
            print(f"    {o['op']:<44} {o['self_ms_per_step']:8.2f} ms  x{o['calls_per_step']:.0f}")
    cp = w.get("cprofile", {})
    if "functions_ms_per_step" in cp:
        print(f"cProfile (process CPU ms/step, inflated by cProfile; total {cp['total_ms_per_step']:.1f}):")
        for k, v in cp["functions_ms_per_step"].items():
            print(f"  {k:<40} {v:8.2f}  ({100 * v / max(cp['total_ms_per_step'], 1e-9):.1f}%)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--sides", default="fastft,hf", help="fastft,hf (default both)")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per window (default 12)")
    p.add_argument("--warmup", type=int, default=3, help="steps before the first window (default 3)")
    p.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    p.add_argument("--out", default=None, help="also write the raw figures to this JSON file")
    args = p.parse_args(argv)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = [s for s in sides if s not in ("fastft", "hf")] + [m for m in modes if m not in MODES]
    if bad or args.steps < 1 or args.warmup < 1:
        print(
            f"python -m bench.profile_step: bad value(s) {bad or [args.steps, args.warmup]}", file=sys.stderr
        )
        raise SystemExit(2)
    import transformers

    from fastft.train import TrainConfig
    from fastft.train.data.pipeline import prepare_data

    base = TrainConfig(device="cpu", eval_strategy="no", save_total_limit=1, max_eval_samples=64).resolved()
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        base.tokenizer or base.model, trust_remote_code=False
    )
    train = prepare_data(dataclasses.replace(base, output_dir=tempfile.mkdtemp()), tokenizer).splits["train"]
    fl = flops_per_step(base, base.model, train)
    peaks = measure_peaks(torch.device("cpu"))
    print(f"fp32 matmul peak {peaks['matmul_tflops']:.3f} TFLOP/s (torch.mm n={peaks['matmul_n']}), "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    report: dict[str, Any] = {"environment": environment("cpu"), "peaks": peaks, "flops_per_step": fl}
    report["args"] = vars(args)
    for side in sides:
        with contextlib.redirect_stdout(sys.stderr):  # the trainers' own output
            report[side] = run_side(side, base, tokenizer, args.warmup, args.steps, modes)
        _print_side(side, report[side], fl, peaks["matmul_tflops"])
    report["loadavg_end"] = os.getloadavg()[0]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
