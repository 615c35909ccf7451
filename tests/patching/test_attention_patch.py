"""fastft.patch's attention component on tiny HF models: same outputs and grads as HF's sdpa, per instance."""

from __future__ import annotations

import pytest
import torch

import fastft
from fastft import _backend
from fastft.patching import attention as attn_patch
from tests.compare import assert_close
from tests.models import build, tiny_bert_config, tiny_gpt2_config, tiny_llama_config


def tiny_roberta_config(**kw):
    from transformers import RobertaConfig

    base = dict(tiny_bert_config().to_dict())
    base.update(pad_token_id=1, max_position_embeddings=70, attn_implementation="sdpa")
    base.update(kw)
    base.pop("model_type", None)
    return RobertaConfig(**base)


FAMILIES = {
    "bert": (tiny_bert_config, "AutoModelForSequenceClassification", 0),
    "roberta": (tiny_roberta_config, "AutoModelForSequenceClassification", 1),
    "gpt2": (tiny_gpt2_config, "AutoModelForSequenceClassification", 0),
    "llama": (tiny_llama_config, "AutoModelForCausalLM", 0),
}


def batch(pad_id: int, seed: int = 0):
    """3 x 12 tokens, right-padded to lengths 12, 5, 9, pad positions holding the pad id."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 9:] = 0
    ids[mask == 0] = pad_id
    return ids, mask


def outputs(model, ids, mask):
    """Logits on real tokens only, and grads of their sum (padded positions are not part of the contract)."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    if logits.dim() == 3:
        logits = logits * mask[..., None]
    params = [p for p in model.parameters() if p.requires_grad]
    return logits, torch.autograd.grad(logits.sum(), params)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_patched_matches_sdpa(family, backend):
    make_cfg, auto, pad_id = FAMILIES[family]
    ref = build(auto, make_cfg(num_labels=3) if "Sequence" in auto else make_cfg())
    pat = build(auto, make_cfg(num_labels=3) if "Sequence" in auto else make_cfg())
    fastft.patch(pat, loss=False)
    assert pat.config._attn_implementation == "fastft" and ref.config._attn_implementation == "sdpa"
    ids, mask = batch(pad_id)
    for train in (False, True):
        ref.train(train)
        pat.train(train)
        with fastft.backend(backend):
            lr, gr = outputs(ref, ids, mask)
            lp, gp = outputs(pat, ids, mask)
        assert_close(lp, lr, torch.float32, name=f"{family} logits train={train}")
        for i, (a, b) in enumerate(zip(gp, gr)):
            assert_close(a, b, torch.float32, scale=10, name=f"{family} grad {i} train={train}")
    assert _backend.report()["attention"].startswith(backend)


def test_unpatch_restores_and_other_instances_unaffected():
    from transformers import BertModel

    cfg = tiny_bert_config()
    a, b = BertModel(cfg), BertModel(cfg)  # one shared config object
    fastft.patch(a, loss=False)
    assert a.config._attn_implementation == "fastft"
    assert b.config._attn_implementation == "sdpa" and cfg._attn_implementation == "sdpa"
    assert all(m.config._attn_implementation == "sdpa" for m in b.modules() if hasattr(m, "config"))
    assert all(m.config is a.config for m in a.modules() if hasattr(m, "config"))
    fastft.unpatch(a)
    assert a.config is cfg and a.config._attn_implementation == "sdpa"
    assert all(m.config is cfg for m in a.modules() if hasattr(m, "config"))


def test_mask_hook_hands_over_2d_mask():
    from transformers.masking_utils import and_masks, bidirectional_mask_function, create_bidirectional_mask

    attn_patch.register()
    cfg = tiny_bert_config()
    cfg._attn_implementation = "fastft"
    emb = torch.zeros(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    got = create_bidirectional_mask(config=cfg, inputs_embeds=emb, attention_mask=mask)
    assert got.shape == (2, 6) and got.dtype == torch.bool and torch.equal(got, mask.bool())
    assert create_bidirectional_mask(config=cfg, inputs_embeds=emb, attention_mask=torch.ones(2, 6)) is None
    # A pattern the kernel cannot express gets HF's own 4D sdpa mask.
    odd = and_masks(bidirectional_mask_function, lambda b, h, q, kv: q != kv)
    got = create_bidirectional_mask(config=cfg, inputs_embeds=emb, attention_mask=mask, and_mask_function=odd)
    assert got.dim() == 4


def test_mask_hook_does_no_host_check_off_cpu(monkeypatch):
    """On a GPU "is anything padded?" would be a host sync per forward: the builder must not ask it
    there (a meta tensor raises on bool()); the unpadding later finds a mask without padding."""
    from transformers.masking_utils import create_bidirectional_mask

    attn_patch.register()
    cfg = tiny_bert_config()
    cfg._attn_implementation = "fastft"
    ones = torch.ones(2, 6, dtype=torch.bool, device="meta")
    got = create_bidirectional_mask(
        config=cfg, inputs_embeds=torch.zeros(2, 6, 32, device="meta"), attention_mask=ones
    )
    assert got is not None and got.shape == (2, 6) and got.device.type == "meta"


def test_dense_mask_found_at_unpad_time_is_dropped():
    """A mask without padding: the unpadding state (one sync) says so, later layers drop the mask."""
    from fastft.ops.attention import unpad_indices

    mask = torch.ones(2, 6, dtype=torch.bool)
    assert not attn_patch._known_dense(mask)  # nothing computed yet: no guess, no sync
    idx, cu, mx = attn_patch._unpad_state(mask)
    assert attn_patch._known_dense(mask) and mx == 6 and idx.numel() == 12
    part = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    idx, cu, mx = unpad_indices(part)
    assert idx.tolist() == [0, 1, 6, 7, 8, 9, 10] and cu.tolist() == [0, 2, 7] and mx == 5
    attn_patch._unpad_state(part)
    assert not attn_patch._known_dense(part)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 16, generator=g) for _ in range(3))
    with fastft.backend("triton"):
        got = attn_patch._unpadded_attention(q, k, v, mask, 0.0, None, True)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    assert_close(got, want, torch.float32, name="dense mask")


def test_unsupported_mask_falls_back_to_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.is_causal = False
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 16, generator=g) for _ in range(3))
    mask4d = torch.rand(2, 1, 5, 5, generator=g) > 0.3
    mask4d[..., 0] = True
    got, _ = attn_patch.fastft_attention_forward(module, q, k, v, mask4d, scaling=0.25)
    want, _ = sdpa_attention_forward(module, q, k, v, mask4d, scaling=0.25)
    assert torch.equal(got, want)
    assert (
        "attention",
        "HF attention falls back to torch SDPA: a 4D/custom attention mask",
    ) in _backend._logged


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_train_with_attention_dropout_runs(backend):
    model = build("AutoModelForSequenceClassification", tiny_gpt2_config(num_labels=2, attn_pdrop=0.3))
    fastft.patch(model, loss=False)
    model.train()
    ids, mask = batch(0, seed=1)
    with fastft.backend(backend):
        torch.manual_seed(0)
        a = model(input_ids=ids, attention_mask=mask).logits
        torch.manual_seed(0)
        b = model(input_ids=ids, attention_mask=mask).logits
        model.eval()
        c = model(input_ids=ids, attention_mask=mask).logits
    a.sum().backward()
    assert torch.isfinite(a).all() and torch.equal(a, b) and not torch.allclose(a, c)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_attn_implementation_name_usable_at_construction():
    attn_patch.register()
    model = build("AutoModel", tiny_bert_config(attn_implementation="fastft"))
    ref = build("AutoModel", tiny_bert_config())
    ids, mask = batch(0)
    assert_close(
        model(input_ids=ids, attention_mask=mask).last_hidden_state[0],
        ref(input_ids=ids, attention_mask=mask).last_hidden_state[0],
        torch.float32,
    )


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_model_level_unpadding_runs_blocks_on_real_tokens(family):
    """The blocks see (1, T, D) packed hidden states; results match sdpa; undo removes the hooks."""
    from fastft.nn.families import FAMILIES as TABLE
    from fastft.nn.families import blocks

    make_cfg, auto, pad_id = FAMILIES[family]
    ref = build(auto, make_cfg(num_labels=3))
    pat = build(auto, make_cfg(num_labels=3))
    fastft.patch(pat, loss=False)
    fam = next(f for f in TABLE if f.name == family)
    seen = []
    handle = blocks(pat, fam)[1].register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    ids, mask = batch(pad_id)
    lp, gp = outputs(pat, ids, mask)
    lr, gr = outputs(ref, ids, mask)
    handle.remove()
    assert seen == [(1, int(mask.sum()), 32)]
    assert_close(lp, lr, torch.float32, name="logits")
    for a, b in zip(gp, gr):
        assert_close(a, b, torch.float32, scale=10, name="grad")
    fastft.unpatch(pat)
    seen.clear()
    handle = blocks(pat, fam)[1].register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    pat(input_ids=ids, attention_mask=mask)
    handle.remove()
    assert seen == [(3, 12, 32)]


def test_model_level_unpadding_with_gradient_checkpointing():
    """Checkpointed blocks recompute on the packed tokens in backward (the state lives on the mask)."""
    ref = build("AutoModelForSequenceClassification", tiny_bert_config(num_labels=3))
    pat = build("AutoModelForSequenceClassification", tiny_bert_config(num_labels=3))
    fastft.patch(pat, loss=False)
    for m in (ref, pat):
        (getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable)()
        m.train()
    ids, mask = batch(0)
    lp, gp = outputs(pat, ids, mask)
    lr, gr = outputs(ref, ids, mask)
    assert_close(lp, lr, torch.float32, name="logits")
    for a, b in zip(gp, gr):
        assert_close(a, b, torch.float32, scale=10, name="grad")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_lightly_padded_batch_stays_padded_on_torch_path(backend):
    """Below TORCH_PACK_MIN_PAD the torch path runs the blocks padded (HF sdpa's layout); Triton packs."""
    from fastft.nn.families import FAMILIES as TABLE
    from fastft.nn.families import blocks

    ref = build("AutoModelForSequenceClassification", tiny_bert_config(num_labels=3))
    pat = build("AutoModelForSequenceClassification", tiny_bert_config(num_labels=3))
    fastft.patch(pat, loss=False)
    fam = next(f for f in TABLE if f.name == "bert")
    ids, mask = batch(0)
    mask[1:] = 1
    mask[2, 11:] = 0  # 1 pad of 36 tokens: ~3% < 15%
    ids[mask == 0] = 0
    assert 1 - mask.float().mean() < attn_patch.TORCH_PACK_MIN_PAD
    seen = []
    handle = blocks(pat, fam)[1].register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    with fastft.backend(backend):
        lp, gp = outputs(pat, ids, mask)
        lr, gr = outputs(ref, ids, mask)
    handle.remove()
    assert seen == ([(3, 12, 32)] if backend == "torch" else [(1, 35, 32)])
    assert_close(lp, lr, torch.float32, name="logits")
    for a, b in zip(gp, gr):
        assert_close(a, b, torch.float32, scale=10, name="grad")
