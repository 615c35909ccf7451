"""Measuring machinery of the benchmark suite: timing, peak memory, environment, device peaks.

The bottom of the bench modules (it imports none of them): records and result files are in
:mod:`bench.records`, the one-part command line in :mod:`bench.cli`, plots in :mod:`bench.report`.
A part ``bench/bench_<part>.py`` uses them so:

    from bench.cli import main_for
    from bench.common import bench_fn, peak_memory
    from bench.records import add_ratios, make_record

    def run(device, quick=False):
        records = []
        for S in (128, 512) if quick else (128, 512, 2048):
            x = ...
            for impl, fn in (("fastft", lambda: ours(x)), ("torch", lambda: ref(x))):
                stats = bench_fn(fn, device=device)
                records.append(make_record("losses", "cross_entropy", impl, {"N": S, "V": V}, x.dtype,
                                           stats, peak_memory(fn, device), flops=None, nbytes=..., device=device))
        return add_ratios(records, baselines=("torch",))

    if __name__ == "__main__":
        main_for(run, "losses")

Timing (:func:`bench_fn`): every call is timed on its own -- CUDA events around each call on
CUDA, ``time.perf_counter`` on CPU -- after a warm-up, and the median and the 20th/80th
percentiles of those per-call times are reported. Inputs small enough to stay in the GPU's L2
cache between calls would flatter a kernel; :func:`rotating` cycles through enough copies of the
inputs to exceed the L2 size.

Peak memory (:func:`peak_memory`): on CUDA the allocator's own ``max_memory_allocated`` after a
reset (absolute: includes every tensor alive before the call, e.g. weights). The CPU allocator
keeps no peak counter, so on CPU it is reconstructed from ``torch.profiler``'s memory events
(``profile_memory=True``): the running sum of allocations minus frees during the call (the
call runs twice under the profiler and the second one is measured), i.e. the peak of memory
*allocated during the call* above what was alive before it. It sees only torch's CPU allocator
(not Python objects, and not oneDNN's private scratch buffers). Records say which kind they hold
in ``peak_mem_kind``.
"""

from __future__ import annotations

import datetime as _dt
import functools
import itertools
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "RESULTS_DIR",
    "bench_fn",
    "time_calls",
    "quantile",
    "summarize",
    "rotating",
    "l2_cache_bytes",
    "peak_memory",
    "peak_mem_kind",
    "environment",
    "device_name",
    "device_slug",
    "measure_peaks",
    "cached_peaks",
    "resolve_device",
    "sync",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Default time budgets (seconds) for auto warm-up / repeat counts: (warm-up, measurement).
_BUDGET = {"cuda": (0.025, 0.1), "cpu": (0.1, 0.5)}
_REPS = {"cuda": (20, 1000), "cpu": (5, 100)}  # (min, max) timed calls


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), ``q`` in [0, 1]."""
    if not values:
        raise ValueError("quantile of an empty sequence")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(times_ms: Sequence[float]) -> dict[str, float]:
    """``{median_ms, p20_ms, p80_ms, mean_ms, min_ms, n}`` of per-call times in milliseconds."""
    return {
        "median_ms": quantile(times_ms, 0.5),
        "p20_ms": quantile(times_ms, 0.2),
        "p80_ms": quantile(times_ms, 0.8),
        "mean_ms": sum(times_ms) / len(times_ms),
        "min_ms": min(times_ms),
        "n": len(times_ms),
    }


def _time_calls_cpu(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _time_calls_cuda(fn: Callable[[], Any], n: int) -> list[float]:
    # Events go on the current stream of the current device: callers select the device first.
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    torch.cuda.synchronize()
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def _timed_on(device: torch.device, fn: Callable[[], Any], n: int) -> list[float]:
    return time_calls(fn, n, device)


def time_calls(fn: Callable[[], Any], n: int, device: torch.device | str) -> list[float]:
    """Milliseconds of each of ``n`` back-to-back calls of ``fn()`` (no warm-up): CUDA events on
    CUDA, ``perf_counter`` on CPU. For interleaving several implementations in rounds."""
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            return _time_calls_cuda(fn, n)
    return _time_calls_cpu(fn, n)


def bench_fn(
    fn: Callable[[], Any],
    *,
    device: torch.device | str,
    warmup: int | None = None,
    rep: int | None = None,
    budget_s: float | None = None,
) -> dict[str, float]:
    """Time ``fn()`` (no arguments) on ``device``; every call is timed separately.

    Args:
        warmup: untimed calls first (``None``: as many as fit in ~25 ms on CUDA / ~0.1 s on CPU,
            at least 1). The first call (compilation, autotuning, allocator growth) is always untimed.
        rep: timed calls (``None``: as many as fit in ``budget_s``, default 0.1 s on CUDA /
            0.5 s on CPU, clamped to [20, 1000] on CUDA and [5, 100] on CPU).

    Returns ``{median_ms, p20_ms, p80_ms, mean_ms, min_ms, n}``. On CUDA each call sits between two
    CUDA events on the current stream (GPU time, launch gaps included); on CPU it is wall time by
    ``time.perf_counter``.
    """
    device = torch.device(device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    timer = functools.partial(_timed_on, device)
    warm_budget, rep_budget = _BUDGET[kind]
    if budget_s is not None:
        rep_budget = budget_s
    # First call: compile/autotune/allocate; also gives the estimate for auto counts.
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    est = max(time.perf_counter() - t0, 1e-6)
    if warmup is None:
        # A second, steadier estimate (the first call is often dominated by compilation).
        est = max(sum(timer(fn, 1)) / 1e3, 1e-6)
        warmup = max(1, min(200, int(warm_budget / est)))
    if warmup > 0:
        est = max(sum(timer(fn, warmup)) / 1e3 / warmup, 1e-6)
    if rep is None:
        lo, hi = _REPS[kind]
        rep = max(lo, min(hi, int(rep_budget / est)))
    return summarize(timer(fn, rep))


def fwd_bwd_modes(
    fwd: Callable[[], torch.Tensor], leaves: list[torch.Tensor], grad_out: torch.Tensor
) -> dict[str, Callable[[], Any]]:
    """Closures for ``fwd`` (under no_grad), ``bwd`` (backward only, from a retained graph built
    here once) and ``fwd+bwd``; the backward gives the grads of ``leaves`` for ``grad_out``
    (the shape of ``fwd()``)."""

    def run_fwd():
        with torch.no_grad():
            return fwd()

    out = fwd()

    def run_bwd():
        return torch.autograd.grad(out, leaves, grad_out, retain_graph=True)

    def run_both():
        return torch.autograd.grad(fwd(), leaves, grad_out)

    return {"fwd": run_fwd, "bwd": run_bwd, "fwd+bwd": run_both}


def l2_cache_bytes(device: torch.device | str) -> int:
    """L2 size of a CUDA device (50 MiB if torch does not say); 0 on CPU (no rotation there)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 50 * 2**20) or 50 * 2**20)


def rotating(
    fn: Callable[..., Any],
    make_args: Callable[[], tuple],
    *,
    device: torch.device | str,
    copies: int | None = None,
    max_copies: int = 64,
) -> Callable[[], Any]:
    """A zero-argument closure calling ``fn(*args_i)`` with ``args_i`` cycling over several input sets.

    ``make_args()`` builds one fresh set of inputs. On CUDA, if one set is smaller than ~2x the L2
    cache, enough sets are made that consecutive calls never find their inputs in L2 (capped by
    ``max_copies``); on CPU, or when one set is already large, a single set is used. Pass
    ``copies`` to force the number.
    """
    first = make_args()
    if not isinstance(first, tuple):
        first = (first,)
    if copies is None:
        l2 = l2_cache_bytes(device)
        nbytes = sum(a.numel() * a.element_size() for a in first if isinstance(a, torch.Tensor))
        copies = 1 if l2 == 0 or nbytes == 0 else min(max_copies, max(1, math.ceil(2 * l2 / nbytes)))
    sets = [first]
    for _ in range(copies - 1):
        a = make_args()
        sets.append(a if isinstance(a, tuple) else (a,))
    cyc = itertools.cycle(sets)

    def call():
        return fn(*next(cyc))

    call.copies = copies  # type: ignore[attr-defined]
    return call


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------


def peak_mem_kind(device: torch.device | str, relative: bool = False) -> str:
    """What :func:`peak_memory` returns on ``device`` (recorded beside the number)."""
    if torch.device(device).type == "cuda":
        return "cuda-delta" if relative else "cuda-max-allocated"
    return "cpu-profiler-delta"


def peak_memory(fn: Callable[[], Any], device: torch.device | str, *, relative: bool = False) -> int | None:
    """Peak bytes of memory held by torch while ``fn()`` runs once.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` -- the absolute
    peak, including tensors alive before the call (weights, optimizer state, inputs); with
    ``relative=True`` the part above what was allocated before the call.

    CPU: always relative (the CPU allocator has no counter of what is alive): the peak of the
    running sum of torch CPU allocations minus frees during the call, from ``torch.profiler``
    memory events (``fn`` runs twice; the second call is measured, see ``_cpu_peak_profiler``).
    ``None`` if the profiler cannot give it (never a guess).
    Call it after :func:`bench_fn` so one-time allocations (caches, compilation) are not counted.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return int(peak - base) if relative else int(peak)
    return _cpu_peak_profiler(fn)


_MARK = "fastft_bench_measured"


def _cpu_peak_profiler(fn: Callable[[], Any]) -> int | None:
    # The profiler's event tree holds one Allocation event per CPU-allocator malloc/free (signed
    # size) with a timestamp; their running sum over time is the memory held above the start.
    # (The per-op ``cpu_memory_usage`` of FunctionEvents nests and cannot give a peak.) The
    # profiler cannot size a free of a block allocated before it started (it warns "unknown
    # size" and drops the event), which would overstate the peak of e.g. a training step that
    # frees last step's gradients: so ``fn`` runs twice under the profiler and only the second,
    # marked call is measured -- its frees are of blocks the profiler saw being allocated.
    from torch.profiler import ProfilerActivity, profile, record_function

    try:
        from torch._C._profiler import _EventType

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
            with record_function(_MARK):
                fn()
        events: list[tuple[int, int]] = []
        window: tuple[int, int] | None = None
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            if node.tag == _EventType.Allocation:
                events.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
            elif window is None and node.name == _MARK:
                window = (node.start_time_ns, node.end_time_ns)
            stack.extend(node.children)
    except Exception:  # private profiler API changed: say "unknown" rather than guess
        return None
    if window is None:
        return None
    events.sort(key=lambda t: t[0])
    cur = 0
    base = peak = None
    for t, b in events:
        if t < window[0]:
            cur += b
            continue
        if t > window[1]:
            break
        if base is None:
            base = peak = cur
        cur += b
        peak = max(peak, cur)
    return 0 if base is None else int(peak - base)


# --------------------------------------------------------------------------------------------
# environment and device peaks
# --------------------------------------------------------------------------------------------


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {_cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def device_slug(device: torch.device | str) -> str:
    """File-name form of the device: ``nvidia-h100-80gb-hbm3`` or ``cpu``."""
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


@functools.lru_cache(maxsize=1)
def _git() -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except Exception:
            return None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Device name, library versions, git commit and UTC date of this run."""
    device = resolve_device(device)
    env: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "fastft_backend": os.environ.get("FASTFT_BACKEND", "auto"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        # other jobs on the machine inflate wall times: keep the evidence beside the numbers
        "loadavg_1m_5m_15m": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **_git(),
    }
    try:
        from fastft import _ext

        env["fastft_C"] = _ext.available()
    except Exception:
        env["fastft_C"] = None
    return env


_PEAKS: dict[str, dict[str, Any]] = {}


def measure_peaks(device: torch.device | str, *, quick: bool = False) -> dict[str, Any]:
    """Measured (not datasheet) matmul throughput and copy bandwidth of ``device``; cached per run.

    Matmul: square ``n x n`` GEMM, bf16 on CUDA (n=8192), fp32 on CPU (n=1024, 2048 unless quick);
    2·n³ FLOPs. Bandwidth: ``dst.copy_(src)`` of a large buffer (1 GiB on CUDA, 128 MiB on CPU) and an
    in-place read-modify-write ``src.mul_(1.0)`` of the same buffer, each counted as 2x bytes (read +
    write). A CPU copy also pays a hidden write-allocate read of ``dst`` that an in-place update does
    not, so the peak used for "% of peak" (``bw_gbps``) is the faster of the two. All use
    :func:`bench_fn`'s median.
    """
    device = torch.device(device)
    key = f"{device}-{quick}"
    if key in _PEAKS:
        return _PEAKS[key]
    if device.type == "cuda":
        n, dtype, nbytes = 8192, torch.bfloat16, 2**30
    else:
        n, dtype, nbytes = (1024 if quick else 2048), torch.float32, 2**27
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    counts = {"warmup": 1, "rep": 5} if quick else {}
    mm = bench_fn(functools.partial(torch.mm, a, b), device=device, **counts)
    a = b = None  # free before allocating the copy buffers
    src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    cp = bench_fn(functools.partial(dst.copy_, src), device=device, **counts)
    rmw = bench_fn(functools.partial(src.mul_, 1.0), device=device, **counts)
    src = dst = None
    res = {
        "matmul_dtype": str(dtype).replace("torch.", ""),
        "matmul_n": n,
        "matmul_tflops": 2 * n**3 / (mm["median_ms"] * 1e-3) / 1e12,
        "copy_bytes": nbytes,
        "copy_gbps": 2 * nbytes / (cp["median_ms"] * 1e-3) / 1e9,
        "rmw_gbps": 2 * nbytes / (rmw["median_ms"] * 1e-3) / 1e9,
    }
    res["bw_gbps"] = max(res["copy_gbps"], res["rmw_gbps"])
    _PEAKS[key] = res
    return res


def cached_peaks() -> dict[str, Any] | None:
    """The first device peaks :func:`measure_peaks` measured in this process (None: none yet)."""
    return next(iter(_PEAKS.values()), None) if _PEAKS else None
