"""fastft.patch on ViT/DeiT: fused attention (AttentionInterface) and the fused CE give the unpatched
model's logits, loss and every gradient; a fastft LoRA adapter on ViT loads in real ``peft``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastft
from fastft import _backend
from tests.compare import assert_close
from tests.train.tasks import imgdata


def _model(kind: str, seed: int = 0):
    import transformers as T

    cfg, _ = imgdata._config(kind, num_labels=5)
    torch.manual_seed(seed)
    cls = {"vit": T.ViTForImageClassification, "deit": T.DeiTForImageClassification}[kind]
    return cls(cfg)


def _grads(model, pixels, labels):
    out = model(pixel_values=pixels, labels=labels)
    params = [p for p in model.parameters() if p.requires_grad]
    # the logits' gradient through a fixed random projection, plus the (patched) HF loss
    w = torch.linspace(-1, 1, out.logits.numel()).reshape(out.logits.shape)
    total = (out.logits * w).sum() + out.loss
    return out.logits, out.loss, torch.autograd.grad(total, params)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kind", ["vit", "deit"])
def test_patched_vision_matches_unpatched(kind, backend):
    ref, pat = _model(kind), _model(kind)
    fastft.patch(pat)
    assert fastft.patching.patched_parts(pat) == ["attention", "loss"]
    assert pat.config._attn_implementation == "fastft" and ref.config._attn_implementation == "sdpa"
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, imgdata.SIZE, imgdata.SIZE, generator=g)
    labels = torch.tensor([0, 4, 2])
    for train in (False, True):
        ref.train(train)
        pat.train(train)
        with fastft.backend(backend):
            lr, loss_r, gr = _grads(ref, pixels, labels)
            lp, loss_p, gp = _grads(pat, pixels, labels)
        assert_close(lp, lr, torch.float32, name=f"{kind} logits")
        assert_close(loss_p, loss_r, torch.float32, name=f"{kind} loss")
        assert_close(loss_p, F.cross_entropy(lr.double(), labels), torch.float32, name="loss vs float64 CE")
        assert len(gp) == len(gr) == sum(1 for _ in ref.parameters())
        for i, (a, b) in enumerate(zip(gp, gr)):
            assert_close(a, b, torch.float32, scale=10, name=f"{kind} grad {i} train={train}")
    assert _backend.report()["attention"].startswith(backend)
    fastft.unpatch(pat)
    assert pat.config._attn_implementation == "sdpa"


def test_vit_lora_adapter_loads_in_peft(tmp_path):
    peft = pytest.importorskip("peft")
    base_dir = tmp_path / "base"
    _model("vit", seed=3).save_pretrained(base_dir)
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(base_dir)
    fastft.add_lora(model, r=4, alpha=8)
    with torch.no_grad():  # a non-trivial adapter and head
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    fastft.save_adapter(model, str(tmp_path / "adapter"))
    pixels = torch.randn(2, 3, imgdata.SIZE, imgdata.SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model.eval()(pixel_values=pixels).logits
        pm = peft.PeftModel.from_pretrained(
            ViTForImageClassification.from_pretrained(base_dir), str(tmp_path / "adapter")
        )
        theirs = pm.eval()(pixel_values=pixels).logits
        plain = ViTForImageClassification.from_pretrained(base_dir).eval()(pixel_values=pixels).logits
    assert_close(theirs, ours, torch.float32, name="peft vs fastft logits")
    assert (ours - plain).abs().max() > 1e-3  # the adapter (and the trained head) changed the output


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_patched_vit_on_gpu_within_torch_error(dtype):
    """ViT-B/16's attention shape (S=197, D=64, no mask) through the Triton kernel, whole model: the
    patched model's error against a float64 reference is at most 2x plain torch's in the same dtype."""
    from transformers import ViTConfig, ViTForImageClassification

    from tests.compare import assert_within_torch_error

    cfg = ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                    intermediate_size=3072, num_labels=10)  # fmt: skip
    torch.manual_seed(0)
    ref = ViTForImageClassification(cfg).cuda().eval()
    pat = ViTForImageClassification(cfg).cuda().eval()
    pat.load_state_dict(ref.state_dict())
    fastft.patch(pat)
    pixels = torch.randn(4, 3, 224, 224, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    labels = torch.tensor([1, 3, 5, 7], device="cuda")
    with torch.no_grad():
        exact = ref.double()(pixel_values=pixels.double()).logits
        ref.float()
    outs = {}
    for name, m in (("torch", ref), ("fastft", pat)):
        m.zero_grad()
        with torch.autocast("cuda", dtype=dtype), fastft.backend("triton" if name == "fastft" else "torch"):
            out = m(pixel_values=pixels, labels=labels)
        out.loss.backward()
        outs[name] = out.logits.float()
        assert torch.isfinite(torch.stack([p.grad.abs().max() for p in m.parameters()])).all()
    assert_within_torch_error(outs["fastft"], outs["torch"], exact, name=f"ViT logits {dtype}")
    assert _backend.report()["attention"].startswith("triton")
