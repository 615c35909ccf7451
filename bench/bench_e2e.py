"""End-to-end benchmarks: whole fine-tuning steps of fastft against the Hugging Face defaults.

Scenarios (each run in this process, baseline and fastft one after the other on identical
weights and batches; the first model is freed before the second is built so that CUDA's peak
memory counter sees one model at a time):

* ``bert_cls`` -- one training step (zero_grad, forward with loss, backward, optimizer step) of a
  BERT-base-sized sequence classifier (random init: speed does not depend on the weights) on
  batches whose lengths follow a review-length distribution, padded to the longest in the batch
  as HF's ``DataCollatorWithPadding`` does. ``fastft``: ``fastft.patch(model)`` + FusedAdamW (the
  patched attention drops the padding when its owner implements unpadding); ``hf``: HF at its best,
  ``attn_implementation="sdpa"`` + ``torch.optim.AdamW(fused=True)``. Both get the same
  length-grouped batches (the order of HF's ``LengthGroupedSampler``, as a careful user trains).
* ``gpt2_lora`` -- GPT-2-small-sized causal LM with LoRA r=16, alpha=32 on c_attn/c_proj/c_fc,
  packed full-length blocks. ``fastft``: ``fastft.patch(model, lora=...)`` + FusedAdamW;
  ``hf_peft``: ``peft.get_peft_model`` + torch AdamW(fused=True).
* ``cpu_train`` (CPU only) -- the ``fastft train`` default run (TrainConfig defaults: all-MiniLM-L6-v2
  on Rotten Tomatoes, one epoch; ``--quick``: 12 steps; ``FASTFT_BENCH_TRAIN_STEPS=epoch|N``) against
  ``transformers.Trainer`` at its best (length grouping, ``optim="adamw_torch_fused"``, sdpa) with
  the same model, the same prepared data (``fastft.train.data.prepare_data``) and hyperparameters:
  steady-state time per optimizer step (process CPU and wall), and validation accuracy measured by
  the same code for both.

On CUDA both sides run under bf16 autocast with fp32 master weights; on CPU in fp32. On CPU the
models are shrunk (fewer/narrower layers, shorter sequences) so the part runs in minutes; the
record's ``shape`` says which config ran. Missing fastft parts are recorded, never crash the run.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.cli import main_for
from bench.common import measure_peaks, sync
from bench.e2e_compare import (
    PART,
    compare,
    compare_records,
    fastft_side,
    free_memory,
    log_failure,
    optimizer_desc,
    short_error,
    torch_adamw,
)
from bench.e2e_cpu_train import bench_cpu_train, cpu_train_steps
from bench.e2e_data import (
    MEGABATCH_MULT,
    attention_flops,
    length_grouped_batches,
    matmul_param_flops_per_token,
    review_lengths,
)
from bench.records import not_available

GPT2_LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]

# --------------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------------


def bert_sizes(device: torch.device, quick: bool) -> dict[str, Any]:
    if device.type == "cuda":
        cfg = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        return dict(
            label="bert-base",
            config=cfg,
            batch=32,
            max_len=512,
            dists=("rotten_tomatoes", "imdb_like"),
            n_batches=8,
            rounds=2 if quick else 6,
        )
    if quick:
        cfg = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
        return dict(
            label="bert-cpu-quick",
            config=cfg,
            batch=8,
            max_len=128,
            dists=("rotten_tomatoes",),
            n_batches=3,
            rounds=2,
        )
    cfg = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    return dict(
        label="bert-cpu-small",
        config=cfg,
        batch=16,
        max_len=128,
        dists=("rotten_tomatoes",),
        n_batches=4,
        rounds=3,
    )


def gpt2_sizes(device: torch.device, quick: bool) -> dict[str, Any]:
    if device.type == "cuda":
        cfg = dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024)
        return dict(label="gpt2-small", config=cfg, batch=8, seq=1024, n_batches=4, rounds=2 if quick else 6)
    if quick:
        cfg = dict(n_embd=128, n_layer=2, n_head=2, n_positions=128)
        return dict(label="gpt2-cpu-quick", config=cfg, batch=2, seq=64, n_batches=2, rounds=2)
    cfg = dict(n_embd=256, n_layer=4, n_head=4, n_positions=256)
    return dict(label="gpt2-cpu-small", config=cfg, batch=4, seq=128, n_batches=2, rounds=3)


# --------------------------------------------------------------------------------------------
# (a) BERT-base sequence classification
# --------------------------------------------------------------------------------------------


def _pick_evenly(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (every part of a sorted megabatch is represented)."""
    if n >= len(items):
        return list(items)
    return [items[int((k + 0.5) * len(items) / n)] for k in range(n)]


def _bert_batches(sz: dict, dist: str, device: torch.device, vocab: int) -> tuple[list[dict], str]:
    """``n_batches`` batches of one length-grouped epoch (a pool of 50 batches' worth of review
    lengths grouped as HF's ``LengthGroupedSampler`` does, then batches picked evenly across it),
    each padded to its longest member as ``DataCollatorWithPadding`` does."""
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    pool, source = review_lengths(dist, MEGABATCH_MULT * 4 * sz["batch"], sz["max_len"], rng)
    grouped = [b for b in length_grouped_batches(pool, sz["batch"], rng) if len(b) == sz["batch"]]
    out = []
    for lens in _pick_evenly(grouped, sz["n_batches"]):
        S = max(lens)
        ids = torch.randint(1000, vocab, (len(lens), S), generator=g)
        mask = torch.zeros(len(lens), S, dtype=torch.long)
        for i, n in enumerate(lens):
            mask[i, :n] = 1
        ids = ids * mask  # [PAD] = 0 after each review, like the collator
        labels = torch.randint(0, 2, (len(lens),), generator=g)
        out.append(
            {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
        )
    return out, source + ", length-grouped batches (HF LengthGroupedSampler order)"


def _build_bert(sz: dict, device: torch.device):
    from transformers import AutoModelForSequenceClassification, BertConfig

    cfg = BertConfig(
        vocab_size=30522,
        max_position_embeddings=512,
        num_labels=2,
        attn_implementation="sdpa",
        **sz["config"],
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg).to(device).train(), cfg


def bench_bert(device: torch.device, quick: bool, peaks: dict) -> list[dict]:
    sz = bert_sizes(device, quick)
    records: list[dict] = []
    for dist in sz["dists"]:
        records += _bench_bert_dist(sz, dist, device, peaks)
    return records


def _bench_bert_dist(sz: dict, dist: str, device: torch.device, peaks: dict) -> list[dict]:
    lr = 2e-5
    batches, source = _bert_batches(sz, dist, device, 30522)
    lens = [int(n) for b in batches for n in b["attention_mask"].sum(1).tolist()]
    shape = {"model": sz["label"], "B": sz["batch"], "lengths": dist, "max_len": sz["max_len"]}
    note = (
        f"bert_cls: random-init {sz['label']} ({sz['config']}), batch {sz['batch']}, {source}, "
        "padded to the longest in each batch; HF baseline = attn_implementation='sdpa' + "
        "torch.optim.AdamW(fused=True) on the same length-grouped batches"
    )
    cfg_holder: dict = {}

    def hf():
        model, cfg_holder["cfg"] = _build_bert(sz, device)
        opt = torch_adamw(model.parameters(), device, lr)
        attn = getattr(model.config, "_attn_implementation", None)
        if attn != "sdpa":  # the baseline must be HF at its best: say so loudly rather than compare to eager
            raise RuntimeError(f"HF baseline attention is {attn!r}, not 'sdpa'")
        extra = {
            "config": f"HF attn_implementation={attn} + {optimizer_desc(opt)}, length-grouped batches",
            "attn_implementation": attn,
            "optimizer": optimizer_desc(opt),
        }
        return model, opt, extra

    def ours():
        model, cfg_holder["cfg"] = _build_bert(sz, device)
        return fastft_side(model, None, device, lr)

    def flops(model: nn.Module) -> float:
        cfg = cfg_holder["cfg"]
        per_tok = matmul_param_flops_per_token(model)
        attn = attention_flops(lens, cfg.num_hidden_layers, cfg.hidden_size, causal=False)
        return (per_tok * sum(lens) + attn) / len(batches)

    sides, failed = compare([("hf", hf), ("fastft", ours)], batches, device, sz["rounds"])
    try:
        return compare_records(
            "bert_cls", sides, failed, ["hf", "fastft"], "hf", shape, batches, flops, peaks, device, note
        )
    finally:
        sides = None
        free_memory(device)


# --------------------------------------------------------------------------------------------
# (b) GPT-2-small causal LM with LoRA r=16
# --------------------------------------------------------------------------------------------


def _build_gpt2(sz: dict, device: torch.device):
    from transformers import AutoModelForCausalLM, GPT2Config

    cfg = GPT2Config(vocab_size=50257, attn_implementation="sdpa", **sz["config"])
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).to(device).train(), cfg


def _gpt2_batches(sz: dict, device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(sz["n_batches"]):
        ids = torch.randint(0, 50257, (sz["batch"], sz["seq"]), generator=g).to(device)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def bench_gpt2_lora(device: torch.device, quick: bool, peaks: dict) -> list[dict]:
    sz = gpt2_sizes(device, quick)
    batches = _gpt2_batches(sz, device)
    lens = [sz["seq"]] * (sz["batch"] * len(batches))
    shape = {"model": sz["label"], "B": sz["batch"], "S": sz["seq"], "r": 16}
    note = (
        f"gpt2_lora: random-init {sz['label']} ({sz['config']}, vocab 50257), LoRA r=16 alpha=32 on "
        f"{'/'.join(GPT2_LORA_TARGETS)}, packed blocks of {sz['seq']} tokens"
    )
    lr = 2e-4
    cfg_holder: dict = {}

    def hf_peft():
        import peft

        model, cfg_holder["cfg"] = _build_gpt2(sz, device)
        pcfg = peft.LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules=GPT2_LORA_TARGETS,
            fan_in_fan_out=True,
            task_type="CAUSAL_LM",
        )
        with _quiet_warnings():
            model = peft.get_peft_model(model, pcfg)
        opt = torch_adamw([p for p in model.parameters() if p.requires_grad], device, lr)
        attn = getattr(model.config, "_attn_implementation", None)
        extra = {
            "config": f"PEFT LoRA + attn_implementation={attn} + {optimizer_desc(opt)}",
            "attn_implementation": attn,
            "optimizer": optimizer_desc(opt),
        }
        return model, opt, extra

    def ours():
        model, cfg_holder["cfg"] = _build_gpt2(sz, device)
        return fastft_side(model, dict(r=16, alpha=32, target_modules=GPT2_LORA_TARGETS), device, lr)

    sides, failed = compare([("hf_peft", hf_peft), ("fastft", ours)], batches, device, sz["rounds"])
    try:
        cfg = cfg_holder.get("cfg")

        def flops(model: nn.Module) -> float:
            per_tok = matmul_param_flops_per_token(model)
            return (per_tok * sum(lens) + attention_flops(lens, cfg.n_layer, cfg.n_embd, causal=True)) / len(
                batches
            )

        return compare_records(
            "gpt2_lora",
            sides,
            failed,
            ["hf_peft", "fastft"],
            "hf_peft",
            shape,
            batches,
            flops,
            peaks,
            device,
            note,
        )
    finally:
        sides = None
        free_memory(device)


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------


SCENARIOS: dict[str, Callable[[torch.device, bool, dict], list[dict]]] = {
    "bert_cls": bench_bert,
    "gpt2_lora": bench_gpt2_lora,
    "cpu_train": bench_cpu_train,
}


def run(device: torch.device, quick: bool = False, scenarios: list[str] | None = None) -> list[dict]:
    """All end-to-end scenarios that fit ``device`` (``cpu_train`` only on CPU), or ``scenarios``
    (also settable as ``FASTFT_BENCH_E2E=bert_cls,gpt2_lora``)."""
    peaks = measure_peaks(device, quick=quick)
    env = os.environ.get("FASTFT_BENCH_E2E", "").strip()
    if scenarios is None and env:
        scenarios = [s.strip() for s in env.split(",") if s.strip()]
        unknown = [s for s in scenarios if s not in SCENARIOS]
        if unknown:
            raise ValueError(
                f"FASTFT_BENCH_E2E: unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}"
            )
    names = scenarios or (list(SCENARIOS) if device.type == "cpu" else ["bert_cls", "gpt2_lora"])
    records: list[dict] = []
    for name in names:
        try:
            records += SCENARIOS[name](device, quick, peaks)
        except Exception as e:  # a scenario's setup failed: record it, keep going
            log_failure(f"e2e {name}")
            records.append(not_available(PART, name, "fastft", short_error(e), scenario=name))
        sync(device)
    return records


def _add_args(p) -> None:
    p.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated subset of {','.join(SCENARIOS)} (same as FASTFT_BENCH_E2E)",
    )
    p.add_argument(
        "--train-steps",
        default=None,
        help="cpu_train length: 'epoch' (default; --quick: 12) or a step count "
        "(same as FASTFT_BENCH_TRAIN_STEPS)",
    )


def _apply_args(args) -> None:
    if args.scenarios:
        os.environ["FASTFT_BENCH_E2E"] = args.scenarios
    if args.train_steps:
        os.environ["FASTFT_BENCH_TRAIN_STEPS"] = args.train_steps
    try:  # a bad value fails here with one line and exit 2, before any model is built
        cpu_train_steps(False)
        unknown = [s for s in os.environ.get("FASTFT_BENCH_E2E", "").split(",") if s and s not in SCENARIOS]
        if unknown:
            raise ValueError(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    except ValueError as e:
        print(f"python -m bench.bench_e2e: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    main_for(run, PART, argv, add_args=_add_args, apply_args=_apply_args)


if __name__ == "__main__":
    main()
