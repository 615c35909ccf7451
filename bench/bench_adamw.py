"""One optimizer step (global grad-norm clipping + AdamW) over BERT-base's real parameter shapes.

Implementations, all on the same params/grads (fp32, 109.5M elements in 201 tensors):
  * ``fastft``        -- ``fastft.optim.FusedAdamW(max_grad_norm=...)``: one fused op;
  * ``fastft_torch``  -- the same optimizer forced onto its torch fallback (``torch._fused_adamw_`` fed a
    foreach norm and a device-side clip coefficient: what runs when ``fastft._C`` lacks CUDA kernels);
  * ``torch_fused``   -- ``clip_grad_norm_(foreach=True)`` + ``torch.optim.AdamW(fused=True)``;
  * ``torch_foreach`` -- ``clip_grad_norm_(foreach=True)`` + ``torch.optim.AdamW(foreach=True)``.

Memory-traffic floor of one step (what any implementation must move): the update reads p, g, m, v
and writes p, m, v; the global norm needs one more read of g before the first update. That is
2*sizeof(p) + 2*sizeof(g) + 4*4 (fp32 m, v read + write) = 32 B/element for fp32 params. ``gbps_floor``
is that floor divided by the measured time for every impl (so they compare; torch really moves
40 B/element: its clip also reads and writes g). Timing: the impls run interleaved in rounds (so background load hits
them alike), every call timed on its own (device-synchronised), warm-up excluded, median reported.
The clip threshold sits just under the grad norm so clipping is active without torch's in-place
clip shrinking the grads toward denormals over hundreds of calls.
"""

from __future__ import annotations

import gc

import torch

from bench.cli import main_for
from bench.common import measure_peaks, summarize, sync, time_calls
from bench.records import add_ratios, make_record

PART = "adamw"
BASELINES = ("torch_fused", "torch_foreach")


def bert_base_shapes(
    vocab: int = 30522,
    hidden: int = 768,
    layers: int = 12,
    inter: int = 3072,
    max_pos: int = 512,
    type_vocab: int = 2,
    num_labels: int = 2,
) -> list[tuple[int, ...]]:
    """Parameter shapes of ``BertForSequenceClassification`` (bert-base-uncased), in module order."""
    h = hidden
    shapes: list[tuple[int, ...]] = [(vocab, h), (max_pos, h), (type_vocab, h), (h,), (h,)]
    for _ in range(layers):
        shapes += [(h, h), (h,)] * 4  # query, key, value, attention.output.dense
        shapes += [(h,), (h,)]  # attention.output.LayerNorm
        shapes += [(inter, h), (inter,), (h, inter), (h,)]  # intermediate, output.dense
        shapes += [(h,), (h,)]  # output.LayerNorm
    shapes += [(h, h), (h,), (num_labels, h), (num_labels,)]  # pooler, classifier
    return shapes


def _clip_step(params, opt, max_norm):
    def fn():
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        opt.step()

    return fn


def run(device: torch.device, quick: bool = False) -> list[dict]:
    from fastft.optim import FusedAdamW

    device = torch.device(device)
    shapes = bert_base_shapes() if not quick else bert_base_shapes(vocab=2000, layers=2)
    dtype = torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device))
        p.grad = (torch.randn(s, generator=gen) * 1e-3).to(device)
        params.append(p)
    numel = sum(p.numel() for p in params)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])).item()
    max_norm = 0.9999 * norm
    esz = params[0].element_size()
    floor_bytes = numel * (4 * esz + 4 * 4)  # p: r+w, g: 2 reads (norm, update), fp32 m and v: r+w

    impls = {
        "fastft": (lambda o: o.step, FusedAdamW(params, lr=1e-4, weight_decay=0.01, max_grad_norm=max_norm)),
        "fastft_torch": (
            _forced_fallback,
            FusedAdamW(params, lr=1e-4, weight_decay=0.01, max_grad_norm=max_norm),
        ),
        "torch_fused": (None, torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True)),
        "torch_foreach": (None, torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, foreach=True)),
    }
    fns = {k: (mk(o) if mk else _clip_step(params, o, max_norm)) for k, (mk, o) in impls.items()}
    peaks = measure_peaks(device, quick=quick)
    records = []
    threads0 = torch.get_num_threads()
    # CPU: also at one thread -- on a shared machine, OpenMP barriers of a multi-threaded run stall
    # whenever a thread is descheduled (torch's per-tensor kernels hit hundreds of barriers per step),
    # so the one-thread ratio is the robust one there; on a quiet machine both are meaningful.
    thread_counts = [threads0] + ([1] if device.type == "cpu" and threads0 > 1 else [])
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for fn in fns.values():  # warm-up: state allocation, first-touch page faults, thread pools
                for _ in range(2):
                    fn()
            sync(device)
            rounds, per_round = (3, 1) if quick else (5, 2)
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(rounds):  # interleaved so that background load hits every impl alike
                for k, fn in fns.items():
                    times[k] += time_calls(fn, per_round, device)
            name = "bert_base_step" if threads == threads0 else f"bert_base_step_{threads}thread"
            for k in fns:
                stats = summarize(times[k])
                rec = make_record(
                    PART,
                    name,
                    k,
                    {"params": numel, "tensors": len(shapes)},
                    dtype,
                    stats,
                    None,
                    nbytes=floor_bytes,
                    device=device,
                    peaks=peaks,
                    gbps_floor=floor_bytes / (stats["median_ms"] * 1e-3) / 1e9,
                    threads=threads,
                )
                records.append(rec)
    finally:
        torch.set_num_threads(threads0)
    del impls, fns
    gc.collect()
    return add_ratios(records, baselines=BASELINES)


def _forced_fallback(opt):
    """``opt.step`` with FusedAdamW's extension switched off for the call."""
    from fastft.optim import fused_adamw as fa

    def step():
        old, fa.USE_EXTENSION = fa.USE_EXTENSION, False
        try:
            opt.step()
        finally:
            fa.USE_EXTENSION = old

    return step


def main() -> None:
    main_for(run, PART)


if __name__ == "__main__":
    main()
