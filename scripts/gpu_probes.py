#!/usr/bin/env python
"""Probes for the GPU risks found in review; one JSON object per line on stdout.

    python scripts/gpu_probes.py                 # on the GPU machine (called by scripts/gpu_check.sh)
    python scripts/gpu_probes.py --only adamw,ce # some probes
    python scripts/gpu_probes.py --dry-run       # CPU, torch paths, tiny shapes: checks the probes run

Every probe ends with a status line ``{"probe": NAME, "status": "ok"|"FAIL"|"skip", "s": SECONDS}``;
a FAIL carries the error and the traceback's tail, and the next probe still runs. Numbers are
observations (paths taken, variant counts, errors, timings), not pass/fail tests: the tests are in
``pytest -m gpu``. Exit status: 0, or 1 if any probe FAILed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

PROBES: dict[str, Callable[[Ctx], None]] = {}


class Ctx:
    """Device, size choice and emission for one run."""

    def __init__(self, dry: bool) -> None:
        self.dry = dry
        self.dev = torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")
        self.cuda = self.dev.type == "cuda"
        self.failed = 0

    def size(self, gpu, cpu):
        return cpu if self.dry or not self.cuda else gpu

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def _clean(x):
    """JSON-safe: non-finite floats as strings, tensors as lists/scalars, the rest through str()."""
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _clean(x.detach().cpu().tolist()) if x.numel() <= 16 else f"tensor{tuple(x.shape)}"
    if x is None or isinstance(x, bool | int | str):
        return x
    return str(x)


def emit(probe: str, **kw) -> None:
    print(json.dumps(_clean({"probe": probe, **kw}), allow_nan=False), flush=True)


def probe(name: str):
    def deco(fn):
        PROBES[name] = fn
        return fn

    return deco


def timed(ctx: Ctx, fn: Callable[[], object], n: int = 10, warm: int = 2) -> float:
    """Median milliseconds of ``fn`` (CUDA events on a GPU, perf_counter on CPU)."""
    n, warm = (2, 1) if ctx.dry else (n, warm)
    for _ in range(warm):
        fn()
    ctx.sync()
    ts = []
    for _ in range(n):
        if ctx.cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            ts.append(s.elapsed_time(e))
        else:
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[len(ts) // 2]


def host_syncs(ctx: Ctx, fn: Callable[[], object]) -> dict | None:
    """Run ``fn`` under torch.cuda.set_sync_debug_mode("warn"); -> {count, where} (None on CPU)."""
    if not ctx.cuda:
        fn()
        return None
    ctx.sync()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    hits = [w for w in caught if "synchroniz" in str(w.message).lower()]
    where = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in hits})
    return {"count": len(hits), "where": where[:20]}


def n_compiled(kernel) -> int | None:
    """Compiled variants held by a (possibly autotuned) triton kernel; None where not observable."""
    fn = getattr(kernel, "fn", kernel)
    caches = getattr(fn, "device_caches", None)
    if not caches:
        return None
    try:
        return sum(len(v[0]) for v in caches.values())
    except Exception:
        return None


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def bf16(ctx: Ctx) -> torch.dtype:
    return torch.bfloat16 if ctx.cuda else torch.float32


# ------------------------------------------------------------------------------------------- env
@probe("env")
def p_env(ctx: Ctx) -> None:
    import fastft
    from fastft import _ext

    info = dict(python=sys.version.split()[0], torch=torch.__version__, torch_cuda=torch.version.cuda)
    for mod in ("triton", "transformers", "peft"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:
            info[mod] = f"missing ({type(e).__name__})"
    if ctx.cuda:
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name, cc=f"{p.major}.{p.minor}", sms=p.multi_processor_count, mem_gb=p.total_memory / 2**30
        )
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    info.update(
        ext_built=_ext.available(),
        ext_cuda_kernels=_ext.available() and has("fastft::fused_adamw_", "CUDA"),
        allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        allow_tf32_cudnn=torch.backends.cudnn.allow_tf32,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        backend=fastft.current_backend(),
        triton_interpret=os.environ.get("TRITON_INTERPRET"),
    )
    emit("env", **info)


# ----------------------------------------------------------------------------------------- adamw
def _adamw_lists(ctx: Ctx, sizes: list[int], dtype: torch.dtype, seed: int) -> dict:
    g = torch.Generator(device=ctx.dev).manual_seed(seed)
    n = len(sizes)

    def rn(s, scale=1.0):
        return torch.randn(s, generator=g, device=ctx.dev) * scale

    return dict(
        params=[rn(s).to(dtype) for s in sizes],
        grads=[rn(s, 0.01).to(dtype) for s in sizes],
        exp_avgs=[rn(s, 1e-3) for s in sizes],
        exp_avg_sqs=[rn(s, 1e-3).square() for s in sizes],
        state_steps=[torch.full((), 3.0, device=ctx.dev) for _ in sizes],
        lrs=[1e-3] * n,
        beta1s=[0.9] * n,
        beta2s=[0.999] * n,
        epss=[1e-8] * n,
        weight_decays=[0.01] * n,
    )


def _ext_for(ctx: Ctx) -> bool:
    from fastft import _ext

    key = "CUDA" if ctx.cuda else "CPU"
    return _ext.available() and torch._C._dispatch_has_kernel_for_dispatch_key("fastft::fused_adamw_", key)


@probe("adamw")
def p_adamw(ctx: Ctx) -> None:
    """C++/CUDA op vs the torch fallback at scale (>96 tensors, >2048 blocks, one >134M elements)."""
    from fastft.optim import _reference

    have = _ext_for(ctx)
    big = ctx.size(2048 * 65536 + 12345, 70001)
    sizes = [1, 7, 768, 65535, 65536, 65537, 196613] * ctx.size(15, 2) + [big]
    for dt in (torch.float32, torch.bfloat16):
        a = _adamw_lists(ctx, sizes, dt, seed=1)
        b = {k: [t.clone() for t in v] if isinstance(v[0], torch.Tensor) else v for k, v in a.items()}
        n_ref, f_ref = _reference.fused_adamw_(**b, max_norm=1.0)
        row = dict(dtype=str(dt), tensors=len(sizes), norm_fallback=n_ref, found_fallback=f_ref)
        if have:
            n_op, f_op = torch.ops.fastft.fused_adamw_(**a, max_norm=1.0)
            errs = [rel_err(x, y) for k in ("params", "exp_avgs", "exp_avg_sqs") for x, y in zip(a[k], b[k])]
            row.update(norm_op=n_op, found_op=f_op, max_rel_err_op_vs_fallback=max(errs))
        emit("adamw", **row)
        del a, b
    _adamw_syncs_and_speed(ctx, have)


def _bert_base_shapes(ctx: Ctx) -> list[tuple[int, ...]]:
    if ctx.dry or not ctx.cuda:
        return [(100, 8), (8,), (8, 8), (32, 8), (8, 32)]
    layer = [(768, 768), (768,)] * 4 + [(3072, 768), (3072,), (768, 3072), (768,)] + [(768,)] * 4
    return [(30522, 768), (512, 768), (2, 768), (768,), (768,)] + layer * 12


def _adamw_syncs_and_speed(ctx: Ctx, have_ext: bool) -> None:
    from fastft.optim import FusedAdamW
    from fastft.optim import fused_adamw as fa

    shapes = _bert_base_shapes(ctx)
    numel = sum(math.prod(s) for s in shapes)
    for path in ("op", "fallback") if have_ext else ("fallback",):
        fa.USE_EXTENSION = path == "op"
        try:
            ps = [torch.nn.Parameter(torch.randn(*s, device=ctx.dev)) for s in shapes]
            for p in ps:
                p.grad = torch.randn_like(p)
            opt = FusedAdamW(ps, lr=1e-5, max_grad_norm=1.0)
            opt.step()
            syncs = host_syncs(ctx, opt.step)
            ms = timed(ctx, opt.step)
            # bytes: grads read twice (norm + update), p/m/v read and written, fp32
            emit(
                "adamw", path=path, params=numel, host_syncs_per_step=syncs, ms=ms, GBps=32 * numel / ms / 1e6
            )
        finally:
            fa.USE_EXTENSION = True
    ps = [torch.nn.Parameter(torch.randn(*s, device=ctx.dev)) for s in shapes]
    for p in ps:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(ps, lr=1e-5, fused=True)

    def torch_step():
        torch.nn.utils.clip_grad_norm_(ps, 1.0, foreach=True)
        opt.step()

    ms = timed(ctx, torch_step)
    emit(
        "adamw",
        path="torch_fused_plus_clip",
        params=numel,
        ms=ms,
        host_syncs_per_step=host_syncs(ctx, torch_step),
    )


# ------------------------------------------------------------------------------------- attention
def _qkv(ctx: Ctx, B: int, H: int, S: int, D: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device=ctx.dev).manual_seed(seed)
    return [torch.randn(B, H, S, D, generator=g, device=ctx.dev).to(dtype) for _ in range(3)]


def _lengths_mask(ctx: Ctx, B: int, S: int) -> torch.Tensor:
    lens = torch.linspace(S // 3, S, B, device=ctx.dev).long()
    return torch.arange(S, device=ctx.dev)[None] < lens[:, None]


@probe("attention_fp32")
def p_attention_fp32(ctx: Ctx) -> None:
    """fp32 inputs: which path (TF32 kernel or SDPA) is taken with allow_tf32 off/on, and its error."""
    import fastft
    from fastft.functional import scaled_dot_product_attention
    from fastft.ops.attention import reference_attention

    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for D in (64, 128):
            q, k, v = _qkv(ctx, 2, 4, ctx.size(256, 16), D, torch.float32)
            mask = _lengths_mask(ctx, 2, q.shape[2])
            ref = reference_attention(q.double(), k.double(), v.double(), attention_mask=mask)
            for tf32 in (False, True):
                torch.backends.cuda.matmul.allow_tf32 = tf32
                out = scaled_dot_product_attention(q, k, v, attention_mask=mask)
                path = fastft.report().get("attention") or fastft.report()
                emit("attention_fp32", D=D, allow_tf32=tf32, path=path, rel_err=rel_err(out, ref))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@probe("attention_variants")
def p_attention_variants(ctx: Ctx) -> None:
    """Compiled variants of the attention kernels across new seeds and new batch shapes."""
    import fastft.kernels.attention as ka

    kernels = {
        n: getattr(ka, n, None) for n in dir(ka) if n.startswith("_attention") and n.endswith("_kernel")
    }
    before = {n: n_compiled(k) for n, k in kernels.items()}
    if not ctx.cuda:  # the interpreter keeps no compile cache; the counting itself was exercised above
        emit("attention_variants", note="skipped on CPU", counts=before)
        raise _Skip("needs a GPU")
    q, k, v = _qkv(ctx, 4, 12, 256, 64, torch.bfloat16)
    ka.attention_forward(q, k, v, dropout_p=0.1, seed=1)
    torch.cuda.synchronize()
    warm = {n: n_compiled(kk) for n, kk in kernels.items()}
    gen = torch.Generator().manual_seed(0)
    for _ in range(24):  # random 31-bit seeds: odd/even/multiple-of-16 all occur
        ka.attention_forward(
            q, k, v, dropout_p=0.1, seed=int(torch.randint(1, 2**31 - 1, (1,), generator=gen))
        )
    torch.cuda.synchronize()
    seeds = {n: n_compiled(kk) for n, kk in kernels.items()}
    for B, S in ((3, 200), (5, 256), (8, 97), (2, 512)):
        qq, kk2, vv = _qkv(ctx, B, 12, S, 64, torch.bfloat16)
        mask = _lengths_mask(ctx, B, S)
        ka.attention_forward(qq, kk2, vv, key_padding_mask=mask, dropout_p=0.1, seed=B * 7919 + S)
    torch.cuda.synchronize()
    shapes = {n: n_compiled(kk) for n, kk in kernels.items()}
    emit("attention_variants", before=before, after_first=warm, after_24_seeds=seeds, after_4_shapes=shapes)


@probe("attention_big_grid")
def p_attention_big_grid(ctx: Ctx) -> None:
    """batch x heads > 65535 (CUDA caps grid axes 1-2 at 65535): must run, and match SDPA."""
    import torch.nn.functional as F

    import fastft
    from fastft.functional import scaled_dot_product_attention

    B, H = ctx.size((5462, 12), (3, 2))
    q, k, v = _qkv(ctx, B, H, 16, 64, bf16(ctx))
    try:
        out = scaled_dot_product_attention(q, k, v)
    except Exception as e:
        emit("attention_big_grid", BH=B * H, ran=False, error=f"{type(e).__name__}: {e}"[:300])
        return
    ref = F.scaled_dot_product_attention(q[-4:].float(), k[-4:].float(), v[-4:].float())
    emit(
        "attention_big_grid",
        BH=B * H,
        ran=True,
        path=fastft.report().get("attention"),
        rel_err=rel_err(out[-4:], ref),
    )


@probe("attention_d128")
def p_attention_d128(ctx: Ctx) -> None:
    """D=128 and D=64, padded / causal / dropout, fwd+bwd: error vs SDPA, speed, autotune picks."""
    import torch.nn.functional as F

    import fastft
    import fastft.kernels.attention as ka
    from fastft.functional import scaled_dot_product_attention

    B, H, S = ctx.size((8, 12, 512), (2, 2, 32))
    dt = bf16(ctx)
    for D in (128, 64):
        for case in ("padded", "causal", "dropout"):
            q, k, v = (t.requires_grad_() for t in _qkv(ctx, B, H, S, D, dt))
            mask = _lengths_mask(ctx, B, S) if case != "causal" else None
            kw = dict(
                attention_mask=mask, is_causal=case == "causal", dropout_p=0.1 if case == "dropout" else 0.0
            )
            do = torch.randn_like(q)

            def ours(q=q, k=k, v=v, kw=kw, do=do):
                return torch.autograd.grad(scaled_dot_product_attention(q, k, v, **kw), (q, k, v), do)

            am = None if mask is None else mask[:, None, None, :]
            ref_kw = dict(attn_mask=am, is_causal=kw["is_causal"])

            def sdpa(q=q, k=k, v=v, ref_kw=ref_kw, do=do):
                return torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, **ref_kw), (q, k, v), do)

            row = dict(D=D, case=case, ms=timed(ctx, ours, n=5), sdpa_ms=timed(ctx, sdpa, n=5))
            if case != "dropout":
                row["rel_err_vs_sdpa"] = [rel_err(a, b) for a, b in zip(ours(), sdpa())]  # dq, dk, dv
            row["path"] = fastft.report().get("attention")
            emit("attention_d128", **row)
    best = {
        n: str(getattr(getattr(ka, n, None), "best_config", None)) for n in dir(ka) if n.endswith("_kernel")
    }
    emit("attention_d128", autotune_best=best)


# ---------------------------------------------------------------------------------------- losses
def _module_queries(mod, pattern: str) -> dict:
    """Values of ``mod``'s attributes matching ``pattern``; zero-argument callables are called."""
    out = {}
    for name in dir(mod):
        if not re.search(pattern, name, re.I):
            continue
        obj = getattr(mod, name)
        if inspect.isclass(obj) or inspect.ismodule(obj):
            continue
        if callable(obj):
            try:
                params = inspect.signature(obj).parameters.values()
            except (TypeError, ValueError):
                continue
            if any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
                continue
            try:
                obj = obj()
            except Exception as e:
                obj = f"raised {type(e).__name__}: {e}"[:200]
        out[name] = obj
    return out


@probe("ce")
def p_ce(ctx: Ctx) -> None:
    """CE and KD at V = 50257 (GPT-2), 30522 (BERT), 50304 (a multiple of 16): path, config, bandwidth."""
    import fastft
    import fastft.kernels.cross_entropy as kc
    from fastft.functional import cross_entropy, kd_loss

    N = ctx.size(16384, 8)
    for V in ctx.size((50257, 50304, 30522), (101, 96)):
        x = torch.randn(N, V, device=ctx.dev, dtype=bf16(ctx)).requires_grad_()
        t = torch.randint(0, V, (N,), device=ctx.dev)
        teacher = torch.randn(N, V, device=ctx.dev, dtype=x.dtype)
        cfg = _module_queries(kc, r"vector|tail|path")
        config = getattr(kc, "_config", None)  # (BLOCK, warps) the CE kernel picks for this V
        if callable(config):
            try:
                cfg["_config(V, elem_size)"] = config(V, x.element_size())
            except Exception as e:
                cfg["_config(V, elem_size)"] = f"raised {type(e).__name__}: {e}"[:200]
        ce_ms = timed(ctx, lambda x=x, t=t: torch.autograd.grad(cross_entropy(x, t), x))
        kd_ms = timed(
            ctx,
            lambda x=x, t=t, te=teacher: torch.autograd.grad(
                kd_loss(x, te, t, temperature=2.0, alpha=0.5), x
            ),
        )
        nbytes = x.numel() * x.element_size()
        emit(
            "ce",
            V=V,
            ce_fwd_bwd_ms=ce_ms,
            ce_GBps=3 * nbytes / ce_ms / 1e6,
            kd_fwd_bwd_ms=kd_ms,
            kd_GBps=4 * nbytes / kd_ms / 1e6,
            path={k: fastft.report().get(k) for k in ("cross_entropy", "kd_loss")},
            kernel_queries=cfg,
        )


@probe("linear_ce")
def p_linear_ce(ctx: Ctx) -> None:
    """Linear-CE weight grad: which accumulation ran (fp32 addmm.dtype_out or a fallback) and its error."""
    from fastft.functional import linear_cross_entropy
    from fastft.ops import _losses_common as oce

    N, Hd, V = ctx.size((4096, 768, 50257), (16, 8, 37))
    g = torch.Generator(device=ctx.dev).manual_seed(0)
    h = torch.randn(N, Hd, generator=g, device=ctx.dev).to(bf16(ctx)).requires_grad_()
    w = (torch.randn(V, Hd, generator=g, device=ctx.dev) * 0.02).to(h.dtype).requires_grad_()
    t = torch.randint(0, V, (N,), device=ctx.dev, generator=g)
    gh, gw = torch.autograd.grad(linear_cross_entropy(h, w, t), (h, w))
    h64, w64 = (x.detach().double().requires_grad_() for x in (h, w))
    rh, rw = torch.autograd.grad(torch.nn.functional.cross_entropy(h64 @ w64.T, t), (h64, w64))
    th, tw = (x.detach().clone().requires_grad_() for x in (h, w))
    tgh, tgw = torch.autograd.grad(torch.nn.functional.cross_entropy(th @ tw.T, t), (th, tw))
    ms = timed(ctx, lambda: torch.autograd.grad(linear_cross_entropy(h, w, t), (h, w)), n=5)
    torch_ms = timed(
        ctx, lambda: torch.autograd.grad(torch.nn.functional.cross_entropy(th @ tw.T, t), (th, tw)), n=5
    )
    emit(
        "linear_ce",
        shape=(N, Hd, V),
        wgrad_rel_err=rel_err(gw, rw),
        torch_wgrad_rel_err=rel_err(tgw, rw),
        hgrad_rel_err=rel_err(gh, rh),
        torch_hgrad_rel_err=rel_err(tgh, rh),
        ms=ms,
        torch_ms=torch_ms,
        queries=_module_queries(oce, r"wgrad|accum|dtype_out|_MM_"),
    )


@probe("lora")
def p_lora(ctx: Ctx) -> None:
    """LoRA linear, fused, with and without dropout: path, error vs torch, speed."""
    import fastft
    from fastft.functional import lora_linear

    M, K, N, r = ctx.size((16384, 768, 2304, 16), (32, 16, 24, 4))
    dt = bf16(ctx)
    x = torch.randn(M, K, device=ctx.dev, dtype=dt, requires_grad=True)
    w = torch.randn(N, K, device=ctx.dev, dtype=dt) * 0.02
    a = (torch.randn(r, K, device=ctx.dev, dtype=dt) * 0.02).requires_grad_()
    b = (torch.randn(N, r, device=ctx.dev, dtype=dt) * 0.02).requires_grad_()
    dy = torch.randn(M, N, device=ctx.dev, dtype=dt)
    for p in (0.0, 0.1):

        def ours(p=p):
            return torch.autograd.grad(lora_linear(x, w, None, a, b, 2.0, dropout_p=p), (x, a, b), dy)

        def ref():
            return torch.autograd.grad(x @ w.t() + 2.0 * (x @ a.t()) @ b.t(), (x, a, b), dy)

        row = dict(shape=(M, K, N, r), dropout=p, ms=timed(ctx, ours), torch_ms=timed(ctx, ref))
        if p == 0.0:
            row["rel_err"] = [rel_err(u, v) for u, v in zip(ours(), ref())]
        emit("lora", **row, path=fastft.report().get("lora_linear"))


# ------------------------------------------------------------------------------ training step
@probe("train_step_syncs")
def p_train_step_syncs(ctx: Ctx) -> None:
    """Host syncs in one patched-BERT training step (bf16 autocast, FusedAdamW), and where they are."""
    from transformers import BertConfig, BertForSequenceClassification

    import fastft
    from fastft.optim import FusedAdamW

    hid, layers, heads, inter = ctx.size((768, 4, 12, 3072), (32, 2, 2, 64))
    cfg = BertConfig(
        vocab_size=ctx.size(30522, 100),
        hidden_size=hid,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).to(ctx.dev)
    fastft.patch(model)
    model.train()
    opt = FusedAdamW(model.parameters(), lr=2e-5, max_grad_norm=1.0)
    B, S = ctx.size((32, 256), (2, 16))
    lens = torch.linspace(S // 4, S, B).long()
    batch = dict(
        input_ids=torch.randint(5, cfg.vocab_size, (B, S)),
        attention_mask=(torch.arange(S)[None] < lens[:, None]).long(),
        labels=torch.randint(0, 2, (B,)),
    )
    batch = {k: v.to(ctx.dev) for k, v in batch.items()}

    def step():
        with torch.autocast(ctx.dev.type, dtype=torch.bfloat16, enabled=ctx.cuda):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()  # autotuning and state creation happen here
    syncs = host_syncs(ctx, step)
    emit("train_step_syncs", host_syncs=syncs, step_ms=timed(ctx, step, n=5), report=fastft.report())


# ------------------------------------------------------------------------------------------ main
class _Skip(Exception):
    pass


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout("probe ran past --probe-timeout")


def run(ctx: Ctx, names: list[str], limit_s: int = 0) -> None:
    """Each probe in turn; one that raises (or outruns ``limit_s``, checked between Python bytecodes)
    is reported as FAIL and the next one runs."""
    use_alarm = limit_s > 0 and hasattr(signal, "SIGALRM")
    if use_alarm:
        signal.signal(signal.SIGALRM, _alarm)
    for name in names:
        t = time.perf_counter()
        try:
            if use_alarm:
                signal.alarm(limit_s)
            PROBES[name](ctx)
            emit(name, status="ok", s=round(time.perf_counter() - t, 2))
        except _Skip as e:
            emit(name, status="skip", reason=str(e), s=round(time.perf_counter() - t, 2))
        except Exception as e:
            ctx.failed += 1
            emit(
                name,
                status="FAIL",
                error=f"{type(e).__name__}: {e}"[:800],
                tb=traceback.format_exc()[-1500:],
                s=round(time.perf_counter() - t, 2),
            )
        finally:
            if use_alarm:
                signal.alarm(0)
            if ctx.cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, torch paths, tiny shapes")
    ap.add_argument("--only", default="", help=f"comma-separated probes (default all: {','.join(PROBES)})")
    ap.add_argument("--list", action="store_true", help="list the probes and exit")
    ap.add_argument("--probe-timeout", type=int, default=60, help="seconds per probe (0: no limit)")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(PROBES))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(PROBES)
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        ap.error(f"unknown probe(s) {', '.join(unknown)}; known: {', '.join(PROBES)}")
    if args.dry_run:
        os.environ.setdefault("FASTFT_BACKEND", "auto")  # CPU tensors take the torch paths on their own
        torch.manual_seed(0)
    ctx = Ctx(dry=args.dry_run)
    run(ctx, names, args.probe_timeout)
    return 1 if ctx.failed else 0


if __name__ == "__main__":
    sys.exit(main())
