"""A tiny benchmark part for the runner test: ``python -m bench --parts tests.bench.tiny_part``.

Two implementations of a row-sum over a few sequence lengths, one deliberately slower, so the
ratios, the table and the kernel plot all have something to show.
"""

from __future__ import annotations

import torch

from bench.cli import main_for
from bench.common import bench_fn, peak_memory
from bench.records import add_ratios, make_record

PART = "tiny"


def run(device: torch.device, quick: bool = False) -> list[dict]:
    records = []
    for S in (64, 128, 256):
        x = torch.randn(8, S, 64, device=device)
        impls = {
            "fast": lambda x=x: x.sum(-1),
            "slow": lambda x=x: torch.stack([x[:, :, j] for j in range(x.shape[-1])], -1).sum(-1),
        }
        for impl, fn in impls.items():
            stats = bench_fn(fn, device=device, warmup=2, rep=5)
            records.append(
                make_record(
                    PART,
                    "rowsum",
                    impl,
                    {"B": 8, "S": S, "D": 64},
                    x.dtype,
                    stats,
                    peak_memory(fn, device),
                    nbytes=x.numel() * 4,
                    device=device,
                )
            )
    return add_ratios(records, ["slow"])


if __name__ == "__main__":
    main_for(run, PART)
