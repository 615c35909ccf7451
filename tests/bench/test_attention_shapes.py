"""bench_attention's shape lists (D=128 and dropout on every device, CPU shapes small) and its
dropout-aware impls, on tiny CPU tensors."""

from __future__ import annotations

import pytest
import torch

from bench import bench_attention as ba


@pytest.mark.parametrize("dev", ["cuda", "cpu"])
@pytest.mark.parametrize("quick", [False, True])
def test_shapes_include_d128_and_dropout(dev, quick):
    shapes = ba._shapes(torch.device(dev), quick)
    assert any(s["D"] == 128 for s in shapes)
    assert any(s["dropout"] > 0 for s in shapes)
    assert len({s["label"] for s in shapes}) == len(shapes)
    if dev == "cpu":
        assert all(s["S"] <= 512 and s["B"] <= 8 for s in shapes)


def test_dropout_reaches_every_impl():
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, 2, 16, 128, generator=g) for _ in range(4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    mask = torch.arange(16)[None] < 11
    plain = ba._impls(q, k, v, do, mask, False, True, False, 0.0)
    drop = ba._impls(q, k, v, do, mask, False, True, False, 0.5)
    for impl in ("fastft", "fastft_varlen", "sdpa_math"):
        f0, _, _, _ = plain[impl]()
        f1, leaves, dout, _ = drop[impl]()
        y0, y1 = f0(), f1()
        assert not torch.allclose(y0, y1), impl  # p=0.5 changed the output
        torch.autograd.grad(y1, leaves, dout)
