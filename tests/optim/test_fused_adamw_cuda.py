"""The CUDA multi-tensor AdamW at scale (skipped without a GPU): more tensors than one launch's table
(96), more blocks than one launch (2048), a tensor over 2048 * 65536 = 134,217,728 elements, the AMP
arguments, the two FSDP2 phases, a side stream, and zero host syncs per FusedAdamW step."""

from __future__ import annotations

import pytest
import torch

from fastft import _ext
from fastft.optim import FusedAdamW, _reference
from fastft.optim import fused_adamw as fa
from tests.compare import assert_close

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
K_MAX_ELEMS = 2048 * 65536  # kMaxBlocks * kChunk in csrc/adamw_cuda.cu


def _has_cuda_kernels() -> bool:
    return _ext.available() and torch._C._dispatch_has_kernel_for_dispatch_key("fastft::fused_adamw_", "CUDA")


needs_cuda_ext = pytest.mark.skipif(not _has_cuda_kernels(), reason="fastft._C has no CUDA kernels")


def _state(sizes, dtype, seed):
    g = torch.Generator(device=CUDA).manual_seed(seed)
    n = len(sizes)
    ps = [torch.randn(s, generator=g, device=CUDA).to(dtype) for s in sizes]
    gs = [(torch.randn(s, generator=g, device=CUDA) * 0.01).to(dtype) for s in sizes]
    ms = [torch.randn(s, generator=g, device=CUDA) * 1e-3 for s in sizes]
    vs = [torch.rand(s, generator=g, device=CUDA) * 1e-5 for s in sizes]
    st = [torch.full((), 3.0, device=CUDA) for _ in sizes]
    hyper = dict(
        lrs=[1e-3 * (1 + i % 3) for i in range(n)],
        beta1s=[0.9] * n,
        beta2s=[0.999] * n,
        epss=[1e-8] * n,
        weight_decays=[0.01 * (i % 2) for i in range(n)],
    )
    return dict(params=ps, grads=gs, exp_avgs=ms, exp_avg_sqs=vs, state_steps=st, **hyper)


def _clone(a):
    return {
        k: [t.clone() for t in v] if v and isinstance(v[0], torch.Tensor) else list(v) for k, v in a.items()
    }


def _check(got, want, dtype):
    for k in ("params", "exp_avgs", "exp_avg_sqs"):
        for i, (x, y) in enumerate(zip(got[k], want[k])):
            tol = 2 * torch.finfo(x.dtype).eps * max(1.0, y.float().abs().max().item())
            err = (x.float() - y.float()).abs().max().item()
            assert err <= tol, f"{k}[{i}] ({x.numel()} elements): max error {err:.3g} > {tol:.3g}"
    for x, y in zip(got["state_steps"], want["state_steps"]):
        assert x.item() == y.item()


def _f64_norm(grads):
    return torch.stack([g.double().norm() for g in grads]).norm()


@needs_cuda_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_many_tensors_many_blocks_huge_tensor(dtype):
    """150 tensors, ~2,700 blocks, one tensor of 134,217,728 + 12,345 elements, against the torch fallback."""
    sizes = [1, 7, 768, 65535, 65536, 65537, 3 * 65536 + 5] * 21 + [K_MAX_ELEMS + 12345, 2359296]
    assert len(sizes) > 96 and sum(-(-s // 65536) for s in sizes) > 2 * 2048
    a = _state(sizes, dtype, seed=1)
    b = _clone(a)
    n1, f1 = torch.ops.fastft.fused_adamw_(**a, max_norm=1.0)
    n2, f2 = _reference.fused_adamw_(**b, max_norm=1.0)
    assert f1.item() == 0.0 and f2.item() == 0.0
    assert_close(n1, _f64_norm(a["grads"]).float(), torch.float32, name="grad_norm")
    _check(a, b, dtype)


@needs_cuda_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_amp_grad_scale_and_found_inf(dtype):
    sizes = [1000, 70001, 5]
    plain = _state(sizes, dtype, seed=2)
    scaled = _clone(plain)
    scaled["grads"] = [(g.float() * 1024).to(dtype) for g in scaled["grads"]]
    ops = torch.ops.fastft
    n1, _ = ops.fused_adamw_(**plain, max_norm=0.5)
    no_inf = torch.zeros((), device=CUDA)
    n2, f2 = ops.fused_adamw_(
        **scaled, max_norm=0.5, grad_scale=torch.full((), 1024.0, device=CUDA), found_inf=no_inf
    )
    assert f2.item() == 0.0
    assert_close(n2, n1, torch.float32)
    _check(scaled, plain, dtype)
    # GradScaler found an inf elsewhere: nothing changes, steps included
    before = _clone(scaled)
    _, f3 = ops.fused_adamw_(**scaled, max_norm=0.5, found_inf=torch.ones((), device=CUDA))
    assert f3.item() == 1.0
    for k in ("params", "exp_avgs", "exp_avg_sqs", "state_steps"):
        assert all(torch.equal(x, y) for x, y in zip(scaled[k], before[k])), k


@needs_cuda_ext
def test_two_phase_ops_equal_fused():
    """grad_sumsq + adamw_update_ (the FSDP2 path, stats all-reduced in between) == fused_adamw_."""
    sizes = [65536 * 3 + 1, 17, 4096] * 40  # 120 tensors: several launches per phase
    a = _state(sizes, torch.bfloat16, seed=3)
    b = _clone(a)
    ops = torch.ops.fastft
    n1, _ = ops.fused_adamw_(**a, max_norm=2.0)
    stats = ops.grad_sumsq(b["grads"])
    ref = _f64_norm(b["grads"]) ** 2
    assert_close(stats[0], ref.float(), torch.float32, name="sumsq")
    assert stats[1].item() == 0.0
    n2, _ = ops.adamw_update_(**b, stats=stats, max_norm=2.0)
    assert_close(n2, n1, torch.float32)
    _check(b, a, torch.bfloat16)
    bad = [g.clone() for g in b["grads"]]
    bad[77][3] = float("nan")
    assert ops.grad_sumsq(bad)[1].item() == 1.0


@needs_cuda_ext
def test_side_stream_follows_current_stream():
    """Launched under torch.cuda.stream(s), every kernel runs on s (inputs made on the default stream)."""
    sizes = [1 << 22, 65537, 3] * 8
    a = _state(sizes, torch.float32, seed=4)
    b = _clone(a)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    ops = torch.ops.fastft
    for _ in range(3):
        for g in a["grads"] + b["grads"]:
            g.mul_(1.01)  # fresh work on the default stream that the op must not overtake
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            n_side, _ = ops.fused_adamw_(**a, max_norm=1.0)
        torch.cuda.current_stream().wait_stream(s)
        n_main, _ = ops.fused_adamw_(**b, max_norm=1.0)
        assert_close(n_side, n_main, torch.float32)
    _check(a, b, torch.float32)


@pytest.mark.parametrize("path", ["ext", "fallback"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_step_makes_no_host_sync(path, dtype, monkeypatch):
    """A FusedAdamW step (clip + AMP arguments) never blocks the host: sync debug mode 'error'."""
    if path == "ext" and not _has_cuda_kernels():
        pytest.skip("fastft._C has no CUDA kernels")
    if path == "fallback":
        monkeypatch.setattr(fa, "USE_EXTENSION", False)
    params = [
        torch.nn.Parameter(torch.randn(s, device=CUDA, dtype=dtype)) for s in (768, 3072 * 768, 30522, 1)
    ]
    opt = FusedAdamW([dict(params=params[:2]), dict(params=params[2:], lr=1e-4)], lr=1e-3, max_grad_norm=1.0)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()  # creates the states
    torch.cuda.synchronize()
    opt.grad_scale = torch.full((), 8.0, device=CUDA)
    opt.found_inf = torch.zeros((), device=CUDA)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert opt.state[params[0]]["step"].item() == 3
