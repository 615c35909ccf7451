"""fastft.patch(model) loss component: patched tiny HF models give HF's loss and grads."""

import copy

import pytest
import torch

import fastft
from fastft.nn.families import family_of
from fastft.patching import loss as loss_patch
from tests.compare import assert_close
from tests.models import build, tiny_bert_config, tiny_gpt2_config, tiny_llama_config

CAUSAL = {"gpt2": tiny_gpt2_config, "llama": tiny_llama_config}
SEQCLS = {"bert": tiny_bert_config, "llama": tiny_llama_config}


def _batch(causal: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    if causal:
        labels = ids.clone()
        labels[1, 7:] = -100
        labels[2, :3] = -100
    else:
        labels = torch.tensor([0, 2, 1])
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def _loss_and_grads(model, batch):
    out = model(**batch)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.loss, params, allow_unused=True)
    return out, grads


def _compare(model, batch, backend="torch"):
    patched = fastft.patch(copy.deepcopy(model), attention=False)
    ref, ref_grads = _loss_and_grads(model, batch)
    with fastft.backend(backend):
        out, grads = _loss_and_grads(patched, batch)
    assert_close(out.loss, ref.loss, torch.float32, name="loss")
    for (name, _), a, r in zip(model.named_parameters(), grads, ref_grads):
        if r is None:
            assert a is None or not a.any(), name
        else:
            assert_close(a, r, torch.float32, name=f"grad {name}")
    return patched, out


@pytest.mark.parametrize("arch", sorted(CAUSAL))
@pytest.mark.parametrize("nib", [None, 13])
def test_patched_causal_lm_matches_hf(arch, nib):
    model = build("AutoModelForCausalLM", CAUSAL[arch]())
    batch = _batch(True)
    if nib is not None:
        batch["num_items_in_batch"] = torch.tensor(nib)
    patched, out = _compare(model, batch)
    assert out.logits is None, "the fused linear-CE path must not return (materialise) the logits"
    # asking for the logits: HF's control flow with fastft's loss_function
    keep = patched(**batch, fastft_keep_logits=True)
    ref = model(**batch)
    assert keep.logits.shape == ref.logits.shape
    assert_close(keep.loss, ref.loss, torch.float32)
    assert patched.loss_function is loss_patch.causal_lm_loss


def test_patched_gpt2_through_triton_kernel(device):
    """The same check with the CE kernel forced (CPU interpreter without a GPU)."""
    model = build("AutoModelForCausalLM", tiny_gpt2_config())
    _compare(model, _batch(True, seed=1), backend="triton")


def test_patched_causal_lm_tuple_output_and_no_labels():
    model = build("AutoModelForCausalLM", tiny_gpt2_config())
    patched = fastft.patch(copy.deepcopy(model), attention=False)
    batch = _batch(True)
    ref = model(**batch)
    tup = patched(**batch, return_dict=False)  # HF's control flow, fastft loss_function
    assert_close(tup[0], ref.loss, torch.float32)
    no_labels = patched(input_ids=batch["input_ids"])
    assert no_labels.loss is None and no_labels.logits.shape == ref.logits.shape


@pytest.mark.parametrize("arch", sorted(SEQCLS))
@pytest.mark.parametrize("nib", [None, 2])
def test_patched_sequence_classification_matches_hf(arch, nib):
    model = build("AutoModelForSequenceClassification", SEQCLS[arch](num_labels=3))
    batch = _batch(False)
    if nib is not None:
        batch["num_items_in_batch"] = torch.tensor(nib)
    _, out = _compare(model, batch, backend="triton")
    assert out.logits.shape == (3, 3)


def test_patch_is_idempotent_and_reversible():
    model = build("AutoModelForCausalLM", tiny_gpt2_config())
    before = (
        dict(model._forward_pre_hooks),
        dict(model._forward_hooks),
        set(model.__dict__),
        set(model.lm_head.__dict__),
    )
    fastft.patch(model, attention=False)
    n_hooks = len(model._forward_hooks)
    fastft.patch(model, attention=False)
    assert len(model._forward_hooks) == n_hooks == len(before[1]) + 1
    assert "forward" in model.lm_head.__dict__
    assert loss_patch.apply(model, family_of(model)) is None  # component-level idempotence
    fastft.unpatch(model)
    after = (
        dict(model._forward_pre_hooks),
        dict(model._forward_hooks),
        set(model.__dict__),
        set(model.lm_head.__dict__),
    )
    assert after == before
    out = model(**_batch(True))
    assert out.logits is not None and out.loss is not None
    # other instances of the same class are never touched
    other = build("AutoModelForCausalLM", tiny_gpt2_config())
    fastft.patch(model, attention=False)
    assert "_loss_function" not in other.__dict__ and "forward" not in other.lm_head.__dict__


def test_head_replaced_after_patch_falls_back_to_logits():
    """If the output embedding is swapped after patching, the loss still matches HF (from the logits)."""
    model = build("AutoModelForCausalLM", tiny_gpt2_config())
    batch = _batch(True)
    ref = model(**batch)
    patched = fastft.patch(copy.deepcopy(model), attention=False)
    new_head = torch.nn.Linear(32, 128, bias=False)
    new_head.weight = patched.lm_head.weight
    patched.lm_head = new_head
    out = patched(**batch)
    assert out.logits is not None
    assert_close(out.loss, ref.loss, torch.float32)


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_patched_bert_other_problem_types_match_hf(problem):
    num_labels = 1 if problem == "regression" else 3
    model = build(
        "AutoModelForSequenceClassification", tiny_bert_config(num_labels=num_labels, problem_type=problem)
    )
    batch = _batch(False)
    g = torch.Generator().manual_seed(3)
    if problem == "regression":
        batch["labels"] = torch.randn(3, generator=g)
    else:
        batch["labels"] = (torch.rand(3, 3, generator=g) > 0.5).float()
    _compare(model, batch)
