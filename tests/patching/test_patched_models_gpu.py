"""On a CUDA GPU: patched BERT and GPT-2 (head dim 64, the kernels' real configs) against HF's sdpa.

Tiny random configs, a right-padded batch; logits on real tokens and all parameter grads of the patched
bf16/fp16 model must be within 2x the error of HF's sdpa model in the same dtype, both measured against
the sdpa model in float64. Skipped without a GPU (marked ``gpu``).
"""

from __future__ import annotations

import copy

import pytest
import torch

import fastft
from fastft import _backend
from tests.compare import assert_within_torch_error
from tests.models import tiny_bert_config, tiny_gpt2_config

pytestmark = pytest.mark.gpu

CONFIGS = {
    "bert": lambda: tiny_bert_config(
        hidden_size=128,
        num_attention_heads=2,
        intermediate_size=256,
        num_labels=3,
        max_position_embeddings=160,
    ),  # fmt: skip
    "gpt2": lambda: tiny_gpt2_config(n_embd=128, n_head=2, n_positions=160, num_labels=3),
}


def _batch(device):
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([150, 37, 1, 96])
    ids = torch.randint(3, 100, (4, 150), generator=g)
    mask = (torch.arange(150)[None, :] < lens[:, None]).long()
    ids[mask == 0] = 0
    return ids.to(device), mask.to(device)


def _run(model, ids, mask):
    logits = model(input_ids=ids, attention_mask=mask).logits
    params = [p for p in model.parameters() if p.requires_grad]
    return (logits, *torch.autograd.grad(logits.float().sum(), params))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("family", list(CONFIGS))
def test_patched_model_matches_sdpa_on_gpu(family, dtype):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(CONFIGS[family]()).eval()
    ids, mask = _batch("cuda")
    ref = _run(copy.deepcopy(base).double().cuda(), ids, mask)
    sdpa = _run(copy.deepcopy(base).to("cuda", dtype), ids, mask)
    pat = copy.deepcopy(base).to("cuda", dtype)
    fastft.patch(pat, loss=False)
    with fastft.backend("triton"):
        got = _run(pat, ids, mask)
    assert _backend.report()["attention"].startswith("triton")
    for i, (g, t, r) in enumerate(zip(got, sdpa, ref)):
        assert_within_torch_error(g, t, r, name=f"{family} {dtype} {'logits' if i == 0 else f'grad {i}'}")
