"""Attention benchmark: fastft's kernel against every available torch SDPA backend.

For each shape, three modes: ``fwd``, ``bwd`` (backward only, from a retained graph) and ``fwd+bwd``.
FLOPs: forward 4·B·H·S²·D (halved for causal), backward 2.5x the forward. For padded real-length
batches the FLOPs are the *useful* ones, 4·H·D·Σ len_i² (the same number for every impl, so TFLOP/s
compare like times); the % of peak is against the bf16 GEMM throughput measured by
``bench.common.measure_peaks``.

Shapes (CUDA, bf16): BERT-base H=12, D=64 at S=128 (B=64) and S=512 (B=16), dense and padded with
IMDB-like lengths; GPT-2 H=12, D=64, S=1024 causal (B=8); and a real-length batch (B=32, padded to 512)
whose lengths are drawn from a log-normal fitted to IMDB review lengths (median 230 tokens, sigma 0.75,
clipped to [16, 512]) -- plus, when the data is installed, real Rotten Tomatoes token lengths padded to
the batch maximum. Head dim 128 (H=12, D=128: the register-pressure case of the backward kernels) at
S=512 dense and S=1024 causal, and attention dropout p=0.1 (BERT's training setting) at S=512 dense and
padded. Impls: ``fastft`` (padded kernel with the (B, S) mask), ``fastft_varlen`` (packed
real tokens; ``fastft_varlen+unpad`` includes packing q/k/v and re-padding the output),
``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn`` / ``sdpa_math`` (torch SDPA pinned to one backend
via ``torch.nn.attention.sdpa_kernel``; flash cannot take a padding mask). Every row gets
``speedup_vs_<baseline>`` and ``speedup_vs_best_sdpa``.

On CPU there is no Triton kernel (the interpreter is a correctness tool, not a benchmark): fastft
rows then measure fastft's torch reference path and say so in ``path``; shapes are shrunk.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Any

import torch

import fastft
from bench.cli import main_for
from bench.common import bench_fn, fwd_bwd_modes, measure_peaks, peak_memory
from bench.records import add_ratios, make_record, not_available
from fastft.functional import scaled_dot_product_attention, unpad_input, varlen_attention
from fastft.ops.attention import pad_input

PART = "attention"
SDPA_IMPLS = ("sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa_math")


def _sdpa_backend(impl: str):
    from torch.nn.attention import SDPBackend

    return {
        "sdpa_flash": SDPBackend.FLASH_ATTENTION,
        "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa_math": SDPBackend.MATH,
    }[impl]


def imdb_like_lengths(n: int, max_len: int, seed: int = 0) -> list[int]:
    """Log-normal review lengths fitted to IMDB (median 230 tokens, sigma 0.75), clipped to [16, max_len]."""
    rng = random.Random(seed)
    return [int(min(max_len, max(16, round(rng.lognormvariate(math.log(230), 0.75))))) for _ in range(n)]


def rotten_tomatoes_lengths(n: int, seed: int = 0) -> list[int] | None:
    """Real Rotten Tomatoes token lengths (sampled), via the e2e bench's loader; None if data is missing."""
    try:
        from bench.e2e_data import rotten_tomatoes_lengths as rt
    except Exception:
        return None
    real = rt()
    if not real:
        return None
    rng = random.Random(seed)
    return [rng.choice(real) for _ in range(n)]


def _shapes(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    cuda = device.type == "cuda"
    if cuda and not quick:
        base = [
            dict(label="bert-base-S128", B=64, S=128, causal=False, lengths=None),
            dict(label="vit-b16-S197", B=64, S=197, causal=False, lengths=None),  # 14x14 patches + CLS
            dict(label="bert-base-S128-padded", B=64, S=128, causal=False, lengths="imdb"),
            dict(label="bert-base-S512", B=16, S=512, causal=False, lengths=None),
            dict(label="bert-base-S512-padded", B=16, S=512, causal=False, lengths="imdb"),
            dict(label="gpt2-S1024-causal", B=8, S=1024, causal=True, lengths=None),
            dict(label="real-imdb-B32-S512", B=32, S=512, causal=False, lengths="imdb", varlen=True),
            dict(label="real-rt-B128", B=128, S=None, causal=False, lengths="rt", varlen=True),
            dict(label="d128-S512", B=16, S=512, D=128, causal=False, lengths=None),
            dict(label="d128-S1024-causal", B=8, S=1024, D=128, causal=True, lengths=None),
            dict(label="bert-base-S512-dropout", B=16, S=512, causal=False, lengths=None, dropout=0.1),
            dict(
                label="bert-base-S512-padded-dropout", B=16, S=512, causal=False, lengths="imdb", dropout=0.1
            ),
        ]
    elif cuda:
        base = [
            dict(label="bert-base-S128", B=16, S=128, causal=False, lengths=None),
            dict(label="vit-b16-S197", B=16, S=197, causal=False, lengths=None),
            dict(label="gpt2-S1024-causal", B=2, S=1024, causal=True, lengths=None),
            dict(label="real-imdb-B8-S512", B=8, S=512, causal=False, lengths="imdb", varlen=True),
            dict(label="d128-S512", B=4, S=512, D=128, causal=False, lengths=None),
            dict(label="bert-base-S512-dropout", B=4, S=512, causal=False, lengths=None, dropout=0.1),
        ]
    else:  # CPU: the torch paths only, small enough for minutes
        base = [
            dict(label="bert-base-S128", B=4 if not quick else 2, S=128, causal=False, lengths=None),
            dict(label="vit-b16-S197", B=2 if not quick else 1, S=197, causal=False, lengths=None),
            dict(
                label=f"gpt2-S{256 if not quick else 128}-causal",
                B=2,
                S=256 if not quick else 128,
                causal=True,
                lengths=None,
            ),
            dict(
                label="real-imdb-B8-S512",
                B=8 if not quick else 2,
                S=512,
                causal=False,
                lengths="imdb",
                varlen=True,
            ),
            dict(label="d128-S128", B=2 if not quick else 1, S=128, D=128, causal=False, lengths=None),
            dict(
                label="bert-base-S128-dropout",
                B=2 if not quick else 1,
                S=128,
                causal=False,
                lengths=None,
                dropout=0.1,
            ),
        ]
    for s in base:
        s.setdefault("H", 12)
        s.setdefault("D", 64)
        s.setdefault("varlen", False)
        s.setdefault("dropout", 0.0)
    return base


def _lengths(shape: dict[str, Any]) -> list[int] | None:
    if shape["lengths"] == "imdb":
        return imdb_like_lengths(shape["B"], shape["S"])
    if shape["lengths"] == "rt":
        lens = rotten_tomatoes_lengths(shape["B"])
        if lens is None:
            return None
        shape["S"] = max(lens)
        return lens
    return None


def run(device: torch.device, quick: bool = False) -> list[dict[str, Any]]:
    device = torch.device(device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    peaks = measure_peaks(device, quick=quick)
    records: list[dict[str, Any]] = []
    g = torch.Generator(device="cpu").manual_seed(0)
    for shape in _shapes(device, quick):
        lens = _lengths(shape)
        if shape["lengths"] == "rt" and lens is None:
            records.append(
                not_available(PART, shape["label"], "all", "Rotten Tomatoes data/tokenizer not installed")
            )
            continue
        B, H, S, D, causal = shape["B"], shape["H"], shape["S"], shape["D"], shape["causal"]
        mask = None
        if lens is not None:
            mask = (torch.arange(S)[None, :] < torch.tensor(lens)[:, None]).to(device)
            fwd_flops = 4.0 * H * D * sum(n * n for n in lens)
        else:
            fwd_flops = 4.0 * B * H * S * S * D
        if causal:
            fwd_flops /= 2
        flops = {"fwd": fwd_flops, "bwd": 2.5 * fwd_flops, "fwd+bwd": 3.5 * fwd_flops}
        q, k, v, do = (
            torch.randn(B, S, H, D, generator=g).to(device, dtype).transpose(1, 2) for _ in range(4)
        )
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        rec_shape = {"B": B, "H": H, "S": S, "D": D, "causal": causal}
        if shape["dropout"]:
            rec_shape["dropout_p"] = shape["dropout"]
        if lens is not None:
            rec_shape["lengths"] = shape["lengths"]
            rec_shape["mean_len"] = round(sum(lens) / len(lens), 1)
            rec_shape["pad_frac"] = round(1 - sum(lens) / (B * S), 3)
        impls = _impls(q, k, v, do, mask, causal, shape["varlen"], cuda, shape["dropout"])
        for impl, make in impls.items():
            if isinstance(make, str):
                records.append(not_available(PART, f"{shape['label']}", impl, make, shape=rec_shape))
                continue
            try:
                with fastft.backend("auto"):
                    fwd, leaves, dout, path = make()
                    modes = fwd_bwd_modes(fwd, leaves, dout)
                    for mode, fn in modes.items():
                        stats = bench_fn(fn, device=device)
                        records.append(
                            make_record(
                                PART,
                                f"{shape['label']}-{mode}",
                                impl,
                                rec_shape,
                                dtype,
                                stats,
                                peak_memory(fn, device),
                                flops=flops[mode],
                                device=device,
                                peaks=peaks,
                                path=path,
                                mode=mode,
                            )  # fmt: skip
                        )
            except Exception as e:  # a backend refusing a shape is a result, not a crash
                records.append(
                    not_available(
                        PART, shape["label"], impl, f"{type(e).__name__}: {e}"[:200], shape=rec_shape
                    )
                )
            if cuda:
                torch.cuda.empty_cache()
    add_ratios(records, baselines=SDPA_IMPLS)
    _best_sdpa(records)
    records.extend(run_model(device, quick))
    return records


def run_model(device: torch.device, quick: bool = False) -> list[dict[str, Any]]:
    """A whole BERT encoder, fwd+bwd, on a real-length batch: HF sdpa vs fastft.patch with and without
    model-level unpadding (the blocks run on the real tokens only). Attention-only numbers above miss the
    MLP/LayerNorm work that padding also costs."""
    from transformers import BertConfig, BertModel

    from fastft.patching import attention as attn_patch

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        cfg = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        B, S, label = (8, 512, "bert-base") if quick else (32, 512, "bert-base")
    else:
        cfg = dict(
            hidden_size=384,
            num_hidden_layers=2,
            num_attention_heads=12,
            intermediate_size=1536,
        )
        B, S, label = (2, 512, "minilm-2L") if quick else (4, 512, "minilm-2L")
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, attn_implementation="sdpa", **cfg)  # fmt: skip
    lens = imdb_like_lengths(B, S, seed=1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (B, S), generator=g).to(device)
    mask = (torch.arange(S)[None, :] < torch.tensor(lens)[:, None]).long().to(device)
    shape = {"model": label, "B": B, "S": S, "lengths": "imdb", "mean_len": round(sum(lens) / B, 1),
             "pad_frac": round(1 - sum(lens) / (B * S), 3)}  # fmt: skip
    records = []
    for impl in ("hf_sdpa", "fastft_patch", "fastft_patch_no_unpad"):
        torch.manual_seed(0)
        model = BertModel(config).to(device, dtype).train()
        if impl != "hf_sdpa":
            saved = attn_patch.UNPAD_MODEL
            attn_patch.UNPAD_MODEL = impl == "fastft_patch"
            try:
                fastft.patch(model, loss=False)
            finally:
                attn_patch.UNPAD_MODEL = saved

        def step(model=model):
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
            (out.float() * mask[..., None]).sum().backward()

        try:
            with fastft.backend("auto"):
                stats = bench_fn(step, device=device)
                mem = peak_memory(step, device)
            path = fastft.report().get("attention") if impl != "hf_sdpa" else "sdpa"
            records.append(make_record(PART, f"{label}-encoder-fwd+bwd", impl, shape, dtype, stats, mem,
                                       device=device, path=path, mode="fwd+bwd"))  # fmt: skip
        except Exception as e:
            records.append(
                not_available(PART, f"{label}-encoder-fwd+bwd", impl, f"{type(e).__name__}: {e}"[:200])
            )
        del model
        if cuda:
            torch.cuda.empty_cache()
    return add_ratios(records, baselines=("hf_sdpa",))


def _impls(q, k, v, do, mask, causal, varlen, cuda, dropout_p: float = 0.0) -> dict[str, Any]:
    """impl -> zero-arg maker returning (fwd closure, grad leaves, dout, path), or a reason string.

    With ``dropout_p`` every impl drops attention probabilities at that rate (each with its own RNG,
    so outputs differ; the work is the same).
    """
    p = dropout_p
    out: dict[str, Any] = {}
    path = "triton" if cuda else "torch reference (no Triton kernel on CPU)"

    def fastft_padded():
        f = lambda: scaled_dot_product_attention(q, k, v, attention_mask=mask, is_causal=causal, dropout_p=p)
        return f, [q, k, v], do, path

    out["fastft"] = fastft_padded
    if varlen and mask is not None:
        b, h, s, d = q.shape
        packed = [unpad_input(x.transpose(1, 2), mask) for x in (q, k, v, do)]
        qu, ku, vu, dou = (
            p[0].detach().requires_grad_(x.requires_grad) for p, x in zip(packed, (q, k, v, do))
        )
        _, idx, cu, ms = packed[0]

        def fastft_varlen():
            return (
                (lambda: varlen_attention(qu, ku, vu, cu, ms, is_causal=causal, dropout_p=p)),
                [qu, ku, vu],
                dou.detach(),
                path,
            )

        def fastft_varlen_unpad():
            def f():
                pk = lambda x: x.transpose(1, 2).reshape(b * s, h, d).index_select(0, idx)
                o = varlen_attention(pk(q), pk(k), pk(v), cu, ms, is_causal=causal, dropout_p=p)
                return pad_input(o, idx, b, s).transpose(1, 2)

            return f, [q, k, v], do * mask[:, None, :, None], path

        out["fastft_varlen"] = fastft_varlen
        out["fastft_varlen+unpad"] = fastft_varlen_unpad
    sdpa_mask = None
    if mask is not None:
        sdpa_mask = mask[:, None, None, :]
        if causal:
            sdpa_mask = (
                sdpa_mask & torch.ones(q.shape[2], q.shape[2], dtype=torch.bool, device=q.device).tril()
            )
    for impl in SDPA_IMPLS:
        if impl == "sdpa_flash" and mask is not None:
            out[impl] = "flash SDPA takes no padding mask"
            continue

        def make(impl=impl):
            backend = _sdpa_backend(impl)

            def f():
                from torch.nn.attention import sdpa_kernel

                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(
                        q, k, v, attn_mask=sdpa_mask, is_causal=causal and sdpa_mask is None, dropout_p=p
                    )

            f()  # raises here if the backend cannot run this shape/device
            return f, [q, k, v], do, impl

        out[impl] = make
    return out


def _best_sdpa(records: list[dict[str, Any]]) -> None:
    """``speedup_vs_best_sdpa`` = fastest measured SDPA backend's time / this time, per (name, dtype)."""
    best: dict[tuple, float] = {}
    for r in records:
        if r["impl"] in SDPA_IMPLS and r.get("median_ms"):
            key = (r["name"], r["dtype"])
            best[key] = min(best.get(key, math.inf), r["median_ms"])
    for r in records:
        t = r.get("median_ms")
        b = best.get((r["name"], r["dtype"]))
        if t and b and r["impl"] not in SDPA_IMPLS:
            r["speedup_vs_best_sdpa"] = b / t


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        main_for(run, PART)


if __name__ == "__main__":
    main()
