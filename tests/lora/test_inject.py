"""LoRA injection, trainable set, merge/unmerge/remove and the patch component on tiny HF models."""

import pytest
import torch
from torch import nn

import fastft
from fastft.lora import LoRALinear, lora_layers, lora_parameters
from tests.compare import assert_close
from tests.models import build, tiny_bert_config, tiny_gpt2_config, tiny_llama_config

CASES = {
    "bert-seqcls": ("AutoModelForSequenceClassification", lambda: tiny_bert_config(num_labels=3)),
    "gpt2-seqcls": ("AutoModelForSequenceClassification", lambda: tiny_gpt2_config(num_labels=2)),
    "gpt2-lm": ("AutoModelForCausalLM", tiny_gpt2_config),
    "llama-lm": ("AutoModelForCausalLM", tiny_llama_config),
}


def _model(case, seed=0):
    cls, cfg = CASES[case]
    return build(cls, cfg(), seed=seed)


def _ids(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (2, 11), generator=g)


def _out(m, ids):
    o = m(input_ids=ids)
    return o.logits


def _randomize_lora(m, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(m).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.2)


def _peft_trainable(case, **kw):
    """The trainable-parameter names PEFT gives for the same config, in fastft's naming."""
    import peft

    m = _model(case)
    task = "SEQ_CLS" if "seqcls" in case else "CAUSAL_LM"
    fam = fastft.patching.family_of(m)
    pm = peft.get_peft_model(
        m, peft.LoraConfig(task_type=task, r=4, lora_alpha=8, target_modules=list(fam.lora_targets), **kw)
    )
    names = set()
    for n, p in pm.named_parameters():
        if p.requires_grad:
            n = n.removeprefix("base_model.model.").replace(".default", "").replace(".modules_to_save", "")
            names.add(n)
    return names


@pytest.mark.parametrize("case", list(CASES))
def test_trainable_set_matches_peft_and_starts_as_base(case):
    m = _model(case).eval()
    ids = _ids()
    ref = _out(m, ids)
    w_ids = {id(p) for p in m.parameters()}
    fastft.add_lora(m, r=4, alpha=8)
    ours = {n for n, p in m.named_parameters() if p.requires_grad}
    assert ours == _peft_trainable(case)
    assert {id(p) for p in lora_parameters(m)} == {id(p) for n, p in m.named_parameters() if "lora_" in n}
    # base parameters are the same objects (not copies), all frozen
    assert w_ids <= {id(p) for p in m.parameters()}
    fam = fastft.patching.family_of(m)
    assert {n.rsplit(".", 1)[-1] for n in lora_layers(m)} == set(fam.lora_targets)
    assert_close(_out(m, ids), ref, torch.float32, name="B=0 start")


def test_heads_trainable_only_for_classification():
    m = _model("bert-seqcls")
    fastft.add_lora(m, r=2)
    assert all(p.requires_grad for p in m.classifier.parameters())
    m2 = _model("gpt2-lm")
    fastft.add_lora(m2, r=2)
    assert not m2.lm_head.weight.requires_grad
    m3 = _model("bert-seqcls")
    fastft.add_lora(m3, r=2, modules_to_save=[], target_modules=["query"])
    assert {n.rsplit(".", 3)[-3] for n, p in m3.named_parameters() if p.requires_grad} == {"query"}


@pytest.mark.parametrize(
    "auto_cls, config, head",
    [
        ("AutoModelForTokenClassification", tiny_gpt2_config, "classifier"),  # not in the gpt2 row
        ("AutoModelForQuestionAnswering", tiny_llama_config, "qa_outputs"),
        ("AutoModelForSequenceClassification", tiny_llama_config, "score"),
        ("AutoModelForQuestionAnswering", tiny_bert_config, "qa_outputs"),
        ("AutoModelForImageClassification", None, "classifier"),  # CLIP: towers on the model, no backbone
    ],
)
def test_default_head_is_every_family_task_head(auto_cls, config, head):
    """The new head of any task class trains under LoRA (it would otherwise stay at its random init)."""
    if config is None:
        from tests.clip_util import tiny_config

        config = tiny_config("clip")
    m = build(auto_cls, config(num_labels=3) if callable(config) else config)
    fastft.add_lora(m, r=2, target_modules="all-linear")
    trainable = {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trainable == {head}
    assert not any(n.startswith(head + ".") for n in lora_layers(m))  # all-linear leaves the head alone


def test_layer_wraps_same_weight_and_scaling():
    lin = nn.Linear(13, 7)
    layer = LoRALinear(lin, r=4, alpha=8)
    assert layer.weight is lin.weight and layer.bias is lin.bias and not lin.weight.requires_grad
    assert layer.scaling == 2.0 and tuple(layer.lora_A.weight.shape) == (4, 13)
    assert tuple(layer.lora_B.weight.shape) == (7, 4) and not layer.lora_B.weight.any()
    assert LoRALinear(lin, r=16, alpha=8, use_rslora=True).scaling == pytest.approx(2.0)
    x = torch.randn(3, 5, 13)
    layer.lora_B.weight.data.normal_()
    ref = lin(x) + layer.scaling * (x @ layer.lora_A.weight.t()) @ layer.lora_B.weight.t()
    assert_close(layer(x), ref, torch.float32)


@pytest.mark.parametrize("case", ["bert-seqcls", "gpt2-seqcls"])
def test_merge_unmerge_remove(case):
    m = _model(case).eval()
    plain = _model(case).eval()
    ids = _ids()
    base_out = _out(m, ids)
    types = {n: type(x) for n, x in m.named_modules()}
    fastft.add_lora(m, r=4, alpha=8)
    _randomize_lora(m)
    lora_out = _out(m, ids)
    assert (lora_out - base_out).abs().max() > 1e-3  # the adapter does something

    fastft.merge_lora(m)
    assert not any(isinstance(x, LoRALinear) for x in m.modules())
    assert {n: type(x) for n, x in m.named_modules()} == types  # a plain HF model again
    assert list(m.state_dict()) == list(plain.state_dict())
    assert_close(_out(m, ids), lora_out, torch.float32, scale=10, name="merged")
    # the merged weights load into a fresh plain model and give the same outputs
    plain.load_state_dict(m.state_dict())
    assert_close(_out(plain, ids), lora_out, torch.float32, scale=10, name="merged state dict")

    fastft.unmerge_lora(m)
    assert len(lora_layers(m)) > 0
    assert_close(_out(m, ids), lora_out, torch.float32, scale=10, name="unmerged")

    fastft.remove_lora(m)
    assert {n: type(x) for n, x in m.named_modules()} == types
    assert all(p.requires_grad for p in m.parameters())
    assert_close(_out(m, ids), base_out, torch.float32, scale=10, name="removed")


def test_merge_and_unload():
    m = _model("gpt2-lm").eval()
    fastft.add_lora(m, r=3, alpha=5)
    _randomize_lora(m)
    ids = _ids()
    ref = _out(m, ids)
    fastft.merge_lora(m, keep_adapter=False)
    assert_close(_out(m, ids), ref, torch.float32, scale=10)
    assert not any(isinstance(x, LoRALinear) for x in m.modules())
    with pytest.raises(ValueError, match="nothing is merged"):
        fastft.unmerge_lora(m)


def test_patch_component_reversible():
    m = _model("bert-seqcls")
    types = {n: type(x) for n, x in m.named_modules()}
    fastft.patch(m, attention=False, loss=False, lora={"r": 4, "alpha": 8})
    assert fastft.patching.patched_parts(m) == ["lora"]
    assert len(lora_layers(m)) == 2 * 6 + 1  # 6 targets per block + pooler.dense (PEFT's suffix rule)
    fastft.unpatch(m)
    assert {n: type(x) for n, x in m.named_modules()} == types
    assert all(p.requires_grad for p in m.parameters())


def test_training_step_updates_only_lora_and_head():
    m = _model("bert-seqcls").train()
    fastft.add_lora(m, r=4, alpha=8, dropout=0.1)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    out = m(input_ids=_ids(), labels=torch.tensor([0, 2]))
    out.loss.backward()
    opt.step()
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    assert any("lora_B" in n for n in changed) and "classifier.weight" in changed


def test_bad_input_errors():
    m = _model("bert-seqcls")
    with pytest.raises(ValueError, match="matches no Linear"):
        fastft.add_lora(m, target_modules=["nope"])
    with pytest.raises(ValueError, match="LayerNorm"):
        fastft.add_lora(m, target_modules=["LayerNorm"])
    fastft.add_lora(m)
    with pytest.raises(ValueError, match="remove_lora"):
        fastft.add_lora(m)


def test_target_spec_forms():
    m = _model("gpt2-lm")
    fastft.add_lora(m, target_modules="all-linear")
    names = set(lora_layers(m))
    assert "lm_head" not in names and len(names) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    m = _model("gpt2-lm")
    fastft.add_lora(m, target_modules=r".*\.attn\.c_attn")
    assert sorted(lora_layers(m)) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    m = _model("bert-seqcls")
    fastft.add_lora(m, target_modules=["bert.encoder.layer.1.attention.self.query"])  # a full path
    assert list(lora_layers(m)) == ["bert.encoder.layer.1.attention.self.query"]


def test_autocast_and_half_base():
    m = _model("bert-seqcls")
    fastft.add_lora(m, r=4)
    _randomize_lora(m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m(input_ids=_ids(), labels=torch.tensor([1, 0])).loss
    loss.backward()
    grads = [p.grad for p in lora_parameters(m)]
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)
    # a bf16 base keeps fp32 LoRA factors (like PEFT's autocast_adapter_dtype)
    layer = LoRALinear(nn.Linear(8, 4).to(torch.bfloat16), r=2)
    assert layer.lora_A.weight.dtype == torch.float32 and layer.weight.dtype == torch.bfloat16
    assert layer(torch.randn(3, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
