"""Loss benchmark: fastft's fused CE, linear+CE and KD against torch.

Cases (each timed in three modes: ``fwd`` under no_grad, ``bwd`` alone from a retained graph,
``fwd+bwd``; plus peak memory of the call):

* ``ce``: ``(N, V)`` logits -> ``fastft.functional.cross_entropy`` vs ``torch`` =
  ``F.cross_entropy(x, t)`` in the logits' dtype and ``torch_fp32`` = ``F.cross_entropy(x.float(), t)``
  (what transformers' ``ForCausalLMLoss`` does).
* ``linear_ce``: hidden ``(N, H)`` and an LM head ``(V, H)`` (both trainable) ->
  ``fastft.functional.linear_cross_entropy`` vs ``torch`` = ``F.cross_entropy(F.linear(h, W), t)``
  and ``torch_lce`` = torch's own ``F.linear_cross_entropy`` when the installed torch has it.
* ``kd``: student/teacher ``(N, V)`` -> ``fastft.functional.kd_loss`` vs the torch formula
  ``(1-a) F.cross_entropy + a T^2 KLDivLoss(batchmean)``.
* ``cls``: classification shapes (V = 2..20, many rows) for ``ce``.

GPU sizes (bf16): GPT-2 (V=50257, H=768) and a 128k vocabulary (V=128256, H=4096) at 4k/16k/32k
tokens. CPU sizes are small; on CPU fastft takes its torch reference path (recorded in ``path``;
the Triton interpreter is a correctness tool, not a benchmark).
Target (issue 4): linear_ce fwd+bwd not slower than ``torch`` on an H100 and <= 1/4 of its peak
memory at V=50257, 16k tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import fastft
from bench.cli import main_for
from bench.common import bench_fn, measure_peaks, peak_memory
from bench.records import add_ratios, make_record, not_available
from fastft.functional import cross_entropy, kd_loss, linear_cross_entropy

PART = "losses"
T_KD, ALPHA_KD = 2.0, 0.5


def _cases(device: torch.device, quick: bool) -> list[tuple[str, dict[str, int]]]:
    """(case, shape) pairs; shape has N (rows), V and, for linear_ce, H."""
    if device.type == "cuda":
        tokens = (4096,) if quick else (4096, 16384, 32768)
        vocabs = ((50257, 768),) if quick else ((50257, 768), (128256, 4096))
        cases = []
        for V, H in vocabs:
            for N in tokens:
                cases.append(("ce", {"N": N, "V": V}))
                cases.append(("linear_ce", {"N": N, "H": H, "V": V}))
                cases.append(("kd", {"N": N, "V": V}))
        for N, V in ((4096, 2), (65536, 2), (65536, 20)) if not quick else ((4096, 2),):
            cases.append(("cls", {"N": N, "V": V}))
        return cases
    if quick:
        return [("ce", {"N": 64, "V": 8192}), ("linear_ce", {"N": 64, "H": 128, "V": 8192}),
                ("kd", {"N": 64, "V": 8192}), ("cls", {"N": 256, "V": 2})]  # fmt: skip
    return [("ce", {"N": 512, "V": 50257}), ("linear_ce", {"N": 512, "H": 256, "V": 50257}),
            ("linear_ce", {"N": 2048, "H": 256, "V": 32000}), ("kd", {"N": 512, "V": 50257}),
            ("cls", {"N": 4096, "V": 2}), ("cls", {"N": 4096, "V": 20})]  # fmt: skip


def _inputs(case: str, shape: dict[str, int], device, dtype, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random inputs made on ``device`` directly (32k x 128k logits would take minutes on the host)."""
    N, V = shape["N"], shape["V"]

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=g, device=device, dtype=dtype) * scale).requires_grad_()

    t = torch.randint(0, V, (N,), generator=g, device=device)
    t[torch.randperm(N, generator=g, device=device)[: N // 10]] = -100  # some padding
    out = {"t": t}
    if case == "linear_ce":
        H = shape["H"]
        out["h"] = randn(N, H)
        out["w"] = randn(V, H, scale=H**-0.5)
    else:
        out["x"] = randn(N, V, scale=2.0)
        if case == "kd":
            out["teacher"] = randn(N, V, scale=2.0).detach()
    return out


def _impls(case: str, d: dict[str, torch.Tensor]) -> dict[str, Callable[[], torch.Tensor] | str]:
    t = d["t"]
    if case in ("ce", "cls"):
        x = d["x"]
        return {
            "fastft": lambda: cross_entropy(x, t),
            "torch": lambda: F.cross_entropy(x, t),
            "torch_fp32": lambda: F.cross_entropy(x.float(), t),
        }
    if case == "kd":
        x, te = d["x"], d["teacher"]
        kl = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)

        def torch_kd():
            ce = F.cross_entropy(x, t)
            valid = t != -100  # same per-item semantics as fastft: ignored rows leave both terms
            s, tt = x[valid], te[valid]
            return (1 - ALPHA_KD) * ce + ALPHA_KD * T_KD**2 * kl(
                F.log_softmax(s / T_KD, -1), F.log_softmax(tt / T_KD, -1)
            )

        return {"fastft": lambda: kd_loss(x, te, t, temperature=T_KD, alpha=ALPHA_KD), "torch": torch_kd}
    h, w = d["h"], d["w"]
    impls: dict[str, Any] = {
        "fastft": lambda: linear_cross_entropy(h, w, t),
        "torch": lambda: F.cross_entropy(F.linear(h, w), t),
    }
    if hasattr(F, "linear_cross_entropy"):
        impls["torch_lce"] = lambda: F.linear_cross_entropy(h, w, t, ignore_index=-100)
    else:
        impls["torch_lce"] = "torch.nn.functional.linear_cross_entropy is not in this torch"
    return impls


def _modes(fwd: Callable[[], torch.Tensor], leaves: list[torch.Tensor]):
    """Yields (mode, fn). The retained graph for ``bwd`` is built last and dropped after, so it
    does not inflate the peak memory of the other modes."""

    def run_fwd():
        with torch.no_grad():
            return fwd()

    def run_both():
        return torch.autograd.grad(fwd(), leaves)

    yield "fwd", run_fwd
    yield "fwd+bwd", run_both
    graph = [fwd()]
    yield "bwd", lambda: torch.autograd.grad(graph[0], leaves, retain_graph=True)
    graph.clear()


def _nbytes(case: str, shape: dict[str, int], elem: int) -> float:
    """Minimal bytes moved by fwd+bwd of a fused loss (read logits twice, write grad once)."""
    N, V = shape["N"], shape["V"]
    return 3.0 * N * V * elem * (2 if case == "kd" else 1)


def run(device: torch.device, quick: bool = False) -> list[dict[str, Any]]:
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    peaks = measure_peaks(device, quick=quick)
    path = "triton" if cuda else "torch reference (no Triton kernel on CPU)"
    records: list[dict[str, Any]] = []
    g = torch.Generator(device=device).manual_seed(0)
    for case, shape in _cases(device, quick):
        d = _inputs(case, shape, device, dtype, g)
        leaves = [d["h"], d["w"]] if case == "linear_ce" else [d["x"]]
        if case == "linear_ce":
            N, H, V = shape["N"], shape["H"], shape["V"]
            gemm = 2.0 * N * H * V
            flops = {"fwd": gemm, "bwd": 2 * gemm, "fwd+bwd": 3 * gemm}
        else:
            flops = {}
        for impl, f in _impls(case, d).items():
            if isinstance(f, str):
                records.append(not_available(PART, case, impl, f, shape=shape))
                continue
            try:
                with fastft.backend("auto"):
                    for mode, fn in _modes(f, leaves):
                        stats = bench_fn(fn, device=device)
                        nbytes = _nbytes(case, shape, leaves[0].element_size())
                        records.append(
                            make_record(
                                PART,
                                f"{case}-{mode}",
                                impl,
                                shape,
                                dtype,
                                stats,
                                peak_memory(fn, device),
                                flops=flops.get(mode),
                                nbytes=nbytes if case != "linear_ce" and mode == "fwd+bwd" else None,
                                device=device,
                                peaks=peaks,
                                mode=mode,
                                path=path if impl == "fastft" else impl,
                            )  # fmt: skip
                        )
            except torch.OutOfMemoryError as e:
                records.append(not_available(PART, case, impl, f"out of memory: {e}"[:200], shape=shape))
            except Exception as e:  # a failing impl is a result, not a crash of the whole part
                records.append(not_available(PART, case, impl, f"{type(e).__name__}: {e}"[:200], shape=shape))
            if cuda:
                torch.cuda.empty_cache()
        del d
        if cuda:
            torch.cuda.empty_cache()
    return add_ratios(records, baselines=("torch", "torch_fp32", "torch_lce"))


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        main_for(run, PART)


if __name__ == "__main__":
    main()
