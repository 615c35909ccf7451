"""Fused softmax cross-entropy (Triton kernel; the CPU interpreter without a GPU) vs a float64 torch reference."""

import pytest
import torch
import torch.nn.functional as F

import fastft
from fastft.functional import cross_entropy
from tests.compare import assert_close, assert_within_torch_error, randn

REDUCTIONS = ("mean", "sum", "none")
# (N, V): V from 2 to GPT-2's 50257; N = 1, odd, larger (small N for the big vocabularies)
# V <= 1024 takes the tiled small-vocabulary kernel ((300, 20): several tiles, the last partial);
# above, the row-looping kernel ((5, 1025): just over the switch, a partial second block).
SHAPES = [
    (1, 2),
    (37, 2),
    (5, 3),
    (67, 3),
    (300, 20),
    (1, 1000),
    (33, 1000),
    (5, 1025),
    (3, 32000),
    (2, 50257),
]


def _targets(n: int, v: int, device, ignore: str = "some", ignore_index: int = -100) -> torch.Tensor:
    t = torch.randint(0, v, (n,), device=device)
    if ignore == "some" and n > 1:
        t[torch.randperm(n, device=device)[: max(1, n // 4)]] = ignore_index
    elif ignore == "all":
        t[:] = ignore_index
    return t


def _upstream(reduction: str, n: int, device) -> torch.Tensor:
    """An upstream gradient that is not 1 (random per row for ``none``)."""
    return randn(n, device=device) if reduction == "none" else torch.tensor(1.7, device=device)


def _ref(x64, t, reduction, eps, ignore_index=-100):
    return F.cross_entropy(x64, t, reduction=reduction, label_smoothing=eps, ignore_index=ignore_index)


@pytest.mark.parametrize("N,V", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ce_fp32_matches_float64(device, N, V, reduction):
    for eps in (0.0, 0.1):
        x = randn(N, V, device=device, scale=3.0).requires_grad_()
        t = _targets(N, V, device)
        g = _upstream(reduction, N, device)
        with fastft.backend("triton"):
            loss = cross_entropy(x, t, reduction=reduction, label_smoothing=eps)
            (gx,) = torch.autograd.grad(loss, x, g)
        x64 = x.detach().double().requires_grad_()
        ref = _ref(x64, t, reduction, eps)
        (gref,) = torch.autograd.grad(ref, x64, g.double())
        assert loss.dtype == torch.float32 and loss.shape == ref.shape
        assert_close(loss, ref, torch.float32, name=f"loss eps={eps}")
        assert_close(gx, gref, torch.float32, name=f"grad eps={eps}")


def test_ce_torch_path_matches_float64(device):
    """The reference path (what CPU tensors take in auto mode) computes the same numbers."""
    N, V = 19, 777
    x = randn(N, V, device=device).requires_grad_()
    t = _targets(N, V, device)
    with fastft.backend("torch"):
        loss = cross_entropy(x, t, label_smoothing=0.2)
        (gx,) = torch.autograd.grad(loss, x)
    x64 = x.detach().double().requires_grad_()
    ref = _ref(x64, t, "mean", 0.2)
    (gref,) = torch.autograd.grad(ref, x64)
    assert_close(loss, ref, torch.float32)
    assert_close(gx, gref, torch.float32)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_ce_all_rows_ignored_matches_torch(device, backend):
    """All rows ignored: mean is nan (0/0) with zero grads, sum is 0 -- exactly torch's behaviour."""
    x = randn(4, 10, device=device).requires_grad_()
    t = torch.full((4,), -100, device=device)
    with fastft.backend(backend):
        mean = cross_entropy(x, t)
        (g_mean,) = torch.autograd.grad(mean, x)
        total = cross_entropy(x, t, reduction="sum", label_smoothing=0.1)
        (g_sum,) = torch.autograd.grad(total, x)
    ref = F.cross_entropy(x, t)
    assert torch.isnan(mean) and torch.isnan(ref)
    assert torch.equal(g_mean, torch.zeros_like(x))
    assert total.item() == 0.0 and torch.equal(g_sum, torch.zeros_like(x))


def test_ce_custom_ignore_index_and_leading_dims(device):
    B, S, V = 3, 5, 65
    x = randn(B, S, V, device=device).requires_grad_()
    t = torch.randint(0, V, (B, S), device=device)
    t[0, :2] = 7
    with fastft.backend("triton"):
        loss = cross_entropy(x, t, ignore_index=7, reduction="none")
        (gx,) = torch.autograd.grad(loss, x, randn(B, S, device=device))
    x64 = x.detach().double().requires_grad_()
    ref = F.cross_entropy(x64.reshape(-1, V), t.reshape(-1), ignore_index=7, reduction="none").reshape(B, S)
    assert loss.shape == (B, S)
    assert_close(loss, ref, torch.float32)
    assert (loss[0, :2] == 0).all() and (gx[0, :2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,V", [(17, 1000), (3, 32000)])
def test_ce_low_precision_within_torch_error(device, dtype, N, V):
    """fp16/bf16 logits: error vs float64 <= 2x torch's own error in that dtype.

    Upstream grad 1 (and 0.5, exact in binary): the saved gradient is rounded once in the
    forward; an arbitrary upstream factor would round it a second time (see ops docstring).
    """
    for eps, gscale in ((0.0, 1.0), (0.1, 0.5)):
        x = randn(N, V, device=device, scale=2.0, dtype=dtype).requires_grad_()
        t = _targets(N, V, device)
        g = torch.tensor(gscale, device=device)
        with fastft.backend("triton"):
            loss = cross_entropy(x, t, label_smoothing=eps)
            (gx,) = torch.autograd.grad(loss, x, g.to(dtype))
        assert loss.dtype == dtype and gx.dtype == dtype
        xt = x.detach().requires_grad_()
        lt = F.cross_entropy(xt, t, label_smoothing=eps)
        (gt,) = torch.autograd.grad(lt, xt, g.to(dtype))
        x64 = x.detach().double().requires_grad_()
        ref = _ref(x64, t, "mean", eps)
        (gref,) = torch.autograd.grad(ref, x64, g.double())
        assert_within_torch_error(loss, lt, ref, name=f"loss {dtype}")
        assert_within_torch_error(gx, gt, gref, name=f"grad {dtype}")


def test_ce_inplace_backward_overwrites_logits(device):
    N, V = 9, 301
    base = randn(N, V, device=device).requires_grad_()
    t = _targets(N, V, device)
    with fastft.backend("triton"):
        x = base * 1.0  # a non-leaf the caller allows us to clobber
        loss = cross_entropy(x, t, inplace_backward=True)
        loss.backward()
    x64 = base.detach().double().requires_grad_()
    ref = _ref(x64, t, "mean", 0.0)
    (gref,) = torch.autograd.grad(ref, x64)
    assert_close(loss, ref, torch.float32)
    assert_close(base.grad, gref, torch.float32)
    assert_close(x.detach(), gref, torch.float32, name="logits now hold the gradient")


def test_ce_inplace_backward_detects_other_users(device):
    """Another autograd user of the clobbered logits fails loudly instead of reading gradients."""
    base = randn(4, 33, device=device).requires_grad_()
    t = _targets(4, 33, device, ignore="none")
    with fastft.backend("triton"):
        x = base * 1.0
        other = (x * x).sum()  # saves x for its backward
        loss = cross_entropy(x, t, inplace_backward=True)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            (loss + other).backward()


def test_ce_bad_input_errors(device):
    x = randn(4, 5, device=device)
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(x, torch.zeros(4, dtype=torch.long, device=device), reduction="avg")
    with pytest.raises(ValueError, match="target must have shape"):
        cross_entropy(x, torch.zeros(3, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="leaf"):
        cross_entropy(
            x.clone().requires_grad_(), torch.zeros(4, dtype=torch.long, device=device), inplace_backward=True
        )
    with pytest.raises(TypeError, match="class indices"):
        cross_entropy(x, torch.zeros(4, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("V", [128256, 262144])
def test_ce_large_vocab_gpu(V):
    device = torch.device("cuda")
    N = 64
    x = randn(N, V, device=device, dtype=torch.bfloat16, scale=2.0).requires_grad_()
    t = _targets(N, V, device)
    loss = cross_entropy(x, t, label_smoothing=0.1)
    (gx,) = torch.autograd.grad(loss, x)
    xt = x.detach().requires_grad_()
    lt = F.cross_entropy(xt, t, label_smoothing=0.1)
    (gt,) = torch.autograd.grad(lt, xt)
    x64 = x.detach().double().requires_grad_()
    ref = _ref(x64, t, "mean", 0.1)
    (gref,) = torch.autograd.grad(ref, x64)
    assert_within_torch_error(loss, lt, ref, name="loss")
    assert_within_torch_error(gx, gt, gref, name="grad")


@pytest.mark.gpu
def test_ce_int64_offsets_gpu():
    """N * V > 2^31: rows past the int32 range are computed right (in place, to fit in memory)."""
    device = torch.device("cuda")
    N, V = 8400, 262144
    assert N * V > 2**31
    x = torch.randn(N, V, device=device, dtype=torch.bfloat16)
    tail = x[-3:].double().clone()
    t = torch.randint(0, V, (N,), device=device)
    leaf = torch.zeros((), device=device, requires_grad=True)
    logits = x + leaf  # non-leaf, consumed only here; its storage receives the gradient
    del x
    loss = cross_entropy(logits, t, reduction="none", inplace_backward=True)
    tail64 = tail.requires_grad_()
    ref = F.cross_entropy(tail64, t[-3:], reduction="none")
    (gref,) = torch.autograd.grad(ref.sum(), tail64)
    assert_close(loss[-3:], ref, torch.float32, scale=10)
    assert_close(logits[-3:].detach(), gref, torch.bfloat16, name="grad rows beyond 2^31 elements")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checked on CPU only (a host sync on CUDA)")
def test_ce_out_of_range_target_is_an_error():
    x = randn(3, 5)
    with fastft.backend("triton"), pytest.raises(ValueError, match="outside"):
        cross_entropy(x, torch.tensor([0, 5, 1]))
    with fastft.backend("triton"), pytest.raises(ValueError, match="outside"):
        fastft.functional.kd_loss(x, x, torch.tensor([0, -3, 1]))


_COMPILE_SM90 = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastft.kernels.cross_entropy as k
import fastft.kernels.kd_loss as kd
b = "*bf16"
io = {"TARGET": "*i64", "LOSS": "*fp32", "GRAD": b, "stride_g": "i64", "SCALE": "*fp32"}
w = {"WEIGHT": "*fp32"}
cases = [
    (k._cross_entropy_fwd_kernel,
     {"X": b, "stride_x": "i64", **io, **w, "V": "i32", "ignore_index": "i32", "eps": "fp32"},
     {"BLOCK_V": 8192, "HAS_SMOOTHING": True, "COMPUTE_GRAD": True, "SCALE_MODE": 2, "HAS_WEIGHT": True,
      "SAME_STRIDE": False}),
    (k._cross_entropy_fwd_small_kernel,
     {"X": b, "stride_x": "i64", **io, **w, "N": "i32", "V": "i32", "ignore_index": "i32", "eps": "fp32"},
     {"BLOCK_N": 128, "BLOCK_V": 32, "HAS_SMOOTHING": True, "COMPUTE_GRAD": True, "SCALE_MODE": 1,
      "HAS_WEIGHT": True}),
    (kd._kd_fwd_kernel, {"S": b, "stride_s": "i64", "T": "*fp32", "stride_t": "i64", **io, "V": "i32",
                        "ignore_index": "i32", "inv_temp": "fp32", "temp": "fp32", "alpha": "fp32"},
     {"BLOCK_V": 4096, "HAS_TARGET": True, "COMPUTE_GRAD": True, "SCALE_MODE": 1, "SAME_STRIDE": True}),
]
for fn, sig, consts in cases:
    sig = {**sig, **{c: "constexpr" for c in consts}}
    cc = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                        options={"num_warps": 8})
    assert "ld.global" in cc.asm["ptx"], fn.__name__
print("compiled")
"""


def test_kernels_compile_for_hopper_without_a_gpu():
    """The interpreter is lenient; compile every kernel for sm_90 (Triton's own compiler, no GPU
    needed) so that compiled-mode errors show up in CPU-only CI too."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_SM90], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip("triton's bundled ptxas is missing")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]


_VECTOR_LOADS_SM90 = r"""
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import fastft.kernels.cross_entropy as k
import fastft.kernels.kd_loss as kd
# GPT-2's vocabulary, contiguous rows (stride 50257, not a multiple of 16) and the padded 50304: pointers
# 16-byte aligned (what the JIT specialises a fresh torch tensor to); strides and V hinted only when % 16 == 0.
ptr = {a: "*bf16" for a in ("X", "S", "T", "GRAD")}
ptr.update(TARGET="*i64", LOSS="*fp32", SCALE="*fp32", WEIGHT="*fp32")
ints = {"stride_x", "stride_s", "stride_t", "stride_g", "V"}
block, warps = k._config(50257, 2)
assert k._config(50304, 2) == (block, warps)
cases = {
    "ce": (k._cross_entropy_fwd_kernel, {"BLOCK_V": block, "HAS_SMOOTHING": False, "COMPUTE_GRAD": True,
                                         "SCALE_MODE": 1, "HAS_WEIGHT": False, "SAME_STRIDE": True}),
    "kd": (kd._kd_fwd_kernel, {"BLOCK_V": block, "HAS_TARGET": True, "COMPUTE_GRAD": True, "SCALE_MODE": 1,
                              "SAME_STRIDE": True}),
}
for name, (fn, consts) in cases.items():
    for V in (50257, 50304):
        sig, attrs = {}, {}
        for i, a in enumerate(fn.arg_names):
            if a in consts:
                sig[a] = "constexpr"
            elif a in ptr:
                sig[a], attrs[(i,)] = ptr[a], [["tt.divisibility", 16]]
            else:
                sig[a] = "i32" if a in ints or a == "ignore_index" else "fp32"
                if a in ints and V % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        cc = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": 3})
        ptx = cc.asm["ptx"]
        n = [len(re.findall(op + r"\.global\." + w, ptx)) for op, w in (("ld", "v4"), ("ld", "b16"), ("st", "v4"),
                                                                        ("st", "b16"))]
        print(name, V, *n)
"""


def test_loads_vectorised_when_vocab_not_multiple_of_16():
    """V = 50257 (GPT-2): the aligned main loop and tail must compile to 16-byte loads and stores, as
    many as at V = 50304 (before the head/main/tail split: 0 ``ld.global.v4``, 33 (CE) / 65 (KD)
    masked 2-byte ``ld.global.b16`` in the PTX)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", _VECTOR_LOADS_SM90], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0 and ("ptxas" in proc.stderr or "GPUTarget" in proc.stderr):
        pytest.skip("this triton cannot compile to sm_90 PTX here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {}
    for ln in proc.stdout.splitlines():
        if ln[:2] in ("ce", "kd"):
            name, V, *n = ln.split()
            counts[name, int(V)] = dict(zip(("ld_v4", "ld_b16", "st_v4", "st_b16"), map(int, n)))
    for name in ("ce", "kd"):
        odd, even = counts[name, 50257], counts[name, 50304]
        # as many 16-byte loads/stores as the aligned vocabulary; 2-byte ones only for the < 16-column
        # head and end pieces (16 wide: one per thread and operand), never for whole chunks
        assert odd["ld_v4"] == even["ld_v4"] > 0 and odd["st_v4"] == even["st_v4"] > 0, proc.stdout
        assert odd["ld_b16"] <= 16 and odd["st_b16"] <= 8, proc.stdout


# ----------------------------------------------------------------------------- row walk (head / main / tail)
# V = BLOCK_V * k + r with a small forced BLOCK_V so the interpreter walks many full chunks; odd V makes
# each row start at a different offset mod 16 (a different head length); the sliced case has a row
# stride unrelated to V.
ROW_WALK = [(2, 64), (3, 64), (17, 16), (64 * 3, 64), (64 * 3 + 1, 64), (64 * 3 + 15, 64), (64 * 4 + 33, 64),
            (1025, 256), (4096 + 7, 1024)]  # fmt: skip


@pytest.mark.parametrize("V,block", ROW_WALK)
def test_ce_row_walk_any_vocab_matches_float64(V, block):
    from fastft.kernels.cross_entropy import cross_entropy_forward

    N = 19
    for sliced in (False, True):
        base = randn(N, V + 5 if sliced else V, scale=3.0)
        x = base[:, 3 : 3 + V] if sliced else base
        t = _targets(N, V, "cpu")
        for eps, w in ((0.0, None), (0.1, None), (0.0, torch.rand(V) + 0.2), (0.2, torch.rand(V) + 0.2)):
            g = torch.full_like(x, float("nan"))  # every element must be written
            loss = cross_entropy_forward(x, t, label_smoothing=eps, grad_out=g, weight=w, block_v=block)
            x64 = x.double().requires_grad_()
            ref = F.cross_entropy(x64, t, reduction="none", label_smoothing=eps,
                                  weight=None if w is None else w.double())  # fmt: skip
            (gref,) = torch.autograd.grad(ref.sum(), x64)
            tag = f"V={V} block={block} sliced={sliced} eps={eps} weight={w is not None}"
            assert_close(loss, ref, torch.float32, name=f"loss {tag}")
            assert_close(g, gref, torch.float32, name=f"grad {tag}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ce_row_walk_low_precision_within_torch_error(dtype):
    from fastft.kernels.cross_entropy import cross_entropy_forward

    N, V = 13, 64 * 5 + 11
    x = randn(N, V, scale=3.0, dtype=dtype)
    t = _targets(N, V, "cpu")
    g = torch.empty_like(x)
    loss = cross_entropy_forward(x, t, grad_out=g, block_v=64)
    x64 = x.double().requires_grad_()
    ref = F.cross_entropy(x64, t, reduction="none")
    (gref,) = torch.autograd.grad(ref.sum(), x64)
    xl = x.clone().requires_grad_()
    own = F.cross_entropy(xl.float(), t, reduction="none").to(dtype)  # torch's loss rounds to the dtype
    (gown,) = torch.autograd.grad(F.cross_entropy(xl, t, reduction="sum"), xl)
    assert_within_torch_error(loss.to(dtype), own, ref, name="loss")
    assert_within_torch_error(g, gown, gref, name="grad")


# ----------------------------------------------------------------------------- class weights
WEIGHT_SHAPES = [(37, 2), (50, 7), (6, 1030)]  # small-V tiled kernel and the row-looping one


@pytest.mark.parametrize("N,V", WEIGHT_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_ce_class_weights_match_torch_float64(device, N, V, reduction, backend):
    for eps in (0.0, 0.15):
        x = randn(N, V, device=device, scale=2.0).requires_grad_()
        t = _targets(N, V, device)
        w = torch.rand(V, device=device) * 3 + 0.05
        g = _upstream(reduction, N, device)
        with fastft.backend(backend):
            loss = cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=eps)
            (gx,) = torch.autograd.grad(loss, x, g)
        x64 = x.detach().double().requires_grad_()
        ref = F.cross_entropy(x64, t, weight=w.double(), reduction=reduction, label_smoothing=eps)
        (gref,) = torch.autograd.grad(ref, x64, g.double())
        assert_close(loss, ref, torch.float32, name=f"loss eps={eps}")
        assert_close(gx, gref, torch.float32, name=f"grad eps={eps}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,V", [(64, 5), (8, 2000)])
def test_ce_class_weights_low_precision_within_torch_error(device, dtype, N, V):
    x = randn(N, V, device=device, scale=3.0, dtype=dtype)
    t = _targets(N, V, device)
    w = torch.rand(V, device=device) + 0.1
    xk = x.clone().requires_grad_()
    with fastft.backend("triton"):
        loss = cross_entropy(xk, t, weight=w, label_smoothing=0.1)
        (gx,) = torch.autograd.grad(loss, xk)
    x64 = x.double().requires_grad_()
    ref = F.cross_entropy(x64, t, weight=w.double(), label_smoothing=0.1)
    (gref,) = torch.autograd.grad(ref, x64)
    xt = x.clone().requires_grad_()
    own = F.cross_entropy(xt, t, weight=w.to(dtype), label_smoothing=0.1)
    (gown,) = torch.autograd.grad(own, xt)
    assert_within_torch_error(loss, own, ref, name="loss")
    assert_within_torch_error(gx, gown, gref, name="grad")


def test_ce_class_weights_module_inplace_and_errors(device):
    from fastft.nn import CrossEntropyLoss

    N, V = 30, 6
    w = torch.rand(V, device=device) + 0.5
    x = randn(N, V, device=device)
    t = _targets(N, V, device)
    mod = CrossEntropyLoss(w, ignore_index=-100)
    assert torch.equal(mod.state_dict()["weight"], w) and "weight=(6,)" in repr(mod)
    ref = torch.nn.CrossEntropyLoss(weight=w.double())(x.double(), t)
    with fastft.backend("triton"):
        assert_close(mod(x, t), ref, torch.float32)
        src = x.clone().requires_grad_()
        loss = cross_entropy(src * 1.0, t, weight=w, inplace_backward=True)  # a non-leaf: may be overwritten
        loss.backward()
    x64 = x.double().requires_grad_()
    F.cross_entropy(x64, t, weight=w.double()).backward()
    assert_close(loss, ref, torch.float32)
    assert_close(src.grad, x64.grad, torch.float32, name="inplace grad")
    for bad in (torch.ones(V + 1), torch.ones(V, V), torch.ones(V, dtype=torch.long)):
        with pytest.raises((ValueError, TypeError), match="weight"):
            cross_entropy(x, t, weight=bad.to(device))


def test_ce_class_weights_opcheck():
    """The custom op with its new optional weight passes torch's schema / fake / autograd checks."""
    x = randn(9, 5).requires_grad_()
    t = _targets(9, 5, "cpu")
    w = torch.rand(5) + 0.1
    op = torch.ops.fastft.cross_entropy.default
    for red in (0, 1, 2):
        torch.library.opcheck(op, (x, t, -100, 0.1, red, True, w))
    torch.library.opcheck(op, (x, t, -100, 0.0, 1, True, None))


def test_ce_class_weights_all_ignored_and_compile(device):
    x = randn(4, 3, device=device).requires_grad_()
    t = torch.full((4,), -100, device=device)
    w = torch.rand(3, device=device)
    loss = cross_entropy(x, t, weight=w)
    ref = F.cross_entropy(x.detach(), t, weight=w)
    assert torch.isnan(loss) and torch.isnan(ref)
    (gx,) = torch.autograd.grad(loss, x)
    assert torch.equal(gx, torch.zeros_like(gx))
    f = torch.compile(lambda a, b, c: cross_entropy(a, b, weight=c), fullgraph=True, backend="eager")
    t2 = _targets(4, 3, device)
    assert_close(f(x, t2, w), F.cross_entropy(x.detach().double(), t2, weight=w.double()), torch.float32)
