"""Contrastive losses (CLIP InfoNCE, SigLIP sigmoid) against float64 hand-written references.

The references below are written element by element from the papers' definitions (explicit sums,
no shared code with fastft.ops.contrastive): loss and gradients w.r.t. both embeddings, the
log-temperature and (SigLIP) the bias, on fresh random data with awkward batch sizes.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastft
from fastft.functional import clip_loss, siglip_loss
from fastft.nn import ContrastiveLoss
from tests.clip_util import tiny_config
from tests.compare import assert_close, assert_within_torch_error, randn


def _ref_clip(img: torch.Tensor, txt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(1/2B) [sum_i -log softmax_j(l_ij)[i] + sum_j -log softmax_i(l_ij)[j]], l_ij = e^t cos(x_i, y_j)."""
    x = img / img.norm(dim=1, keepdim=True)
    y = txt / txt.norm(dim=1, keepdim=True)
    B = x.shape[0]
    total = 0.0
    for i in range(B):
        row = torch.stack([t.exp() * (x[i] * y[j]).sum() for j in range(B)])
        col = torch.stack([t.exp() * (x[j] * y[i]).sum() for j in range(B)])
        total = total + (torch.logsumexp(row, 0) - row[i]) + (torch.logsumexp(col, 0) - col[i])
    return total / (2 * B)


def _ref_siglip(img, txt, t, b) -> torch.Tensor:
    x = img / img.norm(dim=1, keepdim=True)
    y = txt / txt.norm(dim=1, keepdim=True)
    B = x.shape[0]
    total = 0.0
    for i in range(B):
        for j in range(B):
            z = 1.0 if i == j else -1.0
            u = z * (t.exp() * (x[i] * y[j]).sum() + b)
            total = total - torch.nn.functional.logsigmoid(u)
    return total / B


def _leaves(B, D, dtype, seed, scale_init=math.log(1 / 0.07)):
    img = randn(B, D, dtype=dtype, seed=seed).requires_grad_()
    txt = (randn(B, D, dtype=dtype, seed=seed + 1) + 0.3 * img.detach()).requires_grad_()
    t = torch.tensor(scale_init + 0.1 * randn(1, seed=seed + 2).item(), dtype=dtype, requires_grad=True)
    return img, txt, t


def _grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("B,D", [(1, 4), (5, 7), (13, 16)])
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_clip_loss_matches_float64_reference_fp32(B, D, backend):
    img, txt, t = _leaves(B, D, torch.float32, seed=10 * B + D)
    with fastft.backend(backend):
        loss = clip_loss(img, txt, t)
        g = _grads(loss, img, txt, t)
    r = [x.detach().double().requires_grad_() for x in (img, txt, t)]
    ref = _ref_clip(*r)
    rg = _grads(ref, *r)
    assert loss.dtype == torch.float32
    assert_close(loss, ref, torch.float32, name="loss")
    for a, b, n in zip(g, rg, ("d_img", "d_txt", "d_logit_scale")):
        assert_close(a, b, torch.float32, name=n)
    if B > 1:  # the temperature really is learned: its gradient is not zero
        assert abs(g[2].item()) > 1e-6


def test_clip_loss_unfused_equals_fused():
    img, txt, t = _leaves(9, 12, torch.float32, seed=3)
    a = clip_loss(img, txt, t, fused=True)
    ga = _grads(a, img, txt, t)
    b = clip_loss(img, txt, t, fused=False)
    gb = _grads(b, img, txt, t)
    assert_close(a, b, torch.float32)
    for x, y in zip(ga, gb):
        assert_close(x, y, torch.float32)


def _torch_same_dtype_clip(img, txt, t):
    """Plain torch in the inputs' dtype, HF CLIPModel's formula (what a bf16 user would get)."""
    x = img / img.norm(dim=1, keepdim=True)
    y = txt / txt.norm(dim=1, keepdim=True)
    logits = t.exp() * x @ y.T
    tgt = torch.arange(x.shape[0], device=x.device)
    F = torch.nn.functional
    return (F.cross_entropy(logits, tgt) + F.cross_entropy(logits.T, tgt)) / 2


def _torch_same_dtype_siglip(img, txt, t, b):
    x = img / img.norm(dim=1, keepdim=True)
    y = txt / txt.norm(dim=1, keepdim=True)
    logits = t.exp() * x @ y.T + b
    z = 2 * torch.eye(x.shape[0], dtype=logits.dtype, device=x.device) - 1
    return -torch.nn.functional.logsigmoid(z * logits).sum(1).mean()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_clip_loss_low_precision_within_torch_error(dtype):
    img, txt, t = _leaves(11, 24, dtype, seed=7)
    with fastft.backend("triton"):
        loss = clip_loss(img, txt, t)
        g = _grads(loss, img, txt, t)
    assert all(x.dtype == dtype for x in g), "gradients come back in the embeddings' dtype"
    ours = _torch_same_dtype_clip(img, txt, t)
    tg = _grads(ours, img, txt, t)
    r = [x.detach().double().requires_grad_() for x in (img, txt, t)]
    ref = _ref_clip(*r)
    rg = _grads(ref, *r)
    assert_within_torch_error(loss, ours, ref, name="loss")
    for a, b, c, n in zip(g, tg, rg, ("d_img", "d_txt", "d_t")):
        assert_within_torch_error(a, b, c, name=n)


@pytest.mark.parametrize("B,D", [(1, 3), (6, 5), (17, 8)])
def test_siglip_loss_matches_float64_reference_fp32(B, D):
    img, txt, t = _leaves(B, D, torch.float32, seed=B + 100, scale_init=math.log(10.0))
    b = torch.tensor(-10.0 + randn(1, seed=B).item(), requires_grad=True)
    loss = siglip_loss(img, txt, t, b)
    g = _grads(loss, img, txt, t, b)
    r = [x.detach().double().requires_grad_() for x in (img, txt, t, b)]
    ref = _ref_siglip(*r)
    rg = _grads(ref, *r)
    assert_close(loss, ref, torch.float32, name="loss")
    for a, c, n in zip(g, rg, ("d_img", "d_txt", "d_t", "d_bias")):
        assert_close(a, c, torch.float32, name=n)
    assert abs(g[3].item()) > 1e-6 and abs(g[2].item()) > 1e-9


def test_siglip_loss_bf16_within_torch_error():
    dtype = torch.bfloat16
    img, txt, t = _leaves(10, 16, dtype, seed=5, scale_init=math.log(10.0))
    b = torch.tensor(-3.0, dtype=dtype, requires_grad=True)
    loss = siglip_loss(img, txt, t, b)
    g = _grads(loss, img, txt, t, b)
    theirs = _torch_same_dtype_siglip(img, txt, t, b)
    tg = _grads(theirs, img, txt, t, b)
    r = [x.detach().double().requires_grad_() for x in (img, txt, t, b)]
    ref = _ref_siglip(*r)
    rg = _grads(ref, *r)
    assert_within_torch_error(loss, theirs, ref, name="loss")
    for a, bb, c, n in zip(g, tg, rg, ("d_img", "d_txt", "d_t", "d_bias")):
        assert_within_torch_error(a, bb, c, name=n)


def test_module_and_bad_shapes():
    img, txt, t = _leaves(4, 6, torch.float32, seed=1)
    assert_close(ContrastiveLoss("clip")(img, txt, t), clip_loss(img, txt, t), torch.float32)
    b = torch.tensor(0.5)
    assert_close(ContrastiveLoss("siglip")(img, txt, t, b), siglip_loss(img, txt, t, b), torch.float32)
    with pytest.raises(ValueError, match="same"):
        clip_loss(img, txt[:3], t)
    with pytest.raises(ValueError, match="logit_bias"):
        ContrastiveLoss("siglip")(img, txt, t)
    with pytest.raises(ValueError, match="kind"):
        ContrastiveLoss("triplet")


def _tiny_clip_inputs(model_cls, cfg, B=6, S=7, seed=0):
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    ids = torch.randint(3, cfg.text_config.vocab_size, (B, S))
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 5:] = 0
    mask[4, 3:] = 0
    pix = torch.randn(B, 3, cfg.vision_config.image_size, cfg.vision_config.image_size)
    return model, dict(input_ids=ids, attention_mask=mask, pixel_values=pix)


def test_hf_clip_model_loss_equals_ours():
    cfg = tiny_config("clip")
    from transformers import CLIPModel

    model, inputs = _tiny_clip_inputs(CLIPModel, cfg)
    with torch.no_grad():
        model.logit_scale.fill_(1.7)
        out = model(**inputs, return_loss=True)
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        # transformers 5.2x returns an output object, 5.17 (the GPU image) the tensor itself
        img, txt = (getattr(x, "pooler_output", x) for x in (img, txt))
        ours = clip_loss(img, txt, model.logit_scale)
    assert_close(ours, out.loss, torch.float32, name="CLIPModel loss")


def test_hf_siglip_model_loss_equals_ours():
    cfg = tiny_config("siglip")
    from transformers import SiglipModel

    model, inputs = _tiny_clip_inputs(SiglipModel, cfg, seed=1)
    with torch.no_grad():
        model.logit_scale.fill_(1.2)
        model.logit_bias.fill_(-2.0)
        out = model(**inputs, return_loss=True)
        ours = siglip_loss(out.image_embeds, out.text_embeds, model.logit_scale, model.logit_bias)
    assert_close(ours, out.loss, torch.float32, name="SiglipModel loss")


@pytest.mark.gpu
@pytest.mark.parametrize("B", [257, 1024])
def test_clip_loss_cuda_kernel_bf16_within_torch_error(B):
    """The Triton CE kernel path on CUDA (bf16 embeddings, B x B logits past one block)."""
    img, txt, t = (x.detach().cuda().requires_grad_() for x in _leaves(B, 512, torch.bfloat16, seed=B))
    with fastft.backend("triton"):
        loss = clip_loss(img, txt, t)
        g = _grads(loss, img, txt, t)
    theirs = _torch_same_dtype_clip(img, txt, t)
    tg = _grads(theirs, img, txt, t)
    r = [x.detach().double().requires_grad_() for x in (img, txt, t)]
    x, y = (v / v.norm(dim=1, keepdim=True) for v in r[:2])  # vectorised float64 reference (B is large)
    logits = r[2].exp() * x @ y.T
    tgt = torch.arange(B, device=logits.device)
    F = torch.nn.functional
    ref = (F.cross_entropy(logits, tgt) + F.cross_entropy(logits.T, tgt)) / 2
    rg = _grads(ref, *r)
    assert_within_torch_error(loss, theirs, ref, name="loss")
    for a, b, c, n in zip(g, tg, rg, ("d_img", "d_txt", "d_t")):
        assert_within_torch_error(a, b, c, name=n)
