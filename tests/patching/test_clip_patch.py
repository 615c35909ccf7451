"""``fastft.patch`` on CLIP and SigLIP: attention goes through fastft's, and the patched model equals
the unpatched one, forward and every gradient, on a padded text batch (CLIP's text tower is causal
with a padding mask, SigLIP's bidirectional; both vision towers are unmasked)."""

from __future__ import annotations

import copy

import pytest
import torch

import fastft
from fastft.functional import clip_loss, siglip_loss
from fastft.patching import attention as attn_mod
from fastft.patching import patched_parts
from tests.clip_util import tiny_model
from tests.compare import assert_close


def _batch(model, B=3, S=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    tc, vc = model.config.text_config, model.config.vision_config
    ids = torch.randint(2, tc.vocab_size, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    ids[0, 3], ids[1, S - 1], ids[2, 1] = (
        tc.eos_token_id,
        tc.eos_token_id,
        tc.eos_token_id,
    )  # CLIP pools at EOS
    pix = torch.randn(B, 3, vc.image_size, vc.image_size, generator=g)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pix)


def _run(model, batch, kind):
    out = model(**batch)
    if kind == "clip":
        loss = clip_loss(out.image_embeds, out.text_embeds, model.logit_scale)
    else:
        loss = siglip_loss(out.image_embeds, out.text_embeds, model.logit_scale, model.logit_bias)
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, loss.detach(), grads


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_patched_equals_unpatched(kind, backend, monkeypatch):
    ref_model = tiny_model(kind, seed=3).train()
    ref_model.set_attn_implementation("sdpa")
    model = copy.deepcopy(ref_model)
    fastft.patch(model)
    assert "attention" in patched_parts(model)
    assert model.config.text_config._attn_implementation == "fastft"
    assert model.config.vision_config._attn_implementation == "fastft"
    calls = []
    real = attn_mod.fastft_attention_forward

    def spy(module, q, *a, **kw):
        calls.append((q.shape, kw.get("is_causal")))
        return real(module, q, *a, **kw)

    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, "fastft", spy)
    batch = _batch(model)
    ref_out, ref_loss, ref_grads = _run(ref_model, batch, kind)
    with fastft.backend(backend):
        out, loss, grads = _run(model, batch, kind)
    n_layers = 2 * model.config.text_config.num_hidden_layers
    assert len(calls) == n_layers, f"every block of both towers runs fastft attention: {len(calls)} calls"
    text_causal = {c for s, c in calls if s[2] == batch["input_ids"].shape[1]}
    assert text_causal == {kind == "clip"}  # CLIP text: causal; SigLIP text: bidirectional
    assert_close(loss, ref_loss, torch.float32, name="loss")
    for key in ("image_embeds", "text_embeds", "logits_per_image"):
        assert_close(getattr(out, key), getattr(ref_out, key), torch.float32, name=key)
    assert sorted(grads) == sorted(ref_grads) and len(grads) > 30
    for n, g in ref_grads.items():
        assert_close(grads[n], g, torch.float32, scale=2.0, name=n)
    fastft.unpatch(model)
    assert model.config.text_config._attn_implementation == "sdpa"


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_patched_bf16_on_cuda_within_torch_error(kind):
    """The Triton attention kernel in both towers (bf16, CUDA): embeddings and gradients within 2x the
    error of HF's own bf16 sdpa model, against a float64 copy."""
    from tests.compare import assert_within_torch_error

    ref = tiny_model(kind, seed=4).train().double()
    ref.set_attn_implementation("sdpa")
    theirs = copy.deepcopy(ref).to("cuda", torch.bfloat16)
    ours = fastft.patch(copy.deepcopy(theirs))
    batch = _batch(ref, B=4, S=9)
    results = []
    for model, dev, dt in (
        (ref, "cpu", torch.float64),
        (theirs, "cuda", torch.bfloat16),
        (ours, "cuda", torch.bfloat16),
    ):
        b = {k: (v.to(dev, dt) if v.is_floating_point() else v.to(dev)) for k, v in batch.items()}
        with fastft.backend("triton"):
            results.append(_run(model, b, kind))
    (r_out, _, r_g), (t_out, _, t_g), (o_out, _, o_g) = results
    for key in ("image_embeds", "text_embeds"):
        assert_within_torch_error(getattr(o_out, key), getattr(t_out, key), getattr(r_out, key), name=key)
    for n, g in r_g.items():
        assert_within_torch_error(o_g[n], t_g[n], g, name=n)
