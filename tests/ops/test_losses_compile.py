"""The loss ops are torch.library custom ops: torch.compile (fullgraph) traces through them."""

import pytest
import torch

import fastft
from fastft.functional import cross_entropy, kd_loss, linear_cross_entropy
from fastft.ops import cross_entropy as ce_ops
from fastft.ops import kd_loss as kd_ops
from fastft.ops import linear_cross_entropy as lce_ops
from fastft.ops import linear_kd_loss as lkd_ops
from tests.compare import assert_close, randn


def _ce(x, t):
    return cross_entropy(x * 2.0, t, label_smoothing=0.1) * 3.0


def _lce_kd(h, w, t, teacher):
    return linear_cross_entropy(h, w, t, reduction="none", chunk_size=4).sum() + kd_loss(
        h @ w.t(), teacher, t
    )


@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("path", ["triton", "torch"])
def test_losses_compile_fullgraph(device, compile_backend, path):
    torch._dynamo.reset()
    x = randn(6, 10, device=device).requires_grad_()
    t = torch.randint(0, 10, (6,), device=device)
    t[0] = -100
    h = randn(6, 4, device=device).requires_grad_()
    w = randn(10, 4, device=device).requires_grad_()
    teacher = randn(6, 10, device=device)
    with fastft.backend(path):
        for fn, args, wrt in ((_ce, (x, t), (x,)), (_lce_kd, (h, w, t, teacher), (h, w))):
            compiled = torch.compile(fn, backend=compile_backend, fullgraph=True)
            loss_c = compiled(*args)
            grads_c = torch.autograd.grad(loss_c, wrt)
            loss_e = fn(*args)
            grads_e = torch.autograd.grad(loss_e, wrt)
            assert_close(loss_c, loss_e, torch.float32, name=f"{fn.__name__} loss")
            for a, b in zip(grads_c, grads_e):
                assert_close(a, b, torch.float32, name=f"{fn.__name__} grad")


def test_custom_ops_pass_opcheck(device):
    """Schema, fake (meta) kernels, autograd registration and AOT dispatch of every op."""
    x = randn(6, 10, device=device).requires_grad_()
    t = torch.randint(0, 10, (6,), device=device)
    h = randn(6, 4, device=device).requires_grad_()
    w = randn(10, 4, device=device).requires_grad_()
    b = randn(10, device=device).requires_grad_()
    cases = [
        (ce_ops._cross_entropy_op, (x, t, -100, 0.1, 1, True)),
        (ce_ops._cross_entropy_op, (x, t, -100, 0.0, 0, True)),
        (kd_ops._kd_op, (x, randn(6, 10, device=device), t, 2.0, 0.5, -100, 0, True)),
        (kd_ops._kd_op, (x, randn(6, 10, device=device), None, 2.0, 0.5, -100, 1, True)),
        (lce_ops._linear_ce_op, (h, w, t, None, -100, 0.0, 1, 4, True, True, False)),
        (lce_ops._linear_ce_op, (h, w, t, b, -100, 0.1, 0, 4, True, True, True)),
        (
            lkd_ops._linear_kd_op,
            (
                h,
                w,
                randn(6, 5, device=device),
                randn(10, 5, device=device),
                t,
                b,
                None,
                2.0,
                0.5,
                -100,
                1,
                4,
                True,
                True,
                True,
            ),
        ),
        (
            lkd_ops._linear_kd_op,
            (
                h,
                w,
                randn(6, 5, device=device),
                randn(10, 5, device=device),
                None,
                None,
                None,
                2.0,
                0.5,
                -100,
                0,
                4,
                True,
                True,
                False,
            ),
        ),
        # the backward op is not itself differentiable (no double backward): plain inputs
        (
            lce_ops._linear_ce_bwd_op,
            (randn(6, device=device), h.detach(), w.detach(), t, b.detach(), -100, 0.0, 4, True, True, True),
        ),
    ]
    for op, args in cases:
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (op, result)
