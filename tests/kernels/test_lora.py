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


def _check(case, layout, dtype, device, p=0.0, keep=None, train_bias=True, seed=0, train_x=True):
    M, K, N, r = case
    s = 0.75
    x, w, b, a, bb, dy = _inputs(M, K, N, r, layout, dtype, device, seed=seed)
    req = [train_x, False, train_bias, True, True]
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
    if not train_x:  # e.g. the first layer of a frozen model: no dx pass at all
        assert g[0] is None
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
    _check((33, 19, 35, 3), layout, torch.float32, device, seed=5, train_x=False)


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
    # fp32 on CUDA goes to cuBLAS unless TF32 is allowed: compare in fp16 there
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x, w, b, a, bb, _ = _inputs(19, 26, 31, 5, "conv1d", dtype, device, seed=7)
    with fastft.backend("triton"):
        yk = lora_linear(x, w, b, a, bb, 1.5, weight_layout="conv1d")
    assert fastft.report()["lora_linear"].startswith("triton")
    with fastft.backend("torch"):
        yr = lora_linear(x, w, b, a, bb, 1.5, weight_layout="conv1d")
    assert fastft.report()["lora_linear"] == "torch (forced)"
    assert_close(yk, yr, dtype)


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


# ----------------------------------------------------------------------------- GPU code generation

_AOT = r"""
import os, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastft.kernels.lora as K

def build(fn, args, const, opts):
    # mimic the JIT's specialisation of a real launch: ints == 1 become constexpr, multiples of 16
    # and pointers get the divisibility hint (this is what enables the cp.async pipeline)
    sig, cx, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in const:
            sig[name] = "constexpr"; cx[(i,)] = const[name]; continue
        ty, val = args[name]
        if ty.startswith("*"):
            sig[name] = ty; attrs[(i,)] = [["tt.divisibility", 16]]
        elif ty == "i32" and val == 1:
            sig[name] = "constexpr"; cx[(i,)] = 1
        else:
            sig[name] = ty
            if ty == "i32" and val % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 128), options=opts)

M, Kd, N, r = 16384, 768, 2304, 16
bf = "*bf16"
i32 = lambda v: ("i32", v)
gemm = dict(X=(bf, 0), W=(bf, 0), BIAS=(bf, 0), DOWN=(bf, 0), UP=(bf, 0), OUT=(bf, 0), U=(bf, 0),
            M=i32(M), L=i32(Kd), O=i32(N), R=i32(r), stride_xm=i32(Kd), stride_xl=i32(1),
            stride_wl=i32(N), stride_wo=i32(1), stride_dl=i32(1), stride_dj=i32(Kd), stride_uj=i32(1),
            stride_uo=i32(r), stride_om=i32(N), stride_oo=i32(1), stride_tm=i32(r), stride_tj=i32(1),
            seed=i32(7), p=("fp32", 0), scaling=("fp32", 0))
out = []
for fuse, drop, acc in ((True, False, False), (False, True, False), (False, True, True)):
    if acc:  # the cuBLAS variant's epilogue-only pass (L == 0)
        gemm["L"] = i32(0)
    cfg = (K._DROP_CONFIGS if drop else K._DENSE_CONFIGS)[0]  # dropout tunes over its own list
    c = build(K._lora_gemm_kernel.fn, gemm, dict(HAS_BIAS=not acc, DROP_OUT=drop, FUSE_DOWN=fuse, ACCUMULATE=acc,
              DOT=tl.bfloat16, PRECISION="ieee", R_PAD=16, **cfg.kwargs),
              {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    out.append(("epilogue" if acc else "gemm", "wgmma" in c.asm["ptx"], c.metadata.shared))
skinny = dict(X=(bf, 0), DOWN=(bf, 0), U=(bf, 0), T=(bf, 0), WS=("*fp32", 0), M=i32(M), L=i32(Kd), R=i32(r),
              rows_per_split=i32(256), stride_xm=i32(Kd), stride_xl=i32(1), stride_dl=i32(1), stride_dj=i32(Kd),
              stride_tm=i32(r), stride_tj=i32(1), stride_ws=i32(r * Kd), stride_wj=i32(Kd), seed=i32(7),
              p=("fp32", 0), scale=("fp32", 0))
for fn in (K._lora_down_kernel, K._lora_bwd_factor_kernel):
    c = build(fn, skinny, dict(DROP=True, DOT=tl.bfloat16, PRECISION="ieee", R_PAD=16, BLOCK_M=64, BLOCK_L=128),
              {"num_warps": 8, "num_stages": 3})
    out.append((fn.__name__, True, c.metadata.shared))
print(out)
"""


def test_kernels_compile_for_hopper(tmp_path):
    """The interpreter never runs the GPU compiler: compile the kernels for sm_90a ahead of time
    (no GPU needed, triton's bundled ptxas) and check the main GEMM uses wgmma with a multi-stage
    shared-memory pipeline (> 1 stage of the 128x64 + 64x128 bf16 tiles = 32 KiB)."""
    import importlib.util
    import os
    import subprocess
    import sys

    spec = importlib.util.find_spec("triton.backends.nvidia")
    if spec is None:
        pytest.skip("triton has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-c", _AOT], capture_output=True, text=True, env=env, timeout=600)
    if res.returncode != 0 and "ptxas" in res.stderr and "not found" in res.stderr.lower():
        pytest.skip("no ptxas for sm_90a")
    assert res.returncode == 0, res.stderr[-3000:]
    out = eval(res.stdout.strip().splitlines()[-1])
    for name, wgmma, smem in out:
        assert wgmma, f"{name}: no wgmma"
        if name == "gemm":
            assert smem > 2 * 32 * 1024, f"{name}: no software pipelining (shared memory {smem})"


# ----------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "case",
    [(4096, 768, 2304, 16), (3000, 3072, 768, 64), (1000, 768, 768, 8)],
    ids=lambda c: "x".join(map(str, c)),
)
def test_gpu_sizes(case, layout, dtype, device):
    """BERT/GPT-2 projection sizes with the autotuned Hopper configs (fused and unfused rank paths)."""
    _check(case, layout, dtype, device)


@pytest.mark.gpu
def test_gpu_auto_takes_kernel_and_dropout(device):
    x, w, b, a, bb, dy = _inputs(2048, 768, 768, 16, "linear", torch.bfloat16, device)
    with fastft.backend("auto"):
        lora_linear(x, w, b, a, bb, 1.0)
    assert fastft.report()["lora_linear"] == "triton"
    for layout in LAYOUTS:
        test_dropout_backward_uses_forward_mask(layout, torch.float16, device)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cublas_main_gemm_variant(layout, dtype, device, monkeypatch):
    """The alternative design (torch.mm for the frozen GEMM + Triton rank-r epilogue pass), incl. r > 32
    and dropout, is as exact as the fused kernel."""
    monkeypatch.setenv("FASTFT_LORA_MAIN_GEMM", "cublas")
    _check((37, 45, 29, 7), layout, dtype, device)
    _check((20, 33, 18, 40), layout, dtype, device, train_bias=False, seed=2)
    if dtype == torch.float32:
        test_dropout_backward_uses_forward_mask(layout, dtype, device)
    monkeypatch.setenv("FASTFT_LORA_MAIN_GEMM", "bogus")
    with pytest.raises(ValueError, match="FASTFT_LORA_MAIN_GEMM"):
        _check((4, 8, 8, 2), layout, dtype, device)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_dropout_backward_uses_forward_mask(layout, dtype, device):
    """The dropout kernels (fused mask regeneration in forward and backward) on the GPU, both 16-bit dtypes."""
    test_dropout_backward_uses_forward_mask(layout, dtype, device)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("case", SHAPES, ids=lambda c: "x".join(map(str, c)))
def test_gpu_forward_backward(case, layout, dtype, device):
    """The CPU suite's awkward shapes, compiled for the GPU (fused rank-r path included)."""
    _check(case, layout, dtype, device)
