"""The side-by-side step comparison of the end-to-end benchmarks: build each implementation on
identical weights, time its training steps on the same batches, and turn the timings into records
(speed, peak memory, rates against the device peaks, targets)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.common import device_name, peak_memory, summarize, sync, time_calls
from bench.records import add_ratios, make_record, not_available

PART = "e2e"
log = logging.getLogger("fastft.bench")

TARGETS = {
    "bert_cls": "≥2× hf samples/s at ≤0.6× peak memory (H100)",
    "gpt2_lora": "≥1.5× hf_peft tokens/s at ≤0.5× peak memory (H100)",
    "cpu_train": "≥1.1× hf_trainer (length-grouped, fused AdamW) samples/s at equal accuracy (CPU)",
}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def torch_adamw(params, device: torch.device, lr: float) -> torch.optim.Optimizer:
    """The fastest torch AdamW a careful user picks: ``fused=True`` (CUDA and, since torch 2.4, CPU)."""
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=0.01, fused=True)


def optimizer_desc(opt: torch.optim.Optimizer) -> str:
    """What actually ran: ``torch AdamW(fused=True)`` etc., read back from the optimizer itself."""
    d = opt.defaults
    kind = "fused=True" if d.get("fused") else ("foreach=True" if d.get("foreach") else "default loop")
    return f"torch.optim.{type(opt).__name__}({kind})"


def _fastft_optimizer(params, lr: float) -> tuple[torch.optim.Optimizer | None, str | None]:
    try:
        from fastft.optim import FusedAdamW
    except Exception as e:  # the optimizer part has not landed
        return None, f"fastft.optim.FusedAdamW unavailable ({type(e).__name__}: {e})"
    return FusedAdamW(params, lr=lr, weight_decay=0.01), None


def log_failure(what: str) -> None:
    """One WARNING line (the traceback at DEBUG: ``FASTFT_BENCH_DEBUG=1`` or logging config)."""
    log.warning("%s failed: %s", what, traceback.format_exc().strip().splitlines()[-1])
    log.debug("%s", traceback.format_exc())


def short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:200]


def _resident_bytes(model: nn.Module, opt: torch.optim.Optimizer, device: torch.device, base: int) -> int:
    """Bytes held between steps (weights, buffers, gradients, optimizer state).

    CUDA: the allocator's count now minus ``base`` (taken before the model was built). CPU: the
    allocator keeps no count, so the distinct storages of those tensors are summed (exact for
    them; Python objects and caches outside tensors are not included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device) - base
    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            if st.data_ptr() and st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()

    for p in model.parameters():
        add(p)
        add(p.grad)
    for b in model.buffers():
        add(b)
    for state in opt.state.values():
        for v in state.values():
            add(v)
    return total


@dataclasses.dataclass
class _Side:
    impl: str
    model: nn.Module
    opt: torch.optim.Optimizer
    step: Callable[[dict], Any]
    extra: dict
    resident: int = 0
    times: list = dataclasses.field(default_factory=list)
    peak: int | None = None
    error: str | None = None


def compare(
    builders: list[tuple[str, Callable[[], tuple[nn.Module, torch.optim.Optimizer, dict]]]],
    batches: list[dict],
    device: torch.device,
    rounds: int,
) -> tuple[list[_Side], dict[str, str]]:
    """Build every side, warm each up with one cycle over ``batches``, then time them in
    interleaved rounds (one whole cycle per side per round, order reversed every other round)
    so that load changes on a shared machine hit both sides alike; then measure peak memory.

    Peak memory of a side = its resident bytes (weights, grads, optimizer state) + the highest
    step allocation above what was allocated when its measured cycle started; this equals what the
    side would show running alone, although the other side's model stays alive meanwhile."""
    sides: list[_Side] = []
    failed: dict[str, str] = {}
    for impl, build in builders:
        try:
            base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            model, opt, extra = build()
            step = make_step(model, opt, device)
            for b in batches:  # warm-up: compilation, autotuning, optimizer state
                step(b)
            sync(device)
            sides.append(_Side(impl, model, opt, step, extra, _resident_bytes(model, opt, device, base)))
        except Exception as e:
            log_failure(f"e2e {impl} set-up")
            failed[impl] = short_error(e)
            model = opt = None
            free_memory(device)
    k = len(batches)
    for r in range(rounds):
        for s in sides if r % 2 == 0 else sides[::-1]:
            if s.error:
                continue
            it = iter(batches)
            try:
                s.times += time_calls(lambda s=s, it=it: s.step(next(it)), k, device)
            except Exception as e:
                log_failure(f"e2e {s.impl} step")
                s.error = short_error(e)
    for s in sides:
        if s.error:
            continue
        cycle = lambda s=s: [s.step(b) for b in batches]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            cycle()
            torch.cuda.synchronize(device)
            above = torch.cuda.max_memory_allocated(device) - start
        else:
            above = peak_memory(cycle, device)
        s.peak = None if above is None else s.resident + int(above)
    return sides, failed


def _peak_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda allocator: resident (weights+grads+optimizer state) + step peak above it"
    return "cpu: resident tensor bytes (weights+grads+optimizer state) + profiler step peak above it"


def _rates(stats: dict, batches: list[dict], flops_per_step: float, peaks: dict) -> dict[str, float]:
    n = len(batches)
    samples = sum(int(b["input_ids"].shape[0]) for b in batches) / n
    tokens = sum(int(b["attention_mask"].sum()) for b in batches) / n
    padded = sum(int(b["input_ids"].numel()) for b in batches) / n
    sec = stats["mean_ms"] * 1e-3
    return {
        "mean_ms": stats["mean_ms"],
        "samples_per_s": samples / sec,
        "tokens_per_s": tokens / sec,
        "pad_fraction": 1 - tokens / padded,
        "flops_per_step": flops_per_step,
        "tflops": flops_per_step / sec / 1e12,
        "mfu": flops_per_step / sec / (peaks["matmul_tflops"] * 1e12),
        "pct_peak_flops": 100 * flops_per_step / sec / (peaks["matmul_tflops"] * 1e12),
    }


def compare_records(
    scenario: str,
    sides: list[_Side],
    failed: dict[str, str],
    order: list[str],
    baseline: str,
    shape: dict,
    batches: list[dict],
    flops_fn: Callable[[nn.Module], float],
    peaks: dict,
    device: torch.device,
    note: str,
) -> list[dict]:
    by_impl = {s.impl: s for s in sides}
    dtype = "bf16-autocast" if device.type == "cuda" else "float32"
    group: list[dict] = []
    for impl in order:
        s = by_impl.get(impl)
        why = failed.get(impl) or (s.error if s else "not built")
        if s is None or s.error or not s.times:
            group.append(
                not_available(PART, scenario, impl, why, shape, scenario=scenario, target=TARGETS[scenario])
            )
            continue
        stats = summarize(s.times)
        rec = make_record(
            PART,
            scenario,
            impl,
            shape,
            dtype,
            stats,
            s.peak,
            device=device,
            note=note,
            target=TARGETS[scenario],
            scenario=scenario,
            **s.extra,
        )
        rec["peak_mem_kind"] = _peak_kind(device)
        rec["resident_bytes"] = s.resident
        rec["trainable_params"] = sum(p.numel() for p in s.model.parameters() if p.requires_grad)
        rec.update(_rates(stats, batches, flops_fn(s.model), peaks))
        if impl == "fastft":
            import fastft

            rec["backend_report"] = fastft.report()
        group.append(rec)
    add_ratios(group, [baseline], time_field="mean_ms")
    for r in group:
        if r["impl"] != baseline and r["status"] == "ok":
            r["target_met"] = _target_met(scenario, r, device)
    return group


def _apply_fastft(model: nn.Module, lora: dict | None) -> tuple[list[str], list[str]]:
    """Patch ``model`` with what fastft has; returns (active parts, problems)."""
    import fastft
    from fastft.patching import patched_parts

    problems: list[str] = []
    try:
        fastft.patch(model, lora=lora)
        return patched_parts(model), problems
    except Exception as e:
        problems.append(f"patch(all): {short_error(e)}")
    # One part is broken: take the others (patch() is atomic and a no-op on a patched model, so
    # try the combinations largest first and keep the first that applies).
    parts: list[str] = []
    if lora is not None:
        try:
            fastft.add_lora(model, **lora)
            parts.append("lora(add_lora)")
        except Exception as e:
            problems.append(f"lora: {short_error(e)}")
    for attention, loss in ((True, True), (True, False), (False, True)):
        try:
            fastft.patch(model, attention=attention, loss=loss)
            parts += patched_parts(model)
            break
        except Exception as e:
            problems.append(f"patch(attention={attention}, loss={loss}): {short_error(e)}")
    return parts, problems


def fastft_side(model: nn.Module, lora: dict | None, device: torch.device, lr: float):
    """(model, optimizer, extra) for the fastft side; raises if no fastft part applies."""
    parts, problems = _apply_fastft(model, lora)
    if lora is not None and not any(p.startswith("lora") for p in parts):
        raise RuntimeError("fastft LoRA unavailable: " + "; ".join(problems))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt, why = _fastft_optimizer(trainable, lr)
    if opt is None:
        problems.append(why)
        opt = torch_adamw(trainable, device, lr)
    else:
        parts.append("FusedAdamW")
    if not parts:
        raise RuntimeError("no fastft part could be applied: " + "; ".join(problems))
    extra: dict[str, Any] = {"fastft_parts": parts}
    if problems:
        extra["fastft_missing"] = problems
    return model, opt, extra


def _target_met(scenario: str, rec: dict, device: torch.device) -> bool | None:
    """Only judged on the hardware the target is set for."""
    s_key = next((k for k in rec if k.startswith("speedup_vs_")), None)
    m_key = next((k for k in rec if k.startswith("mem_ratio_vs_")), None)
    s = rec.get(s_key) if s_key else None
    m = rec.get(m_key) if m_key else None
    on_h100 = device.type == "cuda" and "H100" in device_name(device)
    if scenario == "bert_cls" and on_h100 and s is not None and m is not None:
        return s >= 2.0 and m <= 0.6
    if scenario == "gpt2_lora" and on_h100 and s is not None and m is not None:
        return s >= 1.5 and m <= 0.5
    return None


def make_step(model: nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> Callable[[dict], Any]:
    def step(batch: dict) -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device):
            loss = model(**batch).loss
        loss.backward()
        opt.step()

    return step
