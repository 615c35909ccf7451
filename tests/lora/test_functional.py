"""``fastft.functional.lora_linear`` as a custom op: torch.compile, dispatch, and whole models on the kernel."""

import pytest
import torch

import fastft
from fastft.functional import lora_linear
from fastft.lora import lora_layers
from tests.compare import assert_close, randn
from tests.models import build, tiny_bert_config, tiny_gpt2_config


def _args(layout="linear", seed=0):
    x = randn(3, 7, 20, seed=seed)
    w = randn(24, 20, seed=seed + 1, scale=0.2)
    if layout == "conv1d":
        w = w.t().contiguous()
    return x, w, randn(24, seed=seed + 2), randn(4, 20, seed=seed + 3, scale=0.2), randn(24, 4, seed=seed + 4)


@pytest.mark.parametrize("compile_backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("path", ["torch", "triton"])
def test_torch_compile(compile_backend, path):
    x, w, b, a, bb = _args("conv1d")

    def f(x, a, bb):
        return lora_linear(x, w, b, a, bb, 0.5, weight_layout="conv1d").square().sum()

    outs = []
    for fn in (f, torch.compile(f, backend=compile_backend, fullgraph=True)):
        leaves = [t.clone().requires_grad_() for t in (x, a, bb)]
        with fastft.backend(path):
            loss = fn(*leaves)
            loss.backward()
        outs.append([loss.detach()] + [t.grad for t in leaves])
    for e, c in zip(*outs):
        assert_close(c, e, torch.float32)


def test_opcheck():
    x, w, b, a, bb = _args()
    x2 = x.reshape(-1, 20)
    seed = torch.zeros(1, dtype=torch.int64)
    args = (x2.requires_grad_(), w, b, a.requires_grad_(), bb.requires_grad_(), seed, 0.5, 0.0, False)
    torch.library.opcheck(torch.ops.fastft.lora_linear_fwd.default, args)


def test_auto_backend_on_cpu_uses_reference():
    x, w, b, a, bb = _args()
    with fastft.backend("auto"):
        lora_linear(x, w, b, a, bb, 1.0)
    assert "torch" in fastft.report()["lora_linear"]


def test_rank_over_128_falls_back():
    x = randn(5, 16)
    w, a, bb = randn(8, 16), randn(130, 16), randn(8, 130)
    with fastft.backend("triton"):
        y = lora_linear(x, w, None, a, bb, 0.1)
    assert "rank 130" in fastft.report()["lora_linear"]
    assert_close(y, (x @ w.t() + 0.1 * (x @ a.t()) @ bb.t()).double(), torch.float32)


def test_fp32_factors_with_half_input():
    x = randn(6, 16, dtype=torch.bfloat16)
    w = randn(8, 16, dtype=torch.bfloat16)
    a, bb = randn(4, 16).requires_grad_(), randn(8, 4).requires_grad_()
    y = lora_linear(x, w, None, a, bb, 1.0)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert a.grad.dtype == torch.float32 and bb.grad.dtype == torch.float32


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_model_on_kernel_matches_torch_path(kind):
    cfg = tiny_bert_config(num_labels=3) if kind == "bert" else tiny_gpt2_config(num_labels=3)
    m = build("AutoModelForSequenceClassification", cfg)
    fastft.add_lora(m, r=4, alpha=8)
    with torch.no_grad():
        for layer in lora_layers(m).values():
            layer.lora_B.weight.normal_(0, 0.2)
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2])
    res = []
    for path in ("torch", "triton"):
        m.zero_grad()
        with fastft.backend(path):
            loss = m(input_ids=ids, labels=labels).loss
            loss.backward()
        res.append([loss.detach()] + [p.grad.clone() for p in m.parameters() if p.requires_grad])
    for k, t in zip(*res):
        assert_close(k, t.double(), torch.float32, scale=10)


@pytest.mark.parametrize("path", ["torch", "triton"])
def test_compile_with_dropout_and_frozen_input(path):
    """Dropout under torch.compile (seed drawn in the graph) is reproducible with torch.manual_seed, and
    an input that needs no grad (first layer of a frozen model) skips dx but still gives dA, dB."""
    x, w, b, a, bb = _args(seed=3)

    def f(a, bb):
        return lora_linear(x, w, b, a, bb, 0.5, dropout_p=0.25).square().sum()

    res = []
    for fn in (f, torch.compile(f, backend="aot_eager")):
        leaves = [t.clone().requires_grad_() for t in (a, bb)]
        torch.manual_seed(11)
        with fastft.backend(path):
            loss = fn(*leaves)
            loss.backward()
        res.append([loss.detach()] + [t.grad for t in leaves])
    for e, c in zip(*res):
        assert_close(c, e, torch.float32)
    # the gradients are those of the mask-free formula with *some* mask: check against no dropout
    leaves = [t.clone().requires_grad_() for t in (a, bb)]
    with fastft.backend(path):
        lora_linear(x, w, b, *leaves, 0.5).square().sum().backward()
    assert not torch.allclose(leaves[0].grad, res[0][1])
