"""Image classification, one training step end to end: fastft against plain Hugging Face.

    python -m bench.bench_vision [--quick] [--device cuda]

A step = forward with labels (the model's own loss) + backward + global-norm clipping + AdamW.

* ``hf``: ``ViTForImageClassification`` as loaded (attention ``sdpa``, HF's cross-entropy) with
  ``torch.optim.AdamW(fused=True)`` and ``clip_grad_norm_``.
* ``fastft``: the same model after ``fastft.patch`` (fused attention through AttentionInterface --
  ViT's fixed-length, unmasked S=197 is the dense kernel's best case -- and the fused CE) with
  ``fastft.optim.FusedAdamW`` (clipping inside the optimizer step).

GPU sizes: ViT-B/16 at 224x224 (S=197, 12 heads of 64), batch 64 (quick: 16), bf16 autocast. On a CPU
a small ViT (4 layers, width 192, 64x64 images) runs the torch reference paths, fp32: a smoke run
that the step works, not a kernel measurement.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any

import torch

import fastft
from bench.cli import main_for
from bench.common import bench_fn
from bench.records import add_ratios, make_record, not_available

PART = "vision"


def _sizes(device: torch.device, quick: bool) -> dict[str, Any]:
    if device.type == "cuda":
        return dict(label="vit-b16-224", image=224, patch=16, hidden=768, layers=12, heads=12, ffn=3072,
                    batch=16 if quick else 64, labels=1000)  # fmt: skip
    return dict(label="vit-small-64", image=64, patch=16, hidden=192, layers=2 if quick else 4, heads=3,
                ffn=768, batch=4 if quick else 8, labels=10)  # fmt: skip


def _model(s: dict[str, Any], device: torch.device):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=s["image"], patch_size=s["patch"], hidden_size=s["hidden"],
                    num_hidden_layers=s["layers"], num_attention_heads=s["heads"], intermediate_size=s["ffn"],
                    num_labels=s["labels"])  # fmt: skip
    torch.manual_seed(0)
    return ViTForImageClassification(cfg).to(device)


def _step_fn(impl: str, s: dict[str, Any], device: torch.device):
    model = _model(s, device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if impl == "fastft":
        from fastft.optim import FusedAdamW

        fastft.patch(model)
        opt = FusedAdamW(params, lr=1e-4, weight_decay=0.01, max_grad_norm=1.0)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(s["batch"], 3, s["image"], s["image"], generator=g).to(device)
    labels = torch.randint(0, s["labels"], (s["batch"],), generator=g).to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step():
        with amp:
            loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        if impl != "fastft":
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def run(device: torch.device, quick: bool = False) -> list[dict[str, Any]]:
    device = torch.device(device)
    s = _sizes(device, quick)
    shape = {k: s[k] for k in ("batch", "image", "patch", "hidden", "layers")}
    shape["S"] = (s["image"] // s["patch"]) ** 2 + 1
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    path = (
        "triton kernels + fastft._C" if device.type == "cuda" else "torch reference paths + fastft._C (CPU)"
    )
    records = []
    for impl in ("hf", "fastft"):
        try:
            step, model = _step_fn(impl, s, device)
            stats = bench_fn(step, device=device, warmup=2, rep=5 if quick else 20)
            images_s = s["batch"] / (stats["median_ms"] * 1e-3)
            records.append(make_record(PART, f"{s['label']}-train-step", impl, shape, dtype, stats,
                                       path=path if impl == "fastft" else "HF sdpa + torch AdamW(fused)",
                                       images_per_s=round(images_s, 1)))  # fmt: skip
            del step, model
        except Exception as e:  # noqa: BLE001 - a failing impl is a result
            records.append(
                not_available(PART, f"{s['label']}-train-step", impl, f"{type(e).__name__}: {e}"[:200])
            )
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return add_ratios(records, baselines=("hf",))


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        main_for(run, PART)


if __name__ == "__main__":
    main()
