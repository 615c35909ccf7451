"""The attention kernels (fastft.kernels.attention) against a float64 torch reference.

On CPU these run through the Triton interpreter, so shapes are tiny; the interesting sizes are
S = 1, odd, and just over the interpreter's 32-wide block, and every head-dim family.
"""

from __future__ import annotations

import pytest
import torch

from tests.compare import assert_close, assert_within_torch_error, randn

ka = pytest.importorskip("fastft.kernels.attention")
triton = pytest.importorskip("triton")
tl = triton.language


def ref_attention(q, k, v, mask=None, causal=False, scale=None, z=None, p=0.0):
    """float64 attention with fastft's rules: rows with no visible key output 0; z = dropout keep-mask."""
    q, k, v = (x.double() for x in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    keep = torch.ones(s.shape, dtype=torch.bool, device=s.device)
    if causal:  # bottom-right aligned: query i sees keys j <= i + Sk - Sq
        sq, sk = s.shape[-2:]
        i, j = torch.arange(sq)[:, None], torch.arange(sk)[None, :]
        keep &= (j <= i + sk - sq).to(s.device)
    if mask is not None:
        keep &= mask.bool()[:, None, None, :]
    empty = ~keep.any(-1, keepdim=True)
    probs = torch.softmax(s.masked_fill(~keep, float("-inf")).masked_fill(empty, 0.0), -1)
    probs = probs.masked_fill(~keep | empty, 0.0)
    if z is not None:
        probs = probs * z.double() / (1.0 - p)
    return probs @ v


def run(q, k, v, do, **kw):
    """Kernel forward + backward; returns (o, dq, dk, dv, lse)."""
    o, lse = ka.attention_forward(q, k, v, **kw)
    dq, dk, dv = ka.attention_backward(do, q, k, v, o, lse, **kw)
    return o, dq, dk, dv, lse


def ref_grads(q, k, v, do, **kw):
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    out = ref_attention(*leaves, **kw)
    grads = torch.autograd.grad(out, leaves, do.double())
    return (out, *grads)


def padding_mask(b, s, device, seed=0):
    """Random right-padded lengths in [1, s], one full row, and (if b > 2) one row that is all padding."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, s + 1, (b,), generator=g)
    lens[0] = s
    if b > 2:
        lens[-1] = 0
    return (torch.arange(s)[None, :] < lens[:, None]).to(device)


SHAPES = [
    # B, H, S, D, causal, masked
    (1, 1, 1, 16, False, False),
    (1, 2, 1, 16, True, True),
    (2, 2, 33, 32, False, False),  # just over a block
    (2, 1, 17, 24, True, False),  # odd S, non-power-of-two D
    (3, 2, 33, 40, False, True),
    (3, 1, 20, 64, True, True),
    (1, 1, 9, 80, False, True),
    (1, 1, 7, 96, True, False),
    (1, 1, 5, 128, False, False),
]


@pytest.mark.parametrize("b,h,s,d,causal,masked", SHAPES)
def test_fwd_bwd_fp32_matches_float64(device, b, h, s, d, causal, masked):
    q, k, v, do = (randn(b, h, s, d, device=device) for _ in range(4))
    mask = padding_mask(b, s, device) if masked else None
    o, dq, dk, dv, _ = run(q, k, v, do, key_padding_mask=mask, is_causal=causal)
    r = ref_grads(q, k, v, do, mask=mask, causal=causal)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (o, dq, dk, dv), r):
        assert_close(got, want, torch.float32, name=name)


@pytest.mark.parametrize("b,h,s,d,masked", [(1, 2, 113, 80, False), (2, 3, 113, 80, True)])
def test_fp32_within_2x_torch_error(device, b, h, s, d, masked):
    """fp32 causal at S = 113, D = 80 (the worst case of a FlashAttention-rule sweep): error vs float64
    <= 2x torch's own fp32 SDPA error, forward and all gradients."""
    q, k, v, do = (randn(b, h, s, d, device=device) for _ in range(4))
    mask = padding_mask(b, s, device, seed=6) if masked else None
    got = run(q, k, v, do, key_padding_mask=mask, is_causal=True)[:4]
    ref = ref_grads(q, k, v, do, mask=mask, causal=True)
    tor = _torch_same_dtype(q, k, v, do, torch.float32, mask, True)
    for name, g, t, r in zip(("out", "dq", "dk", "dv"), got, tor, ref):
        assert_within_torch_error(g, t, r, name=f"{name} fp32")


def test_scale_and_cross_lengths(device):
    """Non-causal attention with Sq != Sk (cross-attention) and a custom softmax scale."""
    q, do = randn(2, 2, 5, 24, device=device), randn(2, 2, 5, 24, device=device)
    k, v = randn(2, 2, 37, 24, device=device), randn(2, 2, 37, 24, device=device)
    mask = padding_mask(2, 37, device, seed=3)
    o, dq, dk, dv, _ = run(q, k, v, do, key_padding_mask=mask, scale=0.3)
    r = ref_grads(q, k, v, do, mask=mask, scale=0.3)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (o, dq, dk, dv), r):
        assert_close(got, want, torch.float32, name=name)


@pytest.mark.parametrize("sq,sk,masked", [(5, 37, True), (37, 5, False), (1, 40, False), (33, 34, True)])
def test_causal_bottom_right_cross_lengths(device, sq, sk, masked):
    """Causal with Sq != Sk is bottom-right aligned (KV-cache style): query i sees keys j <= i + Sk - Sq;
    with Sq > Sk the first Sq - Sk rows see nothing and are 0."""
    q, do = randn(2, 2, sq, 24, device=device), randn(2, 2, sq, 24, device=device)
    k, v = randn(2, 2, sk, 24, device=device), randn(2, 2, sk, 24, device=device)
    mask = padding_mask(2, sk, device, seed=4) if masked else None
    o, dq, dk, dv, _ = run(q, k, v, do, key_padding_mask=mask, is_causal=True)
    r = ref_grads(q, k, v, do, mask=mask, causal=True)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (o, dq, dk, dv), r):
        assert_close(got, want, torch.float32, name=name)
    if sq > sk:
        assert (o[:, :, : sq - sk] == 0).all() and (dq[:, :, : sq - sk] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_key_rows_have_exactly_zero_dq_dk(device, dtype):
    """A row that sees one key has P = 1 there: dS = 0, so dq (and that row's share of dk) are exactly 0,
    as torch's are. Varlen length-1 sequences, and a padded batch with one real key per row."""
    q, k, v, do = (randn(2, 3, 16, device=device).to(dtype) for _ in range(4))
    cu = torch.tensor([0, 1, 2], dtype=torch.int32, device=device)
    o, dq, dk, dv, _ = run(q, k, v, do, cu_seqlens=cu, max_seqlen=1)
    assert (dq == 0).all() and (dk == 0).all()
    torch.testing.assert_close(o, v) and torch.testing.assert_close(dv, do)
    q, k, v, do = (randn(3, 2, 7, 16, device=device).to(dtype) for _ in range(4))
    mask = torch.zeros(3, 7, dtype=torch.bool, device=device)
    mask[torch.arange(3), torch.tensor([0, 3, 6])] = True
    o, dq, dk, dv, _ = run(q, k, v, do, key_padding_mask=mask, dropout_p=0.3, seed=3)
    assert (dq == 0).all() and (dk == 0).all()
    assert dv.abs().sum() > 0


def test_strided_inputs(device):
    """HF hands (B, S, H, D).transpose(1, 2) views; strides must be honoured, grads laid out like inputs."""
    b, s, h, d = 2, 19, 3, 32
    q, k, v, do = (randn(b, s, h, d, device=device).transpose(1, 2) for _ in range(4))
    o, dq, dk, dv, _ = run(q, k, v, do, is_causal=True)
    r = ref_grads(q, k, v, do, causal=True)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (o, dq, dk, dv), r):
        assert_close(got, want, torch.float32, name=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_low_precision_within_2x_torch_error(device, dtype, causal):
    b, h, s, d = 3, 2, 40, 64
    q, k, v, do = (randn(b, h, s, d, device=device) for _ in range(4))
    mask = padding_mask(b, s, device, seed=1)
    got = run(*(x.to(dtype) for x in (q, k, v, do)), key_padding_mask=mask, is_causal=causal)[:4]
    ref = ref_grads(q, k, v, do, mask=mask, causal=causal)
    # torch's own error in that dtype: the same math (fastft's reference rules) in `dtype`.
    leaves = [x.to(dtype).requires_grad_() for x in (q, k, v)]
    from fastft.ops.attention import reference_attention

    t_out = reference_attention(*leaves, attention_mask=mask, is_causal=causal)
    t_grads = torch.autograd.grad(t_out, leaves, do.to(dtype))
    for name, g, t, r in zip(("out", "dq", "dk", "dv"), got, (t_out, *t_grads), ref):
        assert_within_torch_error(g, t, r, name=f"{name} {dtype}")


def test_rows_without_visible_keys_are_zero(device):
    """All-padding samples and causal + left padding: output 0, LSE +inf, zero grads, never NaN."""
    b, h, s, d = 3, 2, 12, 16
    q, k, v, do = (randn(b, h, s, d, device=device) for _ in range(4))
    mask = torch.ones(b, s, dtype=torch.bool, device=device)
    mask[1, :5] = False  # left padding: causal rows 0..4 see nothing
    mask[2] = False  # nothing at all
    o, dq, dk, dv, lse = run(q, k, v, do, key_padding_mask=mask, is_causal=True)
    for t in (o, dq, dk, dv):
        assert torch.isfinite(t).all()
    assert (o[1, :, :5] == 0).all() and (o[2] == 0).all()
    assert torch.isinf(lse[1, :, :5]).all() and torch.isinf(lse[2]).all()
    assert (dq[2] == 0).all() and (dk[2] == 0).all() and (dv[2] == 0).all()
    assert (dq[1, :, :5] == 0).all() and (dk[1, :, :5] == 0).all()
    r = ref_grads(q, k, v, do, mask=mask, causal=True)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (o, dq, dk, dv), r):
        assert_close(got, want, torch.float32, name=name)


def pack(x, mask):
    """(B, H, S, D) -> (total, H, D) of the real tokens."""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b * s, h, d)[mask.flatten()]


@pytest.mark.parametrize("causal,p", [(False, 0.0), (True, 0.0), (True, 0.25)])
def test_varlen_equals_padded(device, causal, p):
    """Packed varlen == padded with a key mask on the real tokens (bitwise with the same RNG stride)."""
    b, h, s, d = 3, 2, 35, 24
    q, k, v, do = (randn(b, h, s, d, device=device) for _ in range(4))
    mask = padding_mask(b, s, device, seed=5)
    mask[-1, :3] = True  # varlen needs no empty sequence here; that case is covered below
    do = do * mask[:, None, :, None]  # padded query rows do not exist in varlen
    kw = dict(is_causal=causal, dropout_p=p, seed=11)
    o, dq, dk, dv, _ = run(q, k, v, do, key_padding_mask=mask, **kw)
    lens = mask.sum(1)
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
    ov, dqv, dkv, dvv, _ = run(*(pack(x, mask) for x in (q, k, v, do)), cu_seqlens=cu, max_seqlen=s, **kw)
    for name, a, bb in zip(("out", "dq", "dk", "dv"), (o, dq, dk, dv), (ov, dqv, dkv, dvv)):
        assert_close(pack(a, mask), bb, torch.float32, name=name)


def test_varlen_empty_sequence(device):
    q, k, v, do = (randn(6, 2, 16, device=device) for _ in range(4))
    cu = torch.tensor([0, 4, 4, 6], dtype=torch.int32, device=device)  # the middle sequence is empty
    o, dq, dk, dv, _ = run(q, k, v, do, cu_seqlens=cu, max_seqlen=4, is_causal=True)
    r0 = ref_grads(*(x[None, :4].transpose(1, 2) for x in (q, k, v, do)), causal=True)
    r1 = ref_grads(*(x[None, 4:].transpose(1, 2) for x in (q, k, v, do)), causal=True)
    for i, (got, name) in enumerate(zip((o, dq, dk, dv), ("out", "dq", "dk", "dv"))):
        want = torch.cat([r0[i][0].transpose(0, 1), r1[i][0].transpose(0, 1)])
        assert_close(got, want, torch.float32, name=name)


# ---------------------------------------------------------------------------------------------- dropout
def dropout_keep_mask(b, h, s, p, seed, device):
    """Read the kernel's keep-mask back: with scale 0 the probabilities are uniform 1/s, and V = I
    makes out[i, j] = Z_ij / (s (1 - p))."""
    d = max(16, s)
    q = randn(b, h, s, d, device=device)
    v = torch.eye(s, d, device=device).expand(b, h, s, d).contiguous()
    o, _ = ka.attention_forward(q, q, v, scale=0.0, dropout_p=p, seed=seed)
    z = o[..., :s] * (s * (1 - p))
    assert torch.allclose(z, z.round(), atol=1e-4), "probe did not recover a 0/1 mask"
    return z.round().bool()


def test_dropout_keep_rate_and_seed(device):
    b, h, s, p = 2, 3, 32, 0.3
    z = dropout_keep_mask(b, h, s, p, seed=123, device=device)
    n = z.numel()
    rate = z.float().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(rate - (1 - p)) < 5 * sigma, f"keep rate {rate:.4f} vs {1 - p}"
    assert torch.equal(z, dropout_keep_mask(b, h, s, p, seed=123, device=device))  # same seed, same mask
    z2 = dropout_keep_mask(b, h, s, p, seed=124, device=device)
    assert not torch.equal(z, z2)
    # heads/batches draw different streams
    assert not torch.equal(z[0, 0], z[0, 1]) and not torch.equal(z[0, 0], z[1, 0])


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_backward_uses_forward_mask(device, causal):
    """Kernel fwd/bwd with dropout == float64 reference given the keep-mask the kernel draws."""
    b, h, s, d, p, seed = 2, 2, 24, 32, 0.2, 7
    z = dropout_keep_mask(b, h, s, p, seed=seed, device=device)  # the mask depends on (seed, b, h, i, j) only
    q, k, v, do = (randn(b, h, s, d, device=device) for _ in range(4))
    mask = padding_mask(b, s, device, seed=9)
    o, dq, dk, dv, _ = run(q, k, v, do, key_padding_mask=mask, is_causal=causal, dropout_p=p, seed=seed)
    r = ref_grads(q, k, v, do, mask=mask, causal=causal, z=z, p=p)
    for name, got, want in zip(("out", "dq", "dk", "dv"), (o, dq, dk, dv), r):
        assert_close(got, want, torch.float32, name=name)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors(device):
    q = randn(1, 2, 4, 16, device=device)
    with pytest.raises(ValueError, match="head dim"):
        ka.attention_forward(*(randn(1, 1, 4, 160, device=device) for _ in range(3)))
    with pytest.raises(ValueError, match="key_padding_mask"):
        ka.attention_forward(q, q, q, key_padding_mask=torch.ones(1, 5, dtype=torch.bool, device=device))
    with pytest.raises(TypeError, match="dtype"):
        ka.attention_forward(q, q.half(), q)
    with pytest.raises(ValueError, match="dropout_p"):
        ka.attention_forward(q, q, q, dropout_p=1.0)


@triton.jit
def _rng_probe_kernel(LO, HI, R, base_m, rng_stride, seed, BLOCK: tl.constexpr):
    offs_m = base_m + tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK) * 997
    lo, hi = ka._attention_rng_offsets(offs_m, offs_n, rng_stride)
    idx = tl.arange(0, BLOCK)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    tl.store(LO + idx, lo.to(tl.int64))
    tl.store(HI + idx, hi.to(tl.int64))
    tl.store(R + idx, tl.rand(seed, (offs_m[:, None] * 0 + offs_n[None, :]).to(tl.int32)))


def test_dropout_rng_offsets_are_int64():
    """m * rng_stride + n passes 2**31 at S ~ 46k: the Philox counter must be int64 (split in two u32s)."""
    block, base, stride = 16, 60_000, 80_001  # 60k * 80k ~ 4.8e9 > 2**32: hi != 0
    lo, hi, r = (torch.empty(block, block, dtype=dt) for dt in (torch.int64, torch.int64, torch.float32))
    _rng_probe_kernel[(1,)](lo, hi, r, base, stride, 5, BLOCK=block)
    m = torch.arange(base, base + block, dtype=torch.int64)[:, None]
    n = (torch.arange(block, dtype=torch.int64) * 997)[None, :]
    want = m * stride + n
    assert (want > 2**32).any()
    assert torch.equal(lo + (hi << 32), want)


def test_dropout_stream_matches_tl_rand_for_short_sequences():
    """Below 2**32 the (lo, hi = 0) Philox draw is tl.rand's: the keep-mask read back equals tl.rand."""
    b, h, s, p, seed = 1, 2, 16, 0.4, 77
    z = dropout_keep_mask(b, h, s, p, seed=seed, device="cpu")
    ref = torch.empty(h, s, s)
    for hh in range(h):
        _rand_grid_kernel[(1,)](ref[hh], seed + hh, s, BLOCK=s)
    assert torch.equal(z[0], ref > p)


@triton.jit
def _rand_grid_kernel(OUT, seed, rng_stride, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    offs = i[:, None] * rng_stride + i[None, :]
    tl.store(OUT + offs, tl.rand(seed, offs))


def test_grid_puts_batch_heads_on_axis_0():
    """CUDA caps grid axes 1/2 at 65535: B * H (here 8192 x 16) must be axis 0."""
    grid = ka.attention_grid(8192 * 16, 1000, "BLOCK_M")
    assert grid({"BLOCK_M": 64}) == (8192 * 16, 16)
    ka._check_grid(8192, 16)  # no longer refused
    # the kernels index batch/head from axis 0: a B * H = 70000 launch records axis 0 = 70000
    calls = []

    class Rec:
        def __getitem__(self, g):
            return lambda *a, **kw: calls.append(g({"BLOCK_M": 32}) if callable(g) else g)

    orig = ka._attention_fwd_kernel
    ka._attention_fwd_kernel = Rec()
    try:
        q = torch.empty(7000, 10, 1, 16)
        ka.attention_forward(q, q, q)
    finally:
        ka._attention_fwd_kernel = orig
    assert calls == [(70000, 1)]


def test_fp32_dot_precision(monkeypatch):
    """fp32 uses TF32 dots on a GPU only when torch allows TF32; the interpreter keeps exact fp32."""
    assert ka.dot_precision(torch.float32) == "ieee"  # interpreter (the CPU tests' exact mode)
    monkeypatch.setattr(ka, "INTERPRET", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert ka.dot_precision(torch.float32) == "tf32"
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert ka.dot_precision(torch.float32) == "ieee"
    assert ka.dot_precision(torch.bfloat16) == "tf32"  # ignored for 16-bit operands


def test_flops_formula():
    assert ka.attention_flops(2, 12, 128, 64) == 4 * 2 * 12 * 128 * 128 * 64
    assert ka.attention_flops(2, 12, 128, 64, causal=True) == 2 * 2 * 12 * 128 * 128 * 64


# ---------------------------------------------------------------------------------------------- on a GPU
# (the sm_90 compile checks of these kernels are in tests/kernels/test_sm90_compile.py)
def _torch_same_dtype(q, k, v, do, dtype, mask, causal):
    """torch's own error in ``dtype``: fastft's reference rules run in that dtype."""
    from fastft.ops.attention import reference_attention

    leaves = [x.to(dtype).requires_grad_() for x in (q, k, v)]
    out = reference_attention(*leaves, attention_mask=mask, is_causal=causal)
    return (out, *torch.autograd.grad(out, leaves, do.to(dtype)))


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["padded", "varlen"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_large_within_torch_error(dtype, d, causal, layout):
    """Autotuned configs at real sizes: error <= 2x torch's in bf16/fp16, padded (key mask) and varlen."""
    b, h, s = 4, 4, 1031
    q, k, v, do = (randn(b, h, s, d, device="cuda") for _ in range(4))
    mask = padding_mask(b, s, "cuda", seed=2)
    mask[-1, :7] = True  # no empty sequence (varlen packs real tokens only)
    do = do * mask[:, None, :, None]
    ref = ref_grads(q, k, v, do, mask=mask, causal=causal)
    tor = _torch_same_dtype(q, k, v, do, dtype, mask, causal)
    x16 = [x.to(dtype) for x in (q, k, v, do)]
    if layout == "padded":
        got = run(*x16, key_padding_mask=mask, is_causal=causal)[:4]
    else:
        cu = torch.nn.functional.pad(mask.sum(1).cumsum(0), (1, 0)).to(torch.int32)
        packed = run(*(pack(x, mask) for x in x16), cu_seqlens=cu, max_seqlen=s, is_causal=causal)[:4]
        ref, tor = ([pack(x, mask) for x in group] for group in (ref, tor))
        got = packed
    for name, g, t, r in zip(("out", "dq", "dk", "dv"), got, tor, ref):
        assert_within_torch_error(g, t, r, name=f"{name} {dtype} D={d} {layout}")


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_dropout_matches_reference_with_kernel_mask(dtype, d):
    """Dropout on the device: fwd/bwd == float64 reference given the keep-mask the kernel draws."""
    b, h, s, p, seed = 2, 3, 128, 0.2, 9
    z = dropout_keep_mask(b, h, s, p, seed=seed, device="cuda")
    q, k, v, do = (randn(b, h, s, d, device="cuda") for _ in range(4))
    mask = padding_mask(b, s, "cuda", seed=4)
    for causal in (False, True):
        got = run(*(x.to(dtype) for x in (q, k, v, do)), key_padding_mask=mask, is_causal=causal, dropout_p=p,
                  seed=seed)[:4]  # fmt: skip
        ref = ref_grads(q, k, v, do, mask=mask, causal=causal, z=z, p=p)
        for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
            assert_close(g, r, dtype, scale=2, name=f"{name} {dtype} D={d} causal={causal}")


@pytest.mark.gpu
def test_gpu_dropout_rate_at_scale():
    z = dropout_keep_mask(8, 12, 128, 0.1, seed=5, device="cuda")
    rate = z.float().mean().item()
    assert abs(rate - 0.9) < 5 * (0.09 / z.numel()) ** 0.5
