"""The torch fallback of FusedAdamW (torch._fused_adamw_ + foreach clip): same numbers as fastft._C,
no host reads in its Python code, bounded fp32 copies for low-precision params, the loop path."""

from __future__ import annotations

import math

import pytest
import torch

from fastft import _ext
from fastft.optim import FusedAdamW, _reference
from fastft.optim import fused_adamw as fa
from tests.compare import assert_close, max_err, randn

needs_ext = pytest.mark.skipif(not _ext.available(), reason="fastft._C is not built")


def _model(seed=0, dtypes=(torch.float32, torch.bfloat16, torch.float16)):
    shapes = [(70001,), (13, 17), (1,), (3, 5, 11)]
    return [
        torch.nn.Parameter(randn(*s, dtype=dtypes[i % len(dtypes)], seed=seed + i))
        for i, s in enumerate(shapes)
    ]


def _run(ps, steps=4, seed=0, **kw):
    groups = [dict(params=ps[:2]), dict(params=ps[2:], lr=3e-3, betas=(0.8, 0.99), weight_decay=0.1)]
    opt = FusedAdamW(groups, lr=1e-2, max_grad_norm=kw.pop("max_grad_norm", 5.0), **kw)
    norms = []
    for s in range(steps):
        for i, p in enumerate(ps):
            p.grad = randn(*p.shape, dtype=p.dtype, seed=seed + 100 * s + i)
        opt.step()
        norms.append(opt.grad_norm.clone())
    return opt, norms


@needs_ext
def test_mixed_dtypes_fallback_equals_extension(monkeypatch):
    """fp32 + bf16 + fp16 params in two groups: the fallback gives the op's numbers (fp32 rounding)."""
    ext_ps = _model()
    opt_e, n_e = _run(ext_ps)
    monkeypatch.setattr(fa, "USE_EXTENSION", False)
    ref_ps = _model()
    opt_r, n_r = _run(ref_ps)
    for a, b in zip(n_e, n_r):
        assert_close(b, a, torch.float32, name="grad_norm")
    for p, r in zip(ext_ps, ref_ps):
        assert max_err(r, p) <= 2 * torch.finfo(p.dtype).eps * max(1.0, p.abs().max().item())
        for k in ("exp_avg", "exp_avg_sq"):
            assert_close(opt_r.state[r][k], opt_e.state[p][k], torch.float32, name=k)
        assert opt_r.state[r]["step"].item() == 4


def test_fallback_when_extension_lacks_the_device_kernels(monkeypatch):
    """fastft._C built without this device's kernels (a CPU-only build on a GPU): the fallback runs."""
    real = torch._C._dispatch_has_kernel_for_dispatch_key
    monkeypatch.setattr(
        torch._C,
        "_dispatch_has_kernel_for_dispatch_key",
        lambda op, key: False if op.startswith("fastft::") else real(op, key),
    )
    calls = []
    orig = _reference.fused_adamw_
    monkeypatch.setattr(_reference, "fused_adamw_", lambda *a, **k: calls.append(1) or orig(*a, **k))
    ps = _model(dtypes=(torch.float32,))
    _run(ps, steps=1)
    assert calls == [1]


def test_fallback_reads_nothing_on_the_host(monkeypatch):
    """No .item()/float()/bool() on a tensor in the fallback's Python code (each is a sync on a GPU)."""
    monkeypatch.setattr(fa, "USE_EXTENSION", False)
    ps = _model()
    opt, _ = _run(ps, steps=1)  # states created

    def boom(self, *a):
        raise AssertionError("host read of a tensor inside FusedAdamW.step")

    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    for i, p in enumerate(ps):
        p.grad = randn(*p.shape, dtype=p.dtype, seed=500 + i)
    opt.grad_scale = torch.tensor(4.0)  # as GradScaler sets them around step()
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    monkeypatch.undo()
    assert opt.found_inf.item() == 0.0 and opt.state[ps[0]]["step"].item() == 2


def test_low_precision_slices_do_not_change_numbers(monkeypatch):
    """bf16/fp16 params go through fp32 copies in slices; the slice size must not matter (bitwise)."""
    monkeypatch.setattr(fa, "USE_EXTENSION", False)
    dt = (torch.bfloat16, torch.float16)
    whole = _model(seed=3, dtypes=dt)
    _run(whole, seed=7)
    monkeypatch.setattr(_reference, "SLICE_NUMEL", 200)  # 70001 alone, the small ones in runs
    sliced = _model(seed=3, dtypes=dt)
    _run(sliced, seed=7)
    for a, b in zip(whole, sliced):
        assert torch.equal(a, b)
    assert [len(r) for r in _reference._slices([0, 1, 2, 3], sliced)] == [1, 1, 2]


def test_noncontiguous_params_take_the_loop_path(monkeypatch):
    """Transposed params/grads: per-tensor loop, same numbers as the contiguous fused path."""
    monkeypatch.setattr(fa, "USE_EXTENSION", False)
    base = [randn(37, 23, seed=1), randn(5, 9, seed=2)]
    cont = [torch.nn.Parameter(b.clone()) for b in base]
    tr = [torch.nn.Parameter(b.t().contiguous().t()) for b in base]  # same values, column-major
    assert not tr[0].is_contiguous()
    o1 = FusedAdamW(cont, lr=1e-2, max_grad_norm=1.0)
    o2 = FusedAdamW(tr, lr=1e-2, max_grad_norm=1.0)
    for s in range(3):
        for i, (c, t) in enumerate(zip(cont, tr)):
            g = randn(*c.shape, seed=10 * s + i)
            c.grad = g.clone()
            t.grad = g.t().contiguous().t()
        o1.step()
        o2.step()
        assert_close(o2.grad_norm, o1.grad_norm, torch.float32)
    for c, t in zip(cont, tr):
        assert_close(t, c, torch.float32)


@pytest.mark.parametrize("mode", ["nan", "amp_found_inf"])
def test_fallback_skip_changes_nothing(mode, monkeypatch):
    monkeypatch.setattr(fa, "USE_EXTENSION", False)
    ps = _model(seed=4)
    opt, _ = _run(ps, steps=2)
    before = [p.detach().clone() for p in ps]
    states = [{k: v.clone() for k, v in opt.state[p].items()} for p in ps]
    for i, p in enumerate(ps):
        p.grad = randn(*p.shape, dtype=p.dtype, seed=900 + i)
    if mode == "nan":
        ps[2].grad[0] = math.nan
    else:
        opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert opt.found_inf.item() == 1.0
    for p, p0, st in zip(ps, before, states):
        assert torch.equal(p, p0)
        for k, v in st.items():
            assert torch.equal(opt.state[p][k], v), k


def test_grad_sumsq_fallback_matches_float64():
    grads = [randn(70001, seed=1), randn(13, 17, dtype=torch.bfloat16, seed=2), torch.full((64,), 3e19)]
    stats = _reference.grad_sumsq(grads)
    ref = sum(g.double().pow(2).sum() for g in grads)
    assert stats.dtype == torch.float32 and stats.shape == (2,)
    assert_close(stats[0], ref.float(), torch.float32)  # finite: fp32 squares that overflow are fine here
    assert stats[1].item() == 0.0
    grads[1][0, 0] = math.inf
    assert _reference.grad_sumsq(grads)[1].item() == 1.0
