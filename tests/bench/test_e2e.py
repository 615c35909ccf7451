"""End-to-end bench helpers: FLOP counting, review lengths, and a tiny run of each step scenario."""

from __future__ import annotations

import random

import pytest
import torch

from bench import bench_e2e as e2e
from tests.models import build, tiny_bert_config, tiny_gpt2_config

PEAKS = {"matmul_tflops": 1.0, "copy_gbps": 10.0}


def test_flops_per_token_bert_counts_every_dense_weight_once():
    cfg = tiny_bert_config(num_labels=3)
    model = build("AutoModelForSequenceClassification", cfg)
    h, i, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    dense = L * (4 * h * h + 2 * h * i) + h * h + 3 * h  # blocks + pooler + classifier; embeddings excluded
    assert e2e.matmul_param_flops_per_token(model) == 6 * dense
    for p in model.parameters():
        p.requires_grad_(False)
    assert e2e.matmul_param_flops_per_token(model) == 4 * dense  # frozen: no weight gradient


def test_flops_per_token_gpt2_conv1d_and_tied_head():
    cfg = tiny_gpt2_config()
    model = build("AutoModelForCausalLM", cfg)
    h, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    assert model.lm_head.weight is model.transformer.wte.weight
    dense = L * (h * 3 * h + h * h + h * 4 * h + 4 * h * h) + V * h  # Conv1D blocks + tied LM head
    assert e2e.matmul_param_flops_per_token(model) == 6 * dense


def test_attention_flops():
    assert e2e.attention_flops([4, 2], n_layers=2, d_model=8, causal=False) == 12 * 2 * 8 * (16 + 4)
    assert e2e.attention_flops([4, 2], n_layers=2, d_model=8, causal=True) == 6 * 2 * 8 * (16 + 4)


def test_review_lengths():
    rng = random.Random(0)
    lens, src = e2e.review_lengths("imdb_like", 500, 512, rng)
    assert all(16 <= n <= 512 for n in lens) and "synthetic" in src
    assert 150 < sorted(lens)[250] < 320  # median near 230
    if e2e.rotten_tomatoes_lengths() is not None:
        lens, src = e2e.review_lengths("rotten_tomatoes", 500, 40, rng)
        assert src.startswith("real") and max(lens) <= 40 and 15 < sum(lens) / len(lens) < 40


def _tiny_sizes(monkeypatch):
    monkeypatch.setattr(
        e2e,
        "bert_sizes",
        lambda device, quick: dict(
            label="bert-test",
            config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
            batch=4,
            max_len=48,
            dists=("imdb_like",),
            n_batches=2,
            rounds=1,
        ),
    )
    monkeypatch.setattr(
        e2e,
        "gpt2_sizes",
        lambda device, quick: dict(
            label="gpt2-test",
            config=dict(n_embd=32, n_layer=1, n_head=2, n_positions=32),
            batch=2,
            seq=16,
            n_batches=2,
            rounds=1,
        ),
    )


def _check_pair(rows, baseline):
    assert [r["impl"] for r in rows] == [baseline, "fastft"]
    base, ours = rows
    assert base["status"] == "ok", base
    assert base["samples_per_s"] > 0 and base["tokens_per_s"] > 0 and 0 < base["mfu"]
    assert base["peak_mem_bytes"] > base["resident_bytes"] > 0
    assert base["n"] == 2  # rounds x batches
    if ours["status"] == "ok":
        assert ours[f"speedup_vs_{baseline}"] == pytest.approx(base["mean_ms"] / ours["mean_ms"])
        assert ours[f"mem_ratio_vs_{baseline}"] == pytest.approx(
            ours["peak_mem_bytes"] / base["peak_mem_bytes"]
        )
        assert ours["flops_per_step"] == pytest.approx(base["flops_per_step"], rel=0.05)
    else:  # a fastft part that has not landed is recorded with its reason, never a crash
        assert ours["status"] == "not available" and ours["reason"]


def test_tiny_bert_step_scenario(monkeypatch):
    _tiny_sizes(monkeypatch)
    rows = e2e.bench_bert(torch.device("cpu"), True, PEAKS)
    _check_pair(rows, "hf")
    assert rows[0]["shape"]["lengths"] == "imdb_like" and 0 <= rows[0]["pad_fraction"] < 1


def test_tiny_gpt2_lora_scenario(monkeypatch):
    pytest.importorskip("peft")
    _tiny_sizes(monkeypatch)
    rows = e2e.bench_gpt2_lora(torch.device("cpu"), True, PEAKS)
    _check_pair(rows, "hf_peft")
    # LoRA r=16 on c_attn, c_proj (attn + mlp), c_fc of one block: only adapters train
    h = 32
    lora = 16 * ((h + 3 * h) + (h + h) + (h + 4 * h) + (4 * h + h))
    assert rows[0]["trainable_params"] == lora


def test_missing_fastft_part_is_recorded_not_raised(monkeypatch):
    _tiny_sizes(monkeypatch)

    def broken(*a, **k):
        raise ImportError("fastft.optim is not built yet")

    monkeypatch.setattr(e2e, "_fastft_side", broken)
    rows = e2e.bench_bert(torch.device("cpu"), True, PEAKS)
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "not available" and "fastft.optim is not built yet" in rows[1]["reason"]
