"""Knowledge-distillation loss (Triton kernel / interpreter) vs hand-written float64 formulas and nn.KLDivLoss."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastft
from fastft.functional import kd_loss
from fastft.nn import KDLoss
from tests.compare import assert_close, assert_within_torch_error, randn


def _formula(s, t, target, T, alpha, reduction, ignore_index=-100):
    """Hand-written float64 KD: per-row (1-a) CE + a T^2 KL(p_t || q_s), ignored rows dropped."""
    log_q = F.log_softmax(s / T, dim=-1)
    log_p = F.log_softmax(t / T, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    if target is None:
        rows = T * T * kl
        n = rows.shape[0]
    else:
        valid = target != ignore_index
        safe = torch.where(valid, target, 0)
        ce = -F.log_softmax(s, dim=-1).gather(1, safe[:, None]).squeeze(1)
        rows = torch.where(valid, (1 - alpha) * ce + alpha * T * T * kl, torch.zeros_like(kl))
        n = valid.sum()
    return {"mean": rows.sum() / n, "sum": rows.sum(), "none": rows}[reduction]


def _run(s, t, target, T, alpha, reduction, g, backend="triton"):
    s = s.detach().requires_grad_()
    with fastft.backend(backend):
        loss = kd_loss(s, t, target, temperature=T, alpha=alpha, reduction=reduction)
        (gs,) = torch.autograd.grad(loss, s, g.to(loss.dtype))
    return loss, gs


CASES = [(N, V, r) for N, V in [(1, 2), (13, 3), (9, 1000)] for r in ("mean", "sum", "none")]
CASES += [(2, 32000, "none"), (2, 50257, "mean")]  # big vocabularies: one reduction each (interpreter time)


@pytest.mark.parametrize("N,V,reduction", CASES)
def test_kd_matches_formula(device, N, V, reduction):
    s = randn(N, V, device=device, scale=2.0)
    t = randn(N, V, device=device, scale=2.0)
    target = torch.randint(0, V, (N,), device=device)
    if N > 1:
        target[0] = -100
    g = randn(N, device=device) if reduction == "none" else torch.tensor(0.7, device=device)
    for tgt, T, alpha in ((target, 2.0, 0.3), (None, 1.5, 0.5), (target, 1.0, 1.0)):
        loss, gs = _run(s, t, tgt, T, alpha, reduction, g)
        s64 = s.double().requires_grad_()
        ref = _formula(s64, t.double(), tgt, T, alpha, reduction)
        (gref,) = torch.autograd.grad(ref, s64, g.double())
        assert_close(loss, ref, torch.float32, name=f"loss T={T} a={alpha} target={tgt is not None}")
        assert_close(gs, gref, torch.float32, name=f"grad T={T} a={alpha} target={tgt is not None}")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_kd_equals_kldivloss_batchmean(device, backend):
    """No target: T^2 * nn.KLDivLoss(batchmean); with target: (1-a) F.cross_entropy + a T^2 KLDivLoss."""
    N, V, T, a = 11, 257, 3.0, 0.25
    s = randn(N, V, device=device, dtype=torch.float64 if backend == "torch" else torch.float32)
    t = randn(N, V, device=device, dtype=s.dtype)
    target = torch.randint(0, V, (N,), device=device)
    kldiv = nn.KLDivLoss(reduction="batchmean", log_target=True)
    s64 = s.double().requires_grad_()
    kl = kldiv(F.log_softmax(s64 / T, -1), F.log_softmax(t.double() / T, -1))
    for tgt, ref in ((None, T * T * kl), (target, (1 - a) * F.cross_entropy(s64, target) + a * T * T * kl)):
        loss, gs = _run(s, t, tgt, T, a, "mean", torch.tensor(1.0, device=device), backend)
        (gref,) = torch.autograd.grad(ref, s64, retain_graph=True)
        assert_close(loss, ref, s.dtype)
        assert_close(gs, gref, s.dtype)


def test_kd_teacher_gets_no_grad_and_module(device):
    s = randn(5, 40, device=device).requires_grad_()
    t = randn(5, 40, device=device).requires_grad_()
    with fastft.backend("triton"):
        loss = KDLoss(temperature=2.0, alpha=0.5)(s, t, torch.randint(0, 40, (5,), device=device))
        loss.backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()


def test_kd_ignored_rows_and_leading_dims(device):
    B, S, V = 2, 4, 50
    s = randn(B, S, V, device=device)
    t = randn(B, S, V, device=device)
    target = torch.randint(0, V, (B, S), device=device)
    target[1, 1:] = -100
    loss, gs = _run(s, t, target, 2.0, 0.5, "none", randn(B, S, device=device))
    assert loss.shape == (B, S)
    assert (loss[1, 1:] == 0).all() and (gs[1, 1:] == 0).all()
    s64 = s.double().requires_grad_()
    ref = _formula(s64.reshape(-1, V), t.double().reshape(-1, V), target.reshape(-1), 2.0, 0.5, "mean")
    mean, _ = _run(s, t, target, 2.0, 0.5, "mean", torch.tensor(1.0, device=device))
    assert_close(mean, ref, torch.float32)
    all_ignored, g0 = _run(
        s, t, torch.full_like(target, -100), 2.0, 0.5, "mean", torch.tensor(1.0, device=device)
    )
    assert torch.isnan(all_ignored) and torch.equal(g0, torch.zeros_like(g0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kd_low_precision_within_torch_error(device, dtype):
    N, V, T, a = 7, 3000, 2.0, 0.5
    s = randn(N, V, device=device, dtype=dtype, scale=2.0)
    t = randn(N, V, device=device, dtype=dtype, scale=2.0)
    target = torch.randint(0, V, (N,), device=device)
    one = torch.tensor(1.0, device=device)
    loss, gs = _run(s, t, target, T, a, "mean", one)
    st = s.detach().requires_grad_()
    lt = _formula(st, t, target, T, a, "mean")  # torch in the same dtype
    (gt,) = torch.autograd.grad(lt, st)
    s64 = s.double().requires_grad_()
    ref = _formula(s64, t.double(), target, T, a, "mean")
    (gref,) = torch.autograd.grad(ref, s64)
    assert loss.dtype == dtype and gs.dtype == dtype
    assert_within_torch_error(loss, lt, ref, name=f"kd loss {dtype}")
    assert_within_torch_error(gs, gt, gref, name=f"kd grad {dtype}")


def test_kd_bad_input(device):
    s = randn(3, 4, device=device)
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(s, randn(3, 5, device=device))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, s, temperature=0.0)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("with_target", [True, False])
def test_linear_kd_matches_float64(device, reduction, with_target):
    """Fused linear + KD (student head and teacher head, chunked) vs kd_loss on float64 logits."""
    from fastft.functional import linear_kd_loss

    N, H, Ht, V = 13, 8, 12, 300
    h = randn(N, H, device=device).requires_grad_()
    w = randn(V, H, device=device, scale=0.3).requires_grad_()
    b = randn(V, device=device).requires_grad_()
    th, tw = randn(N, Ht, device=device), randn(V, Ht, device=device, scale=0.3)
    target = torch.randint(0, V, (N,), device=device) if with_target else None
    if with_target:
        target[3] = -100
    g = randn(N, device=device) if reduction == "none" else torch.tensor(1.3, device=device)
    with fastft.backend("triton"):
        loss = linear_kd_loss(
            h, w, th, tw, target, b, reduction=reduction, chunk_size=4, temperature=1.7, alpha=0.3
        )
        grads = torch.autograd.grad(loss, (h, w, b), g)
    leaves = [x.detach().double().requires_grad_() for x in (h, w, b)]
    ref = _formula(
        F.linear(leaves[0], leaves[1], leaves[2]),
        F.linear(th.double(), tw.double()),
        target,
        1.7,
        0.3,
        reduction,
    )
    grefs = torch.autograd.grad(ref, leaves, g.double())
    assert_close(loss, ref, torch.float32, name="loss")
    for name, a, r in zip(("hidden", "weight", "bias"), grads, grefs):
        assert_close(a, r, torch.float32, name=f"grad {name}")


def test_kd_mixed_dtypes(device):
    """A bf16 student against an fp32 teacher: the teacher is not rounded to bf16 first."""
    N, V = 6, 500
    s = randn(N, V, device=device, dtype=torch.bfloat16)
    t = randn(N, V, device=device, scale=3.0)
    target = torch.randint(0, V, (N,), device=device)
    loss, gs = _run(s, t, target, 2.0, 0.5, "sum", torch.tensor(1.0, device=device))
    s64 = s.double().requires_grad_()
    ref = _formula(s64, t.double(), target, 2.0, 0.5, "sum")
    (gref,) = torch.autograd.grad(ref, s64)
    assert_close(loss.float(), ref, torch.bfloat16)
    assert_close(gs, gref, torch.bfloat16)


@pytest.mark.parametrize("V,block", [(2, 16), (3, 16), (64 * 3 + 1, 64), (64 * 4 + 37, 64), (1025, 256)])
def test_kd_row_walk_any_vocab_matches_float64(V, block):
    """Head / unmasked main / tail walk of the KD kernel at V = block * k + r (forced small chunks)."""
    from fastft.kernels.kd_loss import kd_forward

    N = 11
    s = randn(N, V, scale=2.0)
    t = randn(N, V + 3, scale=2.0)[:, 1 : 1 + V]  # teacher rows with another stride and alignment
    target = torch.randint(0, V, (N,))
    target[2] = -100
    for tgt, T, alpha in ((target, 2.0, 0.3), (None, 1.5, 0.5)):
        g = torch.full_like(s, float("nan"))
        loss = kd_forward(s, t, tgt, temperature=T, alpha=alpha, grad_out=g, block_v=block)
        s64 = s.double().requires_grad_()
        ref = _formula(s64, t.double(), tgt, T, alpha, "none")
        (gref,) = torch.autograd.grad(ref.sum(), s64)
        assert_close(loss, ref, torch.float32, name=f"loss V={V} target={tgt is not None}")
        assert_close(g, gref, torch.float32, name=f"grad V={V} target={tgt is not None}")
