"""LoRA linear benchmark: fastft's fused layer against PEFT's LoRA layer and plain torch.

One projection ``y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ`` at r=16 with a frozen W and bias, timed in three modes:
``fwd`` (no grad), ``bwd`` (backward only, from a retained graph; grads for x, A and B) and
``fwd+bwd``. Impls:

* ``fastft``: ``fastft.functional.lora_linear`` (fused Triton kernels on CUDA; on CPU the torch
  reference path, recorded in ``path``: the Triton interpreter is a correctness tool, not a benchmark);
* ``fastft_cublas`` (CUDA only): the alternative design, ``FASTFT_LORA_MAIN_GEMM=cublas``: cuBLAS for
  the frozen GEMM, then one Triton pass adds the rank-r update in place (see kernels/lora.py);
* ``peft``: ``peft.tuners.lora.Linear`` wrapping the same base layer (dropout 0 -> identity);
* ``torch``: ``F.linear(x, W, b) + s·((x @ Aᵀ) @ Bᵀ)`` written out in autograd.

Shapes (CUDA, bf16, M = 8k/16k/32k tokens): BERT-base attention 768→768, FFN 768→3072 and 3072→768
(``nn.Linear`` layout); GPT-2 c_attn 768→2304, c_fc 768→3072, mlp.c_proj 3072→768 (``Conv1D``
layout, weight (in, out)). FLOPs per call: fwd 2MKN + 2Mr(K+N); bwd (no dW) 2MKN + 4Mr(K+N).
Target (issue 6): fwd+bwd ≥ 1.3× PEFT on an H100 at 8k–32k tokens.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import fastft
from bench.cli import main_for
from bench.common import bench_fn, fwd_bwd_modes, measure_peaks, peak_memory
from bench.records import add_ratios, make_record, not_available
from fastft.functional import lora_linear

PART = "lora"
RANK = 16
ALPHA = 32

#: (label, K=in, N=out, layout)
LAYERS = [
    ("bert.attn 768->768", 768, 768, "linear"),
    ("bert.ffn_up 768->3072", 768, 3072, "linear"),
    ("bert.ffn_down 3072->768", 3072, 768, "linear"),
    ("gpt2.c_attn 768->2304", 768, 2304, "conv1d"),
    ("gpt2.c_fc 768->3072", 768, 3072, "conv1d"),
    ("gpt2.mlp.c_proj 3072->768", 3072, 768, "conv1d"),
]


def _shapes(device: torch.device, quick: bool) -> list[tuple[str, int, int, int, str]]:
    if device.type == "cuda":
        tokens = (8192,) if quick else (8192, 16384, 32768)
        layers = LAYERS[:1] + LAYERS[3:4] if quick else LAYERS
    else:
        tokens = (256,) if quick else (512, 2048)
        layers = [LAYERS[0], LAYERS[3]] if quick else LAYERS
    return [(label, M, K, N, layout) for M in tokens for (label, K, N, layout) in layers]


def _base(K: int, N: int, layout: str, device, dtype) -> nn.Module:
    if layout == "linear":
        return nn.Linear(K, N).to(device, dtype)
    from transformers.pytorch_utils import Conv1D

    m = Conv1D(N, K).to(device, dtype)
    nn.init.normal_(m.weight, std=0.02)
    return m


def _impls(base: nn.Module, layout: str, a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """impl -> callable(x) -> y, or a reason string when it cannot run."""
    s = ALPHA / RANK
    w, bias = base.weight, base.bias
    fused = lambda x: lora_linear(x, w, bias, a, b, s, weight_layout=layout)
    out: dict[str, Any] = {"fastft": fused}
    if w.is_cuda:
        out["fastft_cublas"] = fused  # same call, run under _main_gemm("fastft_cublas")
    if layout == "linear":
        out["torch"] = lambda x: F.linear(x, w, bias) + s * ((x @ a.t()) @ b.t())
    else:
        out["torch"] = lambda x: torch.addmm(bias, x, w) + s * ((x @ a.t()) @ b.t())
    try:
        import peft
        from peft.tuners.lora.layer import Linear as PeftLinear

        cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, fan_in_fan_out=layout == "conv1d")
        layer = PeftLinear(
            base,
            "default",
            cfg,
            r=RANK,
            lora_alpha=ALPHA,
            fan_in_fan_out=layout == "conv1d",
            is_target_conv_1d_layer=False,
        )
        layer.lora_A["default"].weight = a  # the same factors as the other impls
        layer.lora_B["default"].weight = b
        out["peft"] = layer
    except Exception as e:  # peft missing or API changed: a row says so
        out["peft"] = f"peft unavailable: {type(e).__name__}: {e}"[:200]
    return out


@contextlib.contextmanager
def _main_gemm(impl: str):
    """``fastft_cublas`` runs with ``FASTFT_LORA_MAIN_GEMM=cublas`` (read per call, backward included)."""
    old = os.environ.get("FASTFT_LORA_MAIN_GEMM")
    if impl == "fastft_cublas":
        os.environ["FASTFT_LORA_MAIN_GEMM"] = "cublas"
    try:
        yield
    finally:
        if impl == "fastft_cublas":
            if old is None:
                os.environ.pop("FASTFT_LORA_MAIN_GEMM", None)
            else:
                os.environ["FASTFT_LORA_MAIN_GEMM"] = old


def run(device: torch.device, quick: bool = False) -> list[dict[str, Any]]:
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    peaks = measure_peaks(device, quick=quick)
    path = "triton" if cuda else "torch reference (no Triton kernel on CPU)"
    records: list[dict[str, Any]] = []
    g = torch.Generator(device="cpu").manual_seed(0)
    for label, M, K, N, layout in _shapes(device, quick):
        base = _base(K, N, layout, device, dtype).requires_grad_(False)
        a = nn.Parameter((torch.randn(RANK, K, generator=g) * K**-0.5).to(device, dtype))
        b = nn.Parameter((torch.randn(N, RANK, generator=g) * 0.02).to(device, dtype))
        x = torch.randn(M, K, generator=g).to(device, dtype).requires_grad_()
        dy = torch.randn(M, N, generator=g).to(device, dtype)
        flops = {
            "fwd": 2.0 * M * K * N + 2.0 * M * RANK * (K + N),
            "bwd": 2.0 * M * K * N + 4.0 * M * RANK * (K + N),
        }
        flops["fwd+bwd"] = flops["fwd"] + flops["bwd"]
        shape = {"M": M, "K": K, "N": N, "r": RANK, "layout": layout}
        for impl, f in _impls(base, layout, a, b).items():
            if isinstance(f, str):
                records.append(not_available(PART, label, impl, f, shape=shape))
                continue
            try:
                with fastft.backend("auto"), _main_gemm(impl):
                    for mode, fn in fwd_bwd_modes(lambda f=f, x=x: f(x), [x, a, b], dy).items():
                        stats = bench_fn(fn, device=device)
                        records.append(
                            make_record(
                                PART,
                                f"{label}-{mode}",
                                impl,
                                shape,
                                dtype,
                                stats,
                                peak_memory(fn, device),
                                flops=flops[mode],
                                device=device,
                                peaks=peaks,
                                mode=mode,
                                path=path if impl.startswith("fastft") else impl,
                            )  # fmt: skip
                        )
            except Exception as e:  # a failing impl is a result, not a crash of the whole part
                records.append(
                    not_available(PART, label, impl, f"{type(e).__name__}: {e}"[:200], shape=shape)
                )
            if cuda:
                torch.cuda.empty_cache()
    return add_ratios(records, baselines=("peft", "torch"))


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        main_for(run, PART)


if __name__ == "__main__":
    main()
