"""fastft.functional attention: dispatch, the torch reference path, varlen, helpers, custom ops, compile."""

from __future__ import annotations

import pytest
import torch

import fastft
from fastft.functional import pad_input, scaled_dot_product_attention, unpad_input, varlen_attention
from fastft.ops.attention import reference_attention
from tests.compare import assert_close, randn
from tests.kernels.test_attention import padding_mask, ref_attention

BACKENDS = ["torch", "triton"]


def grads(fn, *xs, seed=0):
    leaves = [x.detach().clone().requires_grad_() for x in xs]
    out = fn(*leaves)
    do = randn(*out.shape, device=out.device, seed=seed)
    return (out, *torch.autograd.grad(out, leaves, do))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_float64_both_paths(device, backend, causal):
    b, h, s, d = 3, 2, 21, 40
    q, k, v = (randn(b, h, s, d, device=device) for _ in range(3))
    mask = padding_mask(b, s, device, seed=2)  # includes an all-padding sample
    with fastft.backend(backend):
        got = grads(
            lambda q, k, v: scaled_dot_product_attention(q, k, v, attention_mask=mask, is_causal=causal),
            q,
            k,
            v,
        )
    want = grads(lambda q, k, v: ref_attention(q, k, v, mask=mask, causal=causal), q, k, v)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert torch.isfinite(g).all(), f"{name}: NaN/inf on the {backend} path"
        assert_close(g, w, torch.float32, name=f"{backend} {name}")
    assert fastft.report()["attention"].startswith(backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sq,sk,masked", [(3, 11, False), (11, 3, False), (4, 9, True)])
def test_causal_cross_lengths_bottom_right_both_paths(device, backend, sq, sk, masked):
    """is_causal with Sq != Sk is bottom-right aligned on both paths (no torch fallback for the kernel),
    checked against a float64 reference with an explicit (j <= i + Sk - Sq) mask."""
    q = randn(2, 2, sq, 16, device=device)
    k, v = randn(2, 2, sk, 16, device=device), randn(2, 2, sk, 16, device=device)
    mask = padding_mask(2, sk, device, seed=1) if masked else None
    with fastft.backend(backend):
        got = grads(
            lambda q, k, v: scaled_dot_product_attention(q, k, v, attention_mask=mask, is_causal=True),
            q,
            k,
            v,
        )
    assert fastft.report()["attention"].startswith(backend)
    explicit = (torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + sk - sq).to(device)
    km = explicit[None, None] if mask is None else explicit[None, None] & mask.bool()[:, None, None, :]

    def ref(q, k, v):
        s = (q.double() @ k.double().transpose(-1, -2)) * 16**-0.5
        empty = ~km.any(-1, keepdim=True)
        p = torch.softmax(s.masked_fill(~km, float("-inf")).masked_fill(empty, 0.0), -1).masked_fill(
            ~km | empty, 0
        )
        return p @ v.double()

    want = grads(ref, q, k, v)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert_close(g, w, torch.float32, name=f"{backend} {name}")


def test_reference_all_padding_rows_defined(device):
    """The torch path defines rows with no visible key as 0 with zero grads, like the kernel."""
    q, k, v = (randn(2, 2, 6, 16, device=device) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool, device=device)
    out, dq, dk, dv = grads(lambda q, k, v: reference_attention(q, k, v, attention_mask=mask), q, k, v)
    assert (out[1] == 0).all() and (dq[1] == 0).all() and (dk[1] == 0).all() and (dv[1] == 0).all()
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gqa_heads_expanded(device, backend):
    q = randn(2, 4, 9, 16, device=device)
    k, v = randn(2, 2, 9, 16, device=device), randn(2, 2, 9, 16, device=device)
    with fastft.backend(backend):
        got = grads(lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v)
    rep = lambda x: x.repeat_interleave(2, dim=1)
    want = grads(lambda q, k, v: ref_attention(q, rep(k), rep(v), causal=True), q, k, v)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert_close(g, w, torch.float32, name=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_varlen_matches_padded(device, backend, causal):
    b, h, s, d = 3, 2, 19, 24
    mask = padding_mask(b, s, device, seed=4)
    mask[-1, :2] = True
    q, k, v = (randn(b, s, h, d, device=device) for _ in range(3))
    qu, idx, cu, ms = unpad_input(q, mask)
    ku, vu = (unpad_input(x, mask)[0] for x in (k, v))
    with fastft.backend(backend):
        got = grads(lambda q, k, v: varlen_attention(q, k, v, cu, ms, is_causal=causal), qu, ku, vu)

    def padded(qu, ku, vu):
        pad = lambda x: pad_input(x, idx, b, s).transpose(1, 2)
        o = ref_attention(pad(qu), pad(ku), pad(vu), mask=mask, causal=causal)
        return o.transpose(1, 2).reshape(b * s, h, d)[idx]

    want = grads(padded, qu, ku, vu)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert_close(g, w, torch.float32, name=f"{backend} {name}")


def test_unpad_pad_roundtrip(device):
    x = randn(3, 7, 5, device=device)
    mask = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [0] * 7], device=device)
    xu, idx, cu, ms = unpad_input(x, mask)
    assert xu.shape == (10, 5) and ms == 7 and cu.tolist() == [0, 7, 10, 10] and cu.dtype == torch.int32
    back = pad_input(xu, idx, 3, 7)
    assert torch.equal(back, x * mask[..., None])


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_seeded_and_scaled(device, backend):
    """Same torch seed -> same output; keep-rate-scaled mean is preserved; eval-like p=0 is exact."""
    q, k, v = (randn(2, 2, 16, 16, device=device) for _ in range(3))
    with fastft.backend(backend):
        torch.manual_seed(3)
        a = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
        torch.manual_seed(3)
        b = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
        c = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a, scaled_dot_product_attention(q, k, v))


def test_bad_inputs(device):
    q = randn(2, 2, 5, 16, device=device)
    with pytest.raises(ValueError, match=r"\(B, Sk\)"):
        scaled_dot_product_attention(q, q, q, attention_mask=torch.ones(2, 1, 5, 5, device=device))
    with pytest.raises(ValueError, match="varlen_attention"):
        scaled_dot_product_attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="multiple"):
        scaled_dot_product_attention(randn(1, 3, 4, 16, device=device), q[:1], q[:1, :, :4])
    with pytest.raises(ValueError, match="unpad_input"):
        varlen_attention(q, q, q, torch.tensor([0, 5]), 5)


def test_head_dim_over_128_falls_back(device, caplog):
    q = randn(1, 1, 4, 160, device=device)
    with fastft.backend("triton"):
        out = scaled_dot_product_attention(q, q, q)
    assert_close(out, ref_attention(q, q, q), torch.float32)
    assert "head dim 160" in fastft.report()["attention"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
def test_torch_compile(device, backend, compiler):
    q, k, v = (randn(2, 2, 9, 16, device=device) for _ in range(3))
    mask = padding_mask(2, 9, device, seed=1)
    fn = lambda q, k, v: scaled_dot_product_attention(q, k, v, attention_mask=mask, is_causal=True)
    torch._dynamo.reset()
    with fastft.backend(backend):
        got = grads(torch.compile(fn, backend=compiler), q, k, v)
        want = grads(fn, q, k, v)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert_close(g, w, torch.float32, name=name)


def test_custom_op_registered():
    from fastft.ops import attention as ops

    assert hasattr(torch.ops.fastft, "attention_fwd") and hasattr(torch.ops.fastft, "attention_bwd")
    # fake (meta) kernels give the right shapes for compile's tracing
    q = torch.empty(2, 3, 5, 16, device="meta")
    o, lse = ops._attention_fwd_op(
        q, q, q, None, None, torch.zeros(1, dtype=torch.int64), 5, False, 0.0, 0.25
    )
    assert o.shape == q.shape and lse.shape == (2, 3, 5) and lse.dtype == torch.float32


def test_nn_module(device):
    from fastft.nn import ScaledDotProductAttention

    m = ScaledDotProductAttention(is_causal=True, dropout=0.5).eval()
    q, k, v = (randn(1, 2, 6, 16, device=device) for _ in range(3))
    assert_close(m(q, k, v), ref_attention(q, k, v, causal=True), torch.float32)
    with pytest.raises(ValueError, match="max_seqlen"):
        m(q[0], k[0], v[0], cu_seqlens=torch.tensor([0, 2]))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_reference_mask_is_hf_sdpa_form_cached_per_mask(dropout):
    """Without empty rows the torch path is HF sdpa's own call (same kernel, bitwise), mask built once."""
    from fastft.ops.attention import _reference_mask

    b, h, s, d = 3, 2, 11, 16
    q, k, v = (randn(b, h, s, d, seed=i) for i in range(3))
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 4:] = False
    hf_mask = mask[:, None, None, :].expand(b, 1, s, s)  # what transformers' sdpa_mask hands SDPA
    torch.manual_seed(3)
    got = grads(lambda q, k, v: reference_attention(q, k, v, attention_mask=mask, dropout_p=dropout), q, k, v)
    torch.manual_seed(3)
    sdpa = lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=hf_mask, dropout_p=dropout
    )
    want = grads(sdpa, q, k, v)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert torch.equal(g, w), name
    keep, empty = _reference_mask(mask, s, s, False, mask.device)
    assert empty is None and _reference_mask(mask, s, s, False, mask.device)[0] is keep
    causal = _reference_mask(mask, s, s, True, mask.device)[0].clone()
    mask[0, 5:] = False  # in place: the cached (causal, so not a view of it) mask is stale and rebuilt
    assert torch.equal(_reference_mask(mask, s, s, True, mask.device)[0], causal & mask[:, None, None, :])
    assert not torch.equal(causal, causal & mask[:, None, None, :])
    mask[0] = False  # an empty row now: found, and zeroed
    keep2, empty2 = _reference_mask(mask, s, s, False, mask.device)
    assert empty2 is not None and bool(empty2[0].all()) and not bool(empty2[1:].any())
    assert (reference_attention(q, k, v, attention_mask=mask)[0] == 0).all()


def test_varlen_layout_built_once_per_cu_seqlens():
    from fastft.ops.attention import _varlen_layout

    cu = torch.tensor([0, 3, 3, 8], dtype=torch.int32)
    mask, idx = _varlen_layout(cu, 5, cu.device)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [0] * 5, [1] * 5]
    assert idx.tolist() == [0, 1, 2, 10, 11, 12, 13, 14]
    again = _varlen_layout(cu, 5, cu.device)
    assert again[0] is mask and again[1] is idx
    cu[1] = 2  # modified in place: rebuilt
    assert _varlen_layout(cu, 5, cu.device)[1].tolist() == [0, 1, 5, 10, 11, 12, 13, 14]
