"""pytest-benchmark micro-benchmarks of the CPU paths (run with ``pytest -m benchmark tests/bench``).

Excluded from the CI command (addopts ``-m 'not benchmark'``). Each compares fastft's CPU path with
the torch baseline on the same inputs (``--benchmark-group-by=group``), and checks the result is
finite so a broken path cannot pass as fast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.compare import randn

pytestmark = pytest.mark.benchmark


def _optimizers():
    try:
        from fastft.optim import FusedAdamW
    except ImportError as e:
        pytest.skip(f"fastft.optim.FusedAdamW not available: {e}")
    return {"fastft": FusedAdamW, "torch": torch.optim.AdamW}


@pytest.mark.parametrize("impl", ["fastft", "torch"])
def test_optimizer_step(benchmark, impl):
    """One AdamW step over 4M fp32 parameters in 8 tensors (a small BERT's worth of shapes)."""
    cls = _optimizers()[impl]
    params = [torch.nn.Parameter(randn(512, 1024, seed=i)) for i in range(8)]
    for i, p in enumerate(params):
        p.grad = randn(*p.shape, seed=100 + i) * 1e-2
    opt = cls(params, lr=1e-3, weight_decay=0.01)
    benchmark.group = "adamw step 4M fp32"
    benchmark(opt.step)
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("impl", ["fastft", "torch"])
def test_cross_entropy_fwd_bwd(benchmark, impl):
    """Cross-entropy forward + backward on (2048, 8192) fp32 logits."""
    if impl == "fastft":
        try:
            from fastft.functional import cross_entropy as ce
        except ImportError as e:
            pytest.skip(f"fastft.functional.cross_entropy not available: {e}")
    else:
        ce = F.cross_entropy
    logits = randn(2048, 8192, seed=0).requires_grad_(True)
    target = torch.randint(0, 8192, (2048,), generator=torch.Generator().manual_seed(0))

    def step():
        logits.grad = None
        loss = ce(logits, target)
        loss.backward()
        return loss

    benchmark.group = "cross_entropy fwd+bwd 2048x8192"
    loss = benchmark(step)
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("impl", ["fastft", "torch"])
def test_attention_fallback_fwd_bwd(benchmark, impl):
    """Padded-mask attention forward + backward, (B, H, S, D) = (4, 8, 256, 64) fp32, 1/4 padding."""
    if impl == "fastft":
        try:
            from fastft.functional import scaled_dot_product_attention as attn
        except ImportError as e:
            pytest.skip(f"fastft.functional.scaled_dot_product_attention not available: {e}")
    B, H, S, D = 4, 8, 256, 64
    q, k, v = (randn(B, H, S, D, seed=s).requires_grad_(True) for s in range(3))
    mask = torch.ones(B, S, dtype=torch.long)
    mask[:, 3 * S // 4 :] = 0
    if impl == "torch":
        bool_mask = mask.bool()[:, None, None, :]
        attn = lambda q, k, v, attention_mask: F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask)

    def step():
        for t in (q, k, v):
            t.grad = None
        out = attn(q, k, v, attention_mask=mask)
        out.sum().backward()
        return out

    benchmark.group = "attention fwd+bwd 4x8x256x64 padded"
    out = benchmark(step)
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all()
