"""Attention kernels must not recompile per call: a fresh dropout seed every step, a new padded length,
a new varlen token total (the LSE row stride) must all map to one compiled variant per kernel.

Triton specialises integer arguments on "== 1" and "% 16 == 0" unless they are in
``do_not_specialize``. On CPU the specialisation key is computed with triton's own binder for an
sm_90 target (no compile, no GPU): the launches are recorded, not run. On a GPU the kernel cache
itself is counted.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

_PROBE = r"""
import itertools, os
os.environ.pop("TRITON_INTERPRET", None)
import torch
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import create_function_from_signature
import fastft.kernels.attention as ka

NAMES = ("_attention_fwd_kernel", "_attention_bwd_dq_kernel", "_attention_bwd_dkdv_kernel",
         "_attention_bwd_preprocess_kernel")

class Rec:
    def __init__(self, kern):
        self.kern, self.calls = kern, []
    def __getitem__(self, grid):
        return lambda *a, **kw: self.calls.append((a, kw))

recs = {n: Rec(getattr(ka, n)) for n in NAMES}
for n, r in recs.items():
    setattr(ka, n, r)
calls = 0
for seed, (b, s) in itertools.product([1, 2, 16, 12345, 2**29 + 7], [(2, 31), (3, 64), (1, 1), (5, 17), (4, 48)]):
    q = torch.randn(b, 2, s, 64)
    mask = torch.ones(b, s, dtype=torch.bool)
    o, lse = torch.empty_like(q), torch.empty(b, 2, s)
    ka.attention_forward(q, q, q, key_padding_mask=mask, dropout_p=0.1, seed=seed)
    ka.attention_backward(q, q, q, q, o, lse, key_padding_mask=mask, dropout_p=0.1, seed=seed)
    # varlen: the token total (LSE row stride) and max_seqlen change every batch
    total = b * s
    qv = torch.randn(total, 2, 64)
    cu = torch.arange(0, total + 1, s, dtype=torch.int32)
    ov, lv = torch.empty_like(qv), torch.empty(2, total)
    ka.attention_forward(qv, qv, qv, cu_seqlens=cu, max_seqlen=s, dropout_p=0.1, seed=seed)
    ka.attention_backward(qv, qv, qv, qv, ov, lv, cu_seqlens=cu, max_seqlen=s, dropout_p=0.1, seed=seed)
    calls += 1
backend = make_backend(GPUTarget("cuda", 90, 32))
for n, r in recs.items():
    fn = r.kern
    while not hasattr(fn, "params"):
        fn = fn.fn
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    keys = set()
    for a, kw in r.calls:
        kw = {**{c: 32 for c in ("BLOCK_M", "BLOCK_N") if c in fn.arg_names and c not in kw}, **kw}
        keys.add(str(binder(*a, **kw)[1]))
    print(n, calls, len(keys))
"""


def test_attention_kernels_specialise_once_for_new_seeds_and_shapes():
    """25 (seed, shape) pairs, padded and varlen: at most one variant per kernel and layout."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split() for line in r.stdout.strip().splitlines()]
    assert len(rows) == 4, r.stdout
    for name, calls, variants in rows:
        assert int(calls) == 25
        assert int(variants) <= 2, (
            f"{name}: {variants} specialisations for new seeds/shapes"
        )  # padded, varlen


@pytest.mark.gpu
def test_gpu_compile_cache_stays_small():
    """On the device: 12 calls with new seeds and batch shapes compile <= 2 variants per kernel
    (padded and varlen), counted in triton's per-device kernel cache."""
    import fastft.kernels.attention as ka

    dev = torch.cuda.current_device()
    for i, (b, s) in enumerate([(2, 31), (3, 64), (1, 1), (5, 17), (4, 48), (2, 129)] * 2):
        q = torch.randn(b, 2, s, 64, device="cuda", dtype=torch.bfloat16)
        o, lse = ka.attention_forward(q, q, q, dropout_p=0.1, seed=1000 + 7 * i, is_causal=True)
        ka.attention_backward(q, q, q, q, o, lse, dropout_p=0.1, seed=1000 + 7 * i, is_causal=True)
        qv = q.transpose(1, 2).reshape(b * s, 2, 64)
        cu = torch.arange(0, b * s + 1, s, dtype=torch.int32, device="cuda")
        ov, lv = ka.attention_forward(qv, qv, qv, cu_seqlens=cu, max_seqlen=s, dropout_p=0.1, seed=3 + i)
        ka.attention_backward(qv, qv, qv, qv, ov, lv, cu_seqlens=cu, max_seqlen=s, dropout_p=0.1, seed=3 + i)
    torch.cuda.synchronize()
    for kern in (ka._attention_fwd_kernel, ka._attention_bwd_dq_kernel, ka._attention_bwd_dkdv_kernel):
        # the autotuner compiles each config it benchmarks once; seeds/lengths add nothing on top
        n = len(kern.fn.device_caches[dev][0])
        assert n <= 2 * len(kern.configs), f"{kern.fn.__name__}: {n} compiled variants"  # padded, varlen
