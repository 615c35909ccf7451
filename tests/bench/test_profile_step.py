"""bench.profile_step: the step windows and the summaries, on a tiny hand-made training loop."""

from __future__ import annotations

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from bench import profile_step as ps


def test_windows_profile_each_mode_over_its_own_steps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    win = ps.Windows(warmup=2, steps=3, modes=ps.MODES)
    handle = register_optimizer_step_post_hook(win)
    try:
        for _ in range(win.total + 2):  # steps past the last window are not profiled
            x = torch.randn(16, 32)
            loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 2, (16,)))
            loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        handle.remove()
    assert win.count == win.total + 2
    assert set(win.clock) == set(ps.MODES) and all("c1" in c for c in win.clock.values())
    tp = ps.torch_summary(win.torch_prof, steps=3)
    assert tp["self_ms_per_step_by_bucket"].get("gemm", 0) > 0
    assert tp["optimizer_step_range_ms_per_step"] > 0  # torch's Optimizer.step#AdamW.step range
    names = {o["op"] for o in tp["top_ops"]}
    assert names & {"aten::addmm", "aten::mm"}
    cp = ps.cprofile_summary(win.cprof, steps=3)
    assert cp["total_ms_per_step"] > 0 and cp["functions_ms_per_step"]["optimizer.step (whole)"] > 0


def test_op_buckets():
    assert ps._bucket("aten::addmm") == "gemm"
    assert ps._bucket("aten::index_select") == "index/unpad/pad"
    assert ps._bucket("aten::_local_scalar_dense") == "host sync (.item/bool)"
    assert ps._bucket("aten::native_layer_norm_backward") == "layernorm/gelu/dropout"
    assert ps._bucket("something new") == "other ops"
