"""Compile every autotune config of every kernel for Hopper (sm_90) -- no GPU needed.

The CPU tests run the kernels in Triton's interpreter, which never runs the GPU compiler. Here
triton's own compiler and bundled ptxas build cubins for ``GPUTarget("cuda", 90, 128)`` and read
their resource usage (``cuobjdump -res-usage``): shared memory must fit an H100/H200 block (227 KB =
232,448 B) and the configs kept for bf16/fp16 must not spill (no stack, no local memory).

Arguments mimic a real launch's specialisation (pointers and multiples of 16 get the divisibility hint,
ints equal to 1 become constants, names in ``do_not_specialize`` get neither), at the head dims and
dtypes fastft claims: D = 64 and 128 (attention), fp16/bf16 and fp32-with-TF32.

Run directly for the table: ``python tests/kernels/test_sm90_compile.py [--all]``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

from tests import child_env

SMEM_LIMIT = 232448  # bytes of dynamic shared memory per block on sm_90

_FLOATS = {"qk_scale", "sm_scale", "dropout_p", "eps", "p", "scaling", "scale", "inv_temp", "temp", "alpha"}


def _tools():
    import triton

    base = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return os.path.join(base, "ptxas"), os.path.join(base, "cuobjdump")


def _jit_fn(kern):
    from triton.runtime.jit import JITFunction

    while not isinstance(kern, JITFunction):
        kern = kern.fn
    return kern


def _compile(kern, ints: dict, ptrs: dict, const: dict, warps: int, stages: int):
    """triton.compile one specialisation; ints/ptrs map argument names to values / pointee types."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _jit_fn(kern)
    sig, cx, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        name = p.name
        if p.is_constexpr:
            if name not in const:
                raise KeyError(f"{fn.__name__}: no value for constexpr {name}")
            sig[name], cx[(i,)] = "constexpr", const[name]
        elif name in ptrs:
            sig[name] = "*" + ptrs[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in _FLOATS:
            sig[name] = "fp32"
        else:
            val = ints.get(name, 17)
            if val == 1 and not p.do_not_specialize:
                sig[name], cx[(i,)] = "constexpr", 1
                continue
            sig[name] = "i32"
            if val % 16 == 0 and not p.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs=cx, attrs=attrs)
    return triton.compile(
        src, target=GPUTarget("cuda", 90, 128), options={"num_warps": warps, "num_stages": stages}
    )


def _usage(cubin: bytes) -> dict:
    _, cuobjdump = _tools()
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    get = lambda key: int(m[-1]) if (m := re.findall(rf"{key}:(\d+)", out)) else -1
    return {"regs": get("REG"), "stack": get("STACK"), "local": get("LOCAL")}


# ------------------------------------------------------------------------------------------- cases
def _attention_cases(full: bool):
    import triton.language as tl

    import fastft.kernels.attention as ka

    H, S = 12, 509  # ragged length: not a multiple of 16
    tdt = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}
    dtypes = ("bf16", "fp16", "fp32") if full else ("bf16", "fp32")
    for dtype in dtypes:
        for D in (64, 128):
            for which, kern in (("fwd", ka._attention_fwd_kernel), ("dq", ka._attention_bwd_dq_kernel),
                                ("dkdv", ka._attention_bwd_dkdv_kernel)):  # fmt: skip
                variants = [
                    (False, True, True, True),
                    (True, False, True, False),
                ]  # (varlen, mask, causal, drop)
                if not full:
                    variants = variants[:1]  # the heaviest: mask + causal + dropout
                    if dtype == "fp32" and (which != "fwd" or D != 128):
                        continue  # fp32 (TF32) is checked for shared memory; its largest tiles are these
                if full and which != "fwd":
                    variants.append((True, False, False, True))
                for varlen, mask, causal, drop in variants:
                    s_hd = H * D  # HF layout (B, S, H, D) viewed as (B, H, S, D)
                    ints = {"H": H, "head_dim": D, "seqlen_q": S, "seqlen_k": S, "max_seqlen": S, "seed": 12345,
                            "rng_stride": S, "max_seqlen_bucket": 512, "stride_lb": H * S, "stride_lh": S,
                            "stride_ls": 1, "stride_mb": S, "stride_ms": 1}  # fmt: skip
                    for t in "qkvog":
                        ints.update({f"stride_{t}b": 0 if varlen else S * s_hd, f"stride_{t}h": D,
                                     f"stride_{t}s": s_hd, f"stride_{t}d": 1})  # fmt: skip
                    ptrs = {n: dtype for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
                    ptrs.update(LSE="fp32", DELTA="fp32", KPM="u8", CU="i32")
                    bd = max(16, D)
                    configs = kern.configs
                    kept = ka._prune_for(which)(
                        configs, {"max_seqlen": 4096}, BLOCK_D=bd, DOT_DTYPE=tdt[dtype]
                    )
                    for cfg in configs if full else kept:
                        const = dict(IS_CAUSAL=causal, HAS_MASK=mask, VARLEN=varlen, DROPOUT=drop, BLOCK_D=bd,
                                     DOT_DTYPE=tdt[dtype], DOT_PREC="tf32", **cfg.kwargs)  # fmt: skip
                        km = cfg.kwargs
                        tag = (f"attn.{which} {dtype} D={D} varlen={varlen} mask={mask} causal={causal} "
                               f"drop={drop} {km['BLOCK_M']}x{km['BLOCK_N']} w{cfg.num_warps} s{cfg.num_stages}")  # fmt: skip
                        yield (
                            tag,
                            dtype,
                            cfg in kept,
                            (kern, ints, ptrs, const, cfg.num_warps, cfg.num_stages),
                        )
        # preprocess: fixed 64-row blocks
        ints = {"H": H, "seqlen_q": S, "head_dim": 128, "stride_lb": H * S, "stride_lh": S, "stride_ls": 1}
        for t in "og":
            ints.update(
                {f"stride_{t}b": S * H * 128, f"stride_{t}h": 128, f"stride_{t}s": H * 128, f"stride_{t}d": 1}
            )
        yield (f"attn.preprocess {dtype} D=128", dtype, True,
               (ka._attention_bwd_preprocess_kernel, ints, {"O": dtype, "DO": dtype, "DELTA": "fp32", "CU": "i32"},
                dict(VARLEN=True, BLOCK_M=64, BLOCK_D=128), 4, 3))  # fmt: skip


def _lora_cases(full: bool):
    """The forward (fused down-projection, no dropout in the GEMM) and the backward dx with dropout:
    fused or not, and the cuBLAS-main-GEMM epilogue pass (L = 0, ACCUMULATE). Dropout tags start with
    ``lora.gemm.drop``; fp16 is included for the dropout epilogue (its register pressure)."""
    import triton.language as tl

    import fastft.kernels.lora as K

    M, Kd, N, R = 16384, 768, 2304, 16
    variants = ((True, False, False), (True, True, False), (False, True, False), (False, True, True))
    for dtype, prec in (("bf16", "ieee"), ("fp16", "ieee"), ("fp32", "tf32")):
        tdt = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}[dtype]
        for fuse, drop, acc in variants:  # acc: OUT already holds X·W from cuBLAS
            if not full and dtype != "bf16" and not (dtype == "fp16" and drop):
                continue
            L = 0 if acc else Kd
            ints = dict(M=M + 3, L=L, O=N, R=R, stride_xm=Kd, stride_xl=1, stride_wl=0 if acc else 1,
                        stride_wo=0 if acc else Kd, stride_dl=1, stride_dj=Kd, stride_uj=1, stride_uo=R,
                        stride_om=N, stride_oo=1, stride_tm=R, stride_tj=1, seed=7)  # fmt: skip
            ptrs = {n: dtype for n in ("X", "W", "BIAS", "DOWN", "UP", "OUT", "U")}
            kept = K._prune_gemm(
                K._lora_gemm_kernel.configs, {}, DROP_OUT=drop, elem_size=4 if dtype == "fp32" else 2
            )
            for cfg in K._lora_gemm_kernel.configs if full else kept:
                const = dict(HAS_BIAS=not acc, DROP_OUT=drop, FUSE_DOWN=fuse, ACCUMULATE=acc, DOT=tdt,
                             PRECISION=prec, R_PAD=16, **cfg.kwargs)  # fmt: skip
                km = cfg.kwargs
                tag = (f"lora.gemm{'.drop' if drop else ''} {dtype} fuse={fuse} acc={acc} "
                       f"{km['BLOCK_M']}x{km['BLOCK_O']}x{km['BLOCK_L']} w{cfg.num_warps} s{cfg.num_stages}")  # fmt: skip
                yield (
                    tag,
                    dtype,
                    cfg in kept,
                    (K._lora_gemm_kernel, ints, ptrs, const, cfg.num_warps, cfg.num_stages),
                )


def _ce_cases(full: bool):
    import fastft.kernels.cross_entropy as kc
    import fastft.kernels.kd_loss as kkd

    for dtype in ("bf16", "fp16") if full else ("bf16",):
        for V in (50257, 30522) if full else (50257,):
            block, warps = kc._config(V, 2)
            ints = dict(V=V, stride_x=V, stride_g=V, stride_s=V, stride_t=V, ignore_index=-100, N=4096)
            ptrs = dict(
                X=dtype, S=dtype, T=dtype, GRAD=dtype, TARGET="i64", LOSS="fp32", SCALE="fp32", WEIGHT="fp32"
            )
            for name in ("_cross_entropy_fwd_kernel", "_kd_fwd_kernel"):
                kern = getattr(kc if name.startswith("_cross") else kkd, name)
                fn = _jit_fn(kern)
                const = {}
                for p in fn.params:
                    if p.is_constexpr:
                        const[p.name] = (
                            block if p.name == "BLOCK_V" else 1 if p.name == "SCALE_MODE" else True
                        )
                yield (
                    f"{name} {dtype} V={V} BLOCK_V={block} w{warps}",
                    dtype,
                    True,
                    (kern, ints, ptrs, const, warps, 3),
                )


def _cases(full: bool, only: list[str]) -> list:
    cases = [c for gen in (_attention_cases, _lora_cases, _ce_cases) for c in gen(full)]
    return [c for c in cases if not only or any(o in c[0] for o in only)]


def _run_case(job):
    full, only, i = job  # kernels do not pickle: each worker rebuilds the case list
    tag, dtype, kept, (kern, ints, ptrs, const, warps, stages) = _cases(full, only)[i]
    try:
        c = _compile(kern, ints, ptrs, const, warps, stages)
        row = {
            "tag": tag,
            "dtype": dtype,
            "kept": kept,
            "shared": c.metadata.shared,
            **_usage(c.asm["cubin"]),
        }
    except Exception as e:  # reported, and failed on, by the test
        row = {"tag": tag, "dtype": dtype, "kept": kept, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    return row


def main(argv: list[str]) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    full = "--all" in argv
    only = [a for a in argv if not a.startswith("-")]
    n = len(_cases(full, only))
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as ex:
        for row in ex.map(_run_case, [(full, only, i) for i in range(n)]):
            print(json.dumps(row), flush=True)
    return 0


# -------------------------------------------------------------------------------------------- tests
def _sweep(tmp_path, *args: str, timeout: int = 900) -> list[dict]:
    pytest.importorskip("triton.backends.nvidia")
    ptxas, cuobjdump = _tools()
    if not (os.path.exists(ptxas) and os.path.exists(cuobjdump)):
        pytest.skip("this triton ships no ptxas/cuobjdump")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env = child_env(base=env)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env, capture_output=True,
                       text=True, timeout=timeout)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def _check(rows: list[dict]) -> None:
    assert rows, "no kernel compiled"
    bad = []
    for row in rows:
        if "error" in row:
            bad.append(f"{row['tag']}: {row['error']}")
        elif row["kept"] and row["shared"] > SMEM_LIMIT:
            bad.append(f"{row['tag']}: shared memory {row['shared']} B > {SMEM_LIMIT}")
        elif row["kept"] and row["dtype"] != "fp32" and (row["stack"] != 0 or row["local"] != 0):
            bad.append(
                f"{row['tag']}: spills (stack {row['stack']} B, local {row['local']} B, {row['regs']} regs)"
            )
    assert not bad, "\n".join(bad)


def test_kernels_compile_for_sm90_within_smem_and_without_spills(tmp_path):
    """Representative subset (~3 min on 2 cores): every kept attention config in its heaviest variant
    (mask + causal + dropout) at D = 64 / 128 in bf16 and fp32-TF32, every kept LoRA GEMM config of
    each variant (bf16; fp16 for the dropout epilogue), CE/KD."""
    _check(_sweep(tmp_path))


def test_lora_dropout_gemm_kept_configs_do_not_spill(tmp_path):
    """The dropout epilogue (backward dx with lora_dropout > 0) spilled 88-568 B in every config of the
    dense list (one Philox draw per accumulator element, 64 per thread). It now tunes over its own
    32-per-thread list: every kept config compiles clean in bf16 and fp16, fused, unfused and after
    cuBLAS (L = 0)."""
    rows = _sweep(tmp_path, "lora.gemm.drop")
    seen = {(r["dtype"], r["tag"].split()[2], r["tag"].split()[3]) for r in rows}
    assert seen == {(d, f"fuse={f}", f"acc={a}") for d in ("bf16", "fp16") for f, a in
                    ((True, False), (False, False), (False, True))}, seen  # fmt: skip
    for r in rows:  # at most 32 accumulator elements per thread (the dense tiles hold 64)
        bm, bo, _ = map(int, r["tag"].split()[4].split("x"))
        assert bm * bo <= 32 * 32 * int(r["tag"].split()[5][1:]), r["tag"]
    _check(rows)


@pytest.mark.slow
def test_kernels_compile_for_sm90_exhaustive(tmp_path):
    """Every config (kept or pruned), fp16 too, padded and varlen variants, two vocabularies."""
    _check(_sweep(tmp_path, "--all", timeout=3600))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
