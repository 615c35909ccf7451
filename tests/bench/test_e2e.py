"""End-to-end bench helpers: FLOP counting, review lengths, and a tiny run of each step scenario."""

from __future__ import annotations

import random

import pytest
import torch

from bench import bench_e2e as e2e
from bench import e2e_cpu_train as cpu_train
from bench import e2e_data
from tests.models import build, tiny_bert_config, tiny_gpt2_config

PEAKS = {"matmul_tflops": 1.0, "copy_gbps": 10.0}


def test_flops_per_token_bert_counts_every_dense_weight_once():
    cfg = tiny_bert_config(num_labels=3)
    model = build("AutoModelForSequenceClassification", cfg)
    h, i, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    dense = L * (4 * h * h + 2 * h * i) + h * h + 3 * h  # blocks + pooler + classifier; embeddings excluded
    assert e2e_data.matmul_param_flops_per_token(model) == 6 * dense
    for p in model.parameters():
        p.requires_grad_(False)
    assert e2e_data.matmul_param_flops_per_token(model) == 4 * dense  # frozen: no weight gradient


def test_flops_per_token_gpt2_conv1d_and_tied_head():
    cfg = tiny_gpt2_config()
    model = build("AutoModelForCausalLM", cfg)
    h, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    assert model.lm_head.weight is model.transformer.wte.weight
    dense = L * (h * 3 * h + h * h + h * 4 * h + 4 * h * h) + V * h  # Conv1D blocks + tied LM head
    assert e2e_data.matmul_param_flops_per_token(model) == 6 * dense


def test_attention_flops():
    assert e2e_data.attention_flops([4, 2], n_layers=2, d_model=8, causal=False) == 12 * 2 * 8 * (16 + 4)
    assert e2e_data.attention_flops([4, 2], n_layers=2, d_model=8, causal=True) == 6 * 2 * 8 * (16 + 4)


def test_review_lengths():
    rng = random.Random(0)
    lens, src = e2e_data.review_lengths("imdb_like", 500, 512, rng)
    assert all(16 <= n <= 512 for n in lens) and "synthetic" in src
    assert 150 < sorted(lens)[250] < 320  # median near 230
    if e2e_data.rotten_tomatoes_lengths() is not None:
        lens, src = e2e_data.review_lengths("rotten_tomatoes", 500, 40, rng)
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

    monkeypatch.setattr(e2e, "fastft_side", broken)
    rows = e2e.bench_bert(torch.device("cpu"), True, PEAKS)
    assert rows[0]["status"] == "ok"
    assert rows[1]["status"] == "not available" and "fastft.optim is not built yet" in rows[1]["reason"]


def test_hf_trainer_baseline_has_length_grouping_and_fused_adamw(tmp_path):
    """The TrainingArguments the cpu_train bench builds, for the installed transformers."""
    import dataclasses

    transformers = pytest.importorskip("transformers")
    from fastft.train import TrainConfig

    cfg = TrainConfig(device="cpu", eval_strategy="no")
    args = cpu_train.hf_training_args(cfg, n_train=8910, output_dir=str(tmp_path))
    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    if "train_sampling_strategy" in fields:  # transformers >= 5.24
        assert args.train_sampling_strategy == "group_by_length"
    else:
        assert args.group_by_length is True
    assert getattr(args.optim, "value", args.optim) == "adamw_torch_fused"
    # the same schedule as `fastft train`'s default: one epoch of ceil(8910/32) = 279 steps, 6% warmup
    assert args.num_train_epochs == cfg.epochs and args.max_steps == -1
    assert cpu_train.fastft_total_steps(cfg, 8910) == 279 and args.warmup_steps == int(0.06 * 279)
    assert (args.learning_rate, args.per_device_train_batch_size) == (cfg.lr, cfg.batch_size)
    assert (args.weight_decay, args.max_grad_norm) == (cfg.weight_decay, cfg.max_grad_norm)
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == cfg.scheduler
    conf = cpu_train.hf_baseline_config(args)
    assert conf["optim"] == "adamw_torch_fused" and "group_by_length" in str(conf)
    # what Trainer actually builds from those arguments: a LengthGroupedSampler and fused torch AdamW
    model = build("AutoModelForSequenceClassification", tiny_bert_config(num_labels=2))
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"input_ids": [[1] * n for n in range(2, 70)], "labels": [0, 1] * 34})
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds)
    assert type(trainer._get_train_sampler()).__name__ == "LengthGroupedSampler"
    opt = trainer.create_optimizer()
    assert getattr(opt, "optimizer", opt).defaults.get("fused") is True


def test_hf_version_switches():
    assert cpu_train.hf_length_grouping({"train_sampling_strategy": 1, "group_by_length": 1}) == {
        "train_sampling_strategy": "group_by_length"
    }
    assert cpu_train.hf_length_grouping({"group_by_length": 1}) == {"group_by_length": True}
    with pytest.raises(RuntimeError):
        cpu_train.hf_length_grouping({})
    F = type("F", (), {})
    old, new = F(), F()
    old.type, new.type = int, "float"
    assert cpu_train.hf_warmup({"warmup_steps": old}, 16) == {"warmup_steps": 16}
    got = cpu_train.hf_warmup({"warmup_steps": new}, 16)["warmup_steps"]
    assert isinstance(got, float) and got == 16.0


def test_length_grouped_batches_match_hf_sampler_grouping():
    rng = random.Random(0)
    lens = [rng.randint(5, 80) for _ in range(1000)]
    B = 5
    batches = e2e_data.length_grouped_batches(lens, B, random.Random(1))
    assert sorted(n for b in batches for n in b) == sorted(lens)  # a permutation, nothing dropped
    mega = min(len(lens) // (4 * B), 50) * B
    flat = [n for b in batches for n in b]
    for i in range(0, len(flat), mega):  # each megabatch sorted longest first
        assert flat[i : i + mega] == sorted(flat[i : i + mega], reverse=True)
    # far less padding than random batches
    pad = lambda bs: sum(max(b) * len(b) - sum(b) for b in bs) / sum(map(sum, bs))
    shuffled = lens[:]
    random.Random(2).shuffle(shuffled)
    assert pad(batches) < 0.2 * pad([shuffled[i : i + B] for i in range(0, len(shuffled), B)])


def test_bert_cls_baseline_is_sdpa_fused_on_grouped_batches(monkeypatch):
    _tiny_sizes(monkeypatch)
    rows = e2e.bench_bert(torch.device("cpu"), True, PEAKS)
    hf = rows[0]
    assert hf["attn_implementation"] == "sdpa" and hf["optimizer"] == "torch.optim.AdamW(fused=True)"
    assert "length-grouped" in hf["note"] and "length-grouped" in hf["config"]


def test_cpu_train_steps_env(monkeypatch):
    monkeypatch.delenv("FASTFT_BENCH_TRAIN_STEPS", raising=False)
    assert cpu_train.cpu_train_steps(False)["max_steps"] == -1  # one epoch, as `fastft train` by default
    assert cpu_train.cpu_train_steps(True)["max_steps"] == 12
    monkeypatch.setenv("FASTFT_BENCH_TRAIN_STEPS", "7")
    assert cpu_train.cpu_train_steps(False)["max_steps"] == 7
    monkeypatch.setenv("FASTFT_BENCH_TRAIN_STEPS", "epoch")
    assert cpu_train.cpu_train_steps(True)["max_steps"] == -1
    monkeypatch.setenv("FASTFT_BENCH_TRAIN_STEPS", "-3")
    with pytest.raises(ValueError, match="FASTFT_BENCH_TRAIN_STEPS"):
        cpu_train.cpu_train_steps(False)


def test_step_clock_times_every_optimizer_step():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.AdamW([p], lr=0.1)
    with cpu_train.StepClock() as clock:
        for _ in range(5):
            p.grad = torch.ones(4)
            opt.step()
    p.grad = torch.ones(4)
    opt.step()  # after the clock is closed: not counted
    got = clock.per_step()
    assert got["optimizer_steps"] == 5 and got["steps_timed"] == 3
    assert got["cpu_ms_per_step"] >= 0 and got["wall_ms_per_step"] >= 0


def test_cpu_train_target_judged_only_on_a_full_epoch():
    def rows():
        base = dict(name="cpu_train", status="ok", accuracy=0.80, cpu_ms_per_step=200.0, cpu_s=10.0)
        return [dict(base, impl="hf_trainer", mean_ms=120.0), dict(base, impl="fastft", mean_ms=100.0)]

    full = rows()
    cpu_train._judge_cpu_train(full, n_val=1000)
    assert full[1]["speedup_vs_hf_trainer"] == pytest.approx(1.2) and full[1]["target_met"] is True
    short = rows()
    cpu_train._judge_cpu_train(short, n_val=1000, full_epoch=False)
    assert short[1]["target_met"] is None
    worse = rows()
    worse[1]["accuracy"] = 0.70  # faster but less accurate than the tolerance allows
    cpu_train._judge_cpu_train(worse, n_val=1000)
    assert worse[1]["target_met"] is False
