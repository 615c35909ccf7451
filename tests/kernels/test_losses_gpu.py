"""The fused losses at GPT-2's vocabulary (V = 50257, not a multiple of 16: the vectorised main loop plus
the masked head and tail) on a GPU, in bf16/fp16, against float64 with the 2x-torch-error rule. Skipped
without CUDA (the CPU suite covers the same code paths at interpreter-sized shapes)."""

import pytest
import torch
import torch.nn.functional as F

import fastft
from fastft.functional import cross_entropy, kd_loss, linear_ce_wgrad_path, linear_cross_entropy
from tests.compare import assert_within_torch_error, randn

pytestmark = pytest.mark.gpu
V = 50257
LOW = [torch.bfloat16, torch.float16]


def _targets(n, device):
    t = torch.randint(0, V, (n,), device=device)
    t[::7] = -100
    return t


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("weighted", [False, True])
def test_gpu_ce_gpt2_vocab(dtype, weighted, device):
    N = 509  # rows start at every alignment mod 16
    x = randn(N, V, device=device, dtype=dtype, scale=4.0)
    t = _targets(N, device)
    w = torch.rand(V, device=device) + 0.1 if weighted else None
    xk = x.clone().requires_grad_()
    with fastft.backend("triton"):
        loss = cross_entropy(xk, t, weight=w, label_smoothing=0.1)
        (gx,) = torch.autograd.grad(loss, xk)
    x64 = x.double().requires_grad_()
    ref = F.cross_entropy(x64, t, weight=None if w is None else w.double(), label_smoothing=0.1)
    (gref,) = torch.autograd.grad(ref, x64)
    xt = x.clone().requires_grad_()
    own = F.cross_entropy(xt, t, weight=None if w is None else w.to(dtype), label_smoothing=0.1)
    (gown,) = torch.autograd.grad(own, xt)
    assert_within_torch_error(loss, own, ref, name="loss")
    assert_within_torch_error(gx, gown, gref, name="grad")


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_gpu_kd_gpt2_vocab(dtype, device):
    N, T, alpha = 257, 2.0, 0.5
    s = randn(N, V, device=device, dtype=dtype, scale=3.0)
    te = randn(N, V, device=device, dtype=dtype, scale=3.0)
    t = _targets(N, device)

    def formula(a, b):
        log_q, log_p = F.log_softmax(a / T, -1), F.log_softmax(b / T, -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        valid = t != -100
        ce = -F.log_softmax(a, -1).gather(1, torch.where(valid, t, 0)[:, None]).squeeze(1)
        rows = torch.where(valid, (1 - alpha) * ce + alpha * T * T * kl, torch.zeros_like(kl))
        return rows.sum() / valid.sum()

    sk = s.clone().requires_grad_()
    with fastft.backend("triton"):
        loss = kd_loss(sk, te, t, temperature=T, alpha=alpha)
        (gs,) = torch.autograd.grad(loss, sk)
    s64 = s.double().requires_grad_()
    ref = formula(s64, te.double())
    (gref,) = torch.autograd.grad(ref, s64)
    st = s.clone().requires_grad_()
    own = formula(st, te)
    (gown,) = torch.autograd.grad(own, st)
    assert_within_torch_error(loss, own, ref, name="loss")
    assert_within_torch_error(gs, gown, gref, name="grad")


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_gpu_linear_ce_gpt2_head(dtype, device):
    N, H = 1024, 768
    h = randn(N, H, device=device, dtype=dtype)
    w = randn(V, H, device=device, dtype=dtype, scale=0.05)
    t = _targets(N, device)
    hk, wk = h.clone().requires_grad_(), w.clone().requires_grad_()
    with fastft.backend("triton"):
        loss = linear_cross_entropy(hk, wk, t, chunk_size=256)  # 4 chunks: the weight grad accumulates
        gh, gw = torch.autograd.grad(loss, (hk, wk))
    print(f"linear-CE weight-grad path ({dtype}): {linear_ce_wgrad_path()}")
    assert linear_ce_wgrad_path() in ("addmm-dtype-out", "fp32-upcast")
    h64, w64 = h.double().requires_grad_(), w.double().requires_grad_()
    ref = F.cross_entropy(h64 @ w64.t(), t)
    gh_ref, gw_ref = torch.autograd.grad(ref, (h64, w64))
    ht, wt = h.clone().requires_grad_(), w.clone().requires_grad_()
    own = F.cross_entropy(ht @ wt.t(), t)
    gh_own, gw_own = torch.autograd.grad(own, (ht, wt))
    assert_within_torch_error(loss, own, ref, name="loss")
    assert_within_torch_error(gh, gh_own, gh_ref, name="grad hidden")
    assert_within_torch_error(gw, gw_own, gw_ref, name="grad weight")
