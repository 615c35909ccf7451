"""Fused LoRA linear kernel (Triton; the interpreter on CPU) against a float64 torch reference."""

import pytest
import torch

import fastft
from fastft.functional import lora_linear
from tests.compare import DTYPES, assert_close, assert_within_torch_error, randn

LAYOUTS = ("linear", "conv1d")
# (M, K, N, r): a single row, odd sizes, just over the 32-wide interpreter block, non-power-of-two rank
SHAPES = [(1, 17, 9, 1), (37, 45, 29, 7), (70, 33, 40, 16)]


def _inputs(M, K, N, r, layout, dtype, device, seed=0, bias=True):
    x = randn(M, K, seed=seed)
    w = randn(N, K, seed=seed + 1, scale=K**-0.5)
    if layout == "conv1d":
        w = w.t().contiguous()  # Conv1D stores (in, out)
    b = randn(N, seed=seed + 2) if bias else None
    a = randn(r, K, seed=seed + 3, scale=K**-0.5)
    bb = randn(N, r, seed=seed + 4, scale=0.5)
    dy = randn(M, N, seed=seed + 5)
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)
    return [cast(t) for t in (x, w, b, a, bb, dy)]


def naive(x, w, b, a, bb, s, layout, keep=None, p=0.0):
    """What PEFT computes: base linear + s·B(A(drop(x)))."""
    h = x if keep is None else x * keep.to(x.dtype) / (1 - p)
    y = x @ (w if layout == "conv1d" else w.t()) + s * (h @ a.t()) @ bb.t()
    return y if b is None else y + b


def _grads(fn, tensors, dy):
    leaves = [
        t.detach().clone().requires_grad_(t is not None and req) if t is not None else None
        for t, req in tensors
    ]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [None if t is None or not req else t.grad for t, (_, req) in zip(leaves, tensors)]


def _check(case, layout, dtype, device, p=0.0, keep=None, train_bias=True, seed=0):
    M, K, N, r = case
    s = 0.75
    x, w, b, a, bb, dy = _inputs(M, K, N, r, layout, dtype, device, seed=seed)
    req = [True, False, train_bias, True, True]
    with fastft.backend("triton"):
        y, g = _grads(
            lambda *t: lora_linear(*t, s, dropout_p=p, weight_layout=layout),
            list(zip([x, w, b, a, bb], req)),
            dy,
        )
    f64 = [t.double() for t in (x, w, b, a, bb)]
    y64, g64 = _grads(lambda *t: naive(*t, s, layout, keep, p), list(zip(f64, req)), dy.double())
    names = ["dx", "dW", "db", "dA", "dB"]
    assert g[1] is None  # frozen weight: no dW
    if not train_bias:
        assert g[2] is None
    if dtype == torch.float32:
        assert_close(y, y64, dtype, name="y")
        for n, gi, gr in zip(names, g, g64):
            if gr is not None:
                assert_close(gi, gr, dtype, name=n)
        return
    yt, gt = _grads(lambda *t: naive(*t, s, layout, keep, p), list(zip([x, w, b, a, bb], req)), dy)
    assert_within_torch_error(y, yt, y64, name="y")
    for n, gi, gtd, gr in zip(names, g, gt, g64):
        if gr is not None:
            assert_within_torch_error(gi, gtd, gr, name=n)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", SHAPES, ids=lambda c: "x".join(map(str, c)))
def test_forward_backward(case, layout, dtype, device):
    _check(case, layout, dtype, device)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_frozen_bias_and_large_rank(layout, device):
    _check((5, 20, 24, 128), layout, torch.float32, device, train_bias=False)
    _check((33, 19, 35, 3), layout, torch.float16, device, train_bias=False, seed=4)


def test_strided_inputs_and_leading_dims(device):
    M, K, N, r = 2 * 3 * 5, 23, 21, 4
    x, w, b, a, bb, _ = _inputs(M, K, N, r, "linear", torch.float32, device)
    x3 = x.reshape(2, 3, 5, K).transpose(1, 2)  # non-contiguous, 4-D
    wt = w.t().contiguous().t()  # (N, K) view with column-major strides
    with fastft.backend("triton"):
        y = lora_linear(x3, wt, b, a, bb, 2.0)
    ref = naive(x3.double(), w.double(), b.double(), a.double(), bb.double(), 2.0, "linear")
    assert y.shape == (2, 5, 3, N)
    assert_close(y, ref, torch.float32)


def test_triton_and_torch_paths_agree(device):
    x, w, b, a, bb, _ = _inputs(19, 26, 31, 5, "conv1d", torch.float32, device, seed=7)
    with fastft.backend("triton"):
        yk = lora_linear(x, w, b, a, bb, 1.5, weight_layout="conv1d")
    assert fastft.report()["lora_linear"].startswith("triton")
    with fastft.backend("torch"):
        yr = lora_linear(x, w, b, a, bb, 1.5, weight_layout="conv1d")
    assert fastft.report()["lora_linear"] == "torch (forced)"
    assert_close(yk, yr, torch.float32)


# ----------------------------------------------------------------------------- dropout


def test_dropout_mask_statistics(device):
    from fastft.kernels.lora import lora_keep_mask

    n = 256 * 192
    for p in (0.1, 0.5):
        m = lora_keep_mask((256, 192), p, seed=1234, device=device)
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(m.float().mean().item() - (1 - p)) < 5 * sigma
        # no structure along rows or columns (a broken offset would repeat rows)
        assert m.float().mean(1).std().item() < 5 * (p * (1 - p) / 192) ** 0.5
        assert not torch.equal(m[0], m[1])
    assert torch.equal(lora_keep_mask((64, 40), 0.3, 5, device), lora_keep_mask((64, 40), 0.3, 5, device))
    assert not torch.equal(lora_keep_mask((64, 40), 0.3, 5, device), lora_keep_mask((64, 40), 0.3, 6, device))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_dropout_backward_uses_forward_mask(layout, dtype, device):
    """Kernel launchers with a fixed seed vs float64 autograd through the same (materialised) mask."""
    from fastft.kernels.lora import lora_backward, lora_forward, lora_keep_mask

    M, K, N, r, p, s, seed = 45, 37, 26, 6, 0.3, 0.5, 99
    x, w, b, a, bb, dy = _inputs(M, K, N, r, layout, dtype, device, seed=11)
    keep = lora_keep_mask((M, K), p, seed, device)
    assert 0.5 < keep.float().mean() < 0.9
    conv = layout == "conv1d"
    y, u = lora_forward(x, w, b, a, bb, s, p, seed, conv)
    dx, da, db = lora_backward(dy, x, w, a, bb, u, s, p, seed, conv)
    req = [True, False, False, True, True]
    f64 = [t.double() for t in (x, w, b, a, bb)]
    y64, g64 = _grads(lambda *t: naive(*t, s, layout, keep, p), list(zip(f64, req)), dy.double())
    if dtype == torch.float32:
        for n, got, ref in [("y", y, y64), ("dx", dx, g64[0]), ("dA", da, g64[3]), ("dB", db, g64[4])]:
            assert_close(got, ref, dtype, name=n)
    else:
        yt, gt = _grads(lambda *t: naive(*t, s, layout, keep, p), list(zip([x, w, b, a, bb], req)), dy)
        for n, got, td, ref in [
            ("y", y, yt, y64),
            ("dx", dx, gt[0], g64[0]),
            ("dA", da, gt[3], g64[3]),
            ("dB", db, gt[4], g64[4]),
        ]:
            assert_within_torch_error(got, td, ref, name=n)


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_dropout_seeded_by_torch_manual_seed(path, device):
    x, w, b, a, bb, _ = _inputs(24, 30, 18, 4, "linear", torch.float32, device, seed=3)
    base = naive(x, w, b, a, bb, 1.0, "linear") - (x @ a.t()) @ bb.t()  # no low-rank part
    with fastft.backend(path):
        torch.manual_seed(0)
        y1 = lora_linear(x, w, b, a, bb, 1.0, dropout_p=0.5)
        torch.manual_seed(0)
        y2 = lora_linear(x, w, b, a, bb, 1.0, dropout_p=0.5)
        y3 = lora_linear(x, w, b, a, bb, 1.0, dropout_p=0.5)
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    # dropout touches only the low-rank path: E[y] = base + x·Aᵀ·Bᵀ, and a run differs from both
    assert (y1 - base).abs().max() > 1e-3
    assert (y1 - naive(x, w, b, a, bb, 1.0, "linear")).abs().max() > 1e-3


def test_bad_input_messages(device):
    x, w, b, a, bb, _ = _inputs(4, 8, 6, 2, "linear", torch.float32, device)
    with pytest.raises(ValueError, match="weight_layout"):
        lora_linear(x, w, b, a, bb, 1.0, weight_layout="conv")
    with pytest.raises(ValueError, match="do not fit"):
        lora_linear(x, w, b, a, bb, 1.0, weight_layout="conv1d")
    with pytest.raises(ValueError, match="dropout_p"):
        lora_linear(x, w, b, a, bb, 1.0, dropout_p=1.0)
