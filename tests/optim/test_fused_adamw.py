"""FusedAdamW (fastft._C and its torch fallback) vs clip_grad_norm_ + torch.optim.AdamW."""

from __future__ import annotations

import math

import pytest
import torch

import fastft
from fastft import _ext
from fastft.optim import FusedAdamW
from fastft.optim import fused_adamw as fa
from tests.compare import DTYPES, assert_close, assert_within_torch_error, max_err, randn
from tests.distributed.workers import gloo_group

# awkward sizes: a scalar-like 1, odd 7, just over one 64Ki CPU chunk (70001), 2-D, 3-D; the 1000003 case
# (many chunks, odd tail) runs on a subset to keep the file inside its time budget
SHAPES_A = [(1,), (70001,), (3, 5, 11)]
BIG = (1000003,)
SHAPES_B = [(7,), (13, 17)]
GROUP_B = dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6)
STEPS = 50

needs_ext = pytest.mark.skipif(not _ext.available(), reason="fastft._C is not built")


@pytest.fixture(params=["ext", "torch"])
def path(request, monkeypatch):
    """Run a test once through fastft._C and once through the forced torch fallback."""
    if request.param == "ext":
        if not _ext.available():
            pytest.skip("fastft._C is not built")
    else:
        monkeypatch.setattr(fa, "USE_EXTENSION", False)
    return request.param


def make_params(dtype, seed=0, big=False):
    shapes = [SHAPES_A[0], BIG, SHAPES_A[2]] if big else SHAPES_A
    a = [randn(*s, dtype=dtype, seed=seed + i) for i, s in enumerate(shapes)]
    b = [randn(*s, dtype=dtype, seed=seed + 10 + i) for i, s in enumerate(SHAPES_B)]
    return a, b


def leaves(ts, dtype=None):
    return [torch.nn.Parameter(t.detach().clone().to(dtype or t.dtype)) for t in ts]


def groups(a, b, wd):
    return [dict(params=a, weight_decay=wd), dict(params=b, weight_decay=wd / 2, **GROUP_B)]


def run_torch(a, b, grads, wd, max_norm, lr, round_to=None):
    """clip_grad_norm_ + torch.optim.AdamW (+ the same LambdaLR); returns (params, opt, norms).

    ``round_to``: store the (float64) params rounded to that dtype after every step -- exact math with
    low-precision storage, the best any fp16/bf16-param optimizer can do.
    """
    opt = torch.optim.AdamW(groups(a, b, wd), lr=lr, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.05 * s))
    ps = a + b
    norms = []
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.to(p.dtype)
        n = torch.nn.utils.clip_grad_norm_(ps, max_norm if max_norm is not None else math.inf)
        norms.append(n)
        opt.step()
        sched.step()
        if round_to is not None:
            with torch.no_grad():
                for p in ps:
                    p.copy_(p.to(round_to))
    return ps, opt, norms


def run_fused(a, b, grads, wd, max_norm, lr):
    opt = FusedAdamW(groups(a, b, wd), lr=lr, max_grad_norm=max_norm)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + 0.05 * s))
    ps = a + b
    norms = []
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        assert opt.grad_norm.dim() == 0 and opt.grad_norm.device == ps[0].device
        assert opt.found_inf.item() == 0.0
        norms.append(opt.grad_norm)
        sched.step()
    return ps, opt, norms


CASES = [(dt, mn, wd, False) for dt in DTYPES for mn in (None, 10.0) for wd in (0.0, 0.1)]
CASES += [(torch.float32, 10.0, 0.1, True)]


@pytest.mark.parametrize(
    "dtype, max_norm, wd, big",
    CASES,
    ids=[
        f"{str(c[0])[6:]}-{'clip' if c[1] else 'noclip'}-wd{c[2]}{'-1000003' if c[3] else ''}" for c in CASES
    ],
)
def test_matches_clip_and_adamw(path, dtype, max_norm, wd, big):
    """50 steps, 2 param groups, a LambdaLR schedule, vs clip_grad_norm_ + torch AdamW in float64."""
    if path == "torch" and (wd == 0.0 or dtype == torch.float16 or big):
        pytest.skip("the fallback is covered on a subset (it is the same code for every case)")
    lr = 1e-2
    a, b = make_params(dtype, big=big)
    # grads in the param dtype, fresh each step; norm ~ 0.3*sqrt(numel) >= 80, so max_norm=10 clips every step
    grads = [
        [randn(*p.shape, dtype=dtype, scale=0.3, seed=1000 * s + i) for i, p in enumerate(a + b)]
        for s in range(STEPS)
    ]
    ours, opt, norms = run_fused(leaves(a), leaves(b), grads, wd, max_norm, lr)
    f64 = torch.float64
    round_to = None if dtype == torch.float32 else dtype
    ref, ref_opt, ref_norms = run_torch(leaves(a, f64), leaves(b, f64), grads, wd, max_norm, lr, round_to)
    for n, rn in zip(norms, ref_norms):
        assert_close(n, rn, torch.float32, name="grad_norm")
    for i, (p, r) in enumerate(zip(ours, ref)):
        assert p.dtype == dtype and opt.state[p]["exp_avg"].dtype == torch.float32
        assert opt.state[p]["step"].item() == STEPS
        assert_close(p, r, dtype, name=f"param {i}")
        for k in ("exp_avg", "exp_avg_sq"):
            assert_close(opt.state[p][k], ref_opt.state[r][k], torch.float32, name=f"{k} {i}")
    if dtype == torch.bfloat16:
        # torch's own bf16 AdamW (bf16 moments) vs the unrounded float64 run: ours must be within 2x its error.
        # (Not for fp16: torch's fp16 AdamW underflows eps=1e-8 and v to 0 and returns NaN.)
        same, _, _ = run_torch(leaves(a), leaves(b), grads, wd, max_norm, lr)
        exact, _, _ = run_torch(leaves(a, f64), leaves(b, f64), grads, wd, max_norm, lr)
        for i, (p, t, r) in enumerate(zip(ours, same, exact)):
            assert_within_torch_error(p, t, r, name=f"param {i}")


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extension_equals_fallback(dtype, monkeypatch):
    """The compiled op and the torch fallback give the same numbers (to fp32 rounding)."""
    a, b = make_params(dtype, seed=5)
    grads = [[randn(*p.shape, dtype=dtype, seed=77 * s + i) for i, p in enumerate(a + b)] for s in range(5)]
    ext, opt_e, _ = run_fused(leaves(a), leaves(b), grads, 0.05, 30.0, 1e-2)
    monkeypatch.setattr(fa, "USE_EXTENSION", False)
    ref, opt_r, _ = run_fused(leaves(a), leaves(b), grads, 0.05, 30.0, 1e-2)
    for p, r in zip(ext, ref):
        # one rounding step of the param dtype at most (fma vs separate multiply-add)
        assert max_err(p, r) <= 2 * torch.finfo(dtype).eps * max(1.0, r.abs().max().item())
        assert_close(opt_e.state[p]["exp_avg_sq"], opt_r.state[r]["exp_avg_sq"], torch.float32)


def test_backend_torch_forces_fallback(monkeypatch):
    called = []
    monkeypatch.setattr(
        fa._reference, "fused_adamw_", lambda *a, **k: called.append(1) or (torch.zeros(()),) * 2
    )
    p = torch.nn.Parameter(torch.randn(4))
    p.grad = torch.randn(4)
    with fastft.backend("torch"):
        FusedAdamW([p]).step()
    assert called


def test_missing_extension_warns_and_falls_back(monkeypatch):
    """Without fastft._C the optimizer warns once (with the build command) and runs the torch path."""
    monkeypatch.setattr(fa._ext, "_C", None)
    monkeypatch.setattr(fa._ext, "_warned", False)
    p = torch.nn.Parameter(randn(10, seed=0))
    p.grad = randn(10, seed=1)
    before = p.detach().clone()
    opt = FusedAdamW([p], lr=1e-2)
    with pytest.warns(RuntimeWarning, match="no-build-isolation"):
        opt.step()
    assert not torch.equal(p, before) and opt.state[p]["step"].item() == 1


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_nonfinite_grad_skips_step(path, bad, dtype):
    a, b = make_params(dtype, seed=3)
    ps = leaves(a) + leaves(b)
    opt = FusedAdamW([dict(params=ps[:3]), dict(params=ps[3:], lr=1e-2)], lr=1e-3, max_grad_norm=1.0)
    for s in range(2):
        for i, p in enumerate(ps):
            p.grad = randn(*p.shape, dtype=dtype, seed=s * 10 + i)
        opt.step()
    before = [p.detach().clone() for p in ps]
    states = [{k: v.clone() for k, v in opt.state[p].items()} for p in ps]
    for i, p in enumerate(ps):
        p.grad = randn(*p.shape, dtype=dtype, seed=99 + i)
    ps[1].grad.view(-1)[68001] = bad  # in the second 64Ki chunk of the 70001-element param
    opt.step()
    assert opt.found_inf.item() == 1.0
    for p, p0, st in zip(ps, before, states):
        assert torch.equal(p, p0)
        for k, v in st.items():
            assert torch.equal(opt.state[p][k], v), k
    ps[1].grad.view(-1)[68001] = 0.5
    opt.step()
    assert opt.found_inf.item() == 0.0 and opt.state[ps[0]]["step"].item() == 3
    assert not torch.equal(opt.state[ps[0]]["exp_avg"], states[0]["exp_avg"])


def test_huge_finite_grads_are_not_inf(path):
    """Squares that overflow fp32 make the norm inf, but nothing is non-finite: the step runs (clipped)."""
    p = torch.nn.Parameter(torch.ones(64))
    p.grad = torch.full((64,), 3e19)
    opt = FusedAdamW([p], lr=1e-2, max_grad_norm=1.0)
    opt.step()
    assert opt.found_inf.item() == 0.0
    assert torch.isfinite(p).all()


@pytest.mark.parametrize("direction", ["fused_to_torch", "torch_to_fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_state_dict_round_trip(path, direction, dtype):
    a, b = make_params(dtype, seed=11)
    grads = [[randn(*p.shape, dtype=dtype, seed=31 * s + i) for i, p in enumerate(a + b)] for s in range(6)]
    src_cls, dst_cls = (
        (FusedAdamW, torch.optim.AdamW) if direction == "fused_to_torch" else (torch.optim.AdamW, FusedAdamW)
    )

    def make(cls, ps):
        return cls([dict(params=ps[:3]), dict(params=ps[3:], **GROUP_B)], lr=1e-2, weight_decay=0.05)

    def steps(opt, ps, gs):
        for g in gs:
            for p, gi in zip(ps, g):
                p.grad = gi.clone()
            opt.step()

    # uninterrupted reference: the source optimizer for 6 steps
    full = leaves(a) + leaves(b)
    steps(make(src_cls, full), full, grads)
    # 3 steps in the source, save, load into the destination, 3 more steps there
    ps = leaves(a) + leaves(b)
    src = make(src_cls, ps)
    steps(src, ps, grads[:3])
    sd = src.state_dict()
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    dst = make(dst_cls, ps)
    dst.load_state_dict(sd)
    assert {k: v.item() for k, v in dst.state[ps[0]].items() if k == "step"} == {"step": 3.0}
    steps(dst, ps, grads[3:])
    for p, r in zip(ps, full):
        if dtype == torch.float32:
            assert_close(p, r)
        else:  # torch AdamW keeps bf16 moments, FusedAdamW fp32 ones: agree to a few bf16 ulps
            assert max_err(p, r) <= 4 * torch.finfo(dtype).eps * r.abs().max().item()


def test_state_dict_keeps_fp32_moments(path):
    p = torch.nn.Parameter(randn(1000, dtype=torch.bfloat16, seed=0))
    opt = FusedAdamW([p], lr=1e-2)
    p.grad = randn(1000, dtype=torch.bfloat16, seed=1)
    opt.step()
    sd = opt.state_dict()
    opt2 = FusedAdamW([p], lr=1e-2)
    opt2.load_state_dict(sd)
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert opt2.state[p][k].dtype == torch.float32
        assert torch.equal(opt2.state[p][k], opt.state[p][k])


def test_grad_scaler(path):
    """Under torch.amp.GradScaler the fused op unscales itself and skips overflowing steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    ref_model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    ref_model.load_state_dict(model.state_dict())
    opt = FusedAdamW(model.parameters(), lr=1e-2, max_grad_norm=0.5)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    for s in range(8):
        x, y = randn(8, 16, seed=s), torch.randint(0, 3, (8,))
        for m, sc in ((model, scaler), (ref_model, ref_scaler)):
            sc.scale(torch.nn.functional.cross_entropy(m(x), y)).backward()
            if s == 4:  # an overflow: the step must be skipped and the scale backed off
                m[0].weight.grad[0, 0] = math.inf
        scaler.step(opt)
        scaler.update()
        ref_scaler.unscale_(ref_opt)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.5)
        ref_scaler.step(ref_opt)
        ref_scaler.update()
        assert opt.found_inf.item() == (1.0 if s == 4 else 0.0)
        if s != 4:
            assert_close(opt.grad_norm, ref_norm, torch.float32, name="grad_norm")
        assert scaler.get_scale() == ref_scaler.get_scale()
        opt.zero_grad()
        ref_opt.zero_grad()
    for p, r in zip(model.parameters(), ref_model.parameters()):
        assert_close(p, r, torch.float32)
    assert opt.state[next(model.parameters())]["step"].item() == 7


@needs_ext
def test_phases_equal_fused():
    """grad_sumsq + adamw_update_ (the FSDP2 path) == fused_adamw_."""
    ops = torch.ops.fastft
    a, b = make_params(torch.float32, seed=21)
    ps1, ps2 = a + b, [t.clone() for t in a + b]
    grads = [randn(*p.shape, seed=40 + i) for i, p in enumerate(ps1)]

    def state(ps):
        n = len(ps)
        return dict(
            exp_avgs=[torch.zeros_like(p) for p in ps],
            exp_avg_sqs=[torch.zeros_like(p) for p in ps],
            state_steps=[torch.zeros(()) for _ in ps],
            lrs=[1e-2] * n,
            beta1s=[0.9] * n,
            beta2s=[0.99] * n,
            epss=[1e-8] * n,
            weight_decays=[0.1] * n,
        )

    norm1, f1 = ops.fused_adamw_(ps1, grads, **state(ps1), max_norm=5.0)
    stats = ops.grad_sumsq(grads)
    ref = sum(g.double().pow(2).sum() for g in grads)
    assert_close(stats[0], ref, torch.float32)
    assert stats[1].item() == 0.0
    norm2, f2 = ops.adamw_update_(ps2, grads, **state(ps2), stats=stats, max_norm=5.0)
    assert_close(norm1, ref.sqrt(), torch.float32)
    assert_close(norm2, norm1, torch.float32)
    for p, q in zip(ps1, ps2):
        assert_close(q, p, torch.float32)


def test_dtensor_params_single_rank(path, tmp_path):
    """DTensor (FSDP2-style Shard(0)) params take the phased path and give the plain-tensor numbers."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised in this process")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    with gloo_group(str(tmp_path / "store"), rank=0, world=1):
        mesh = init_device_mesh("cpu", (1,))
        plain = [randn(6, 5, seed=1), randn(11, seed=2)]
        dts = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in plain]
        plain = [torch.nn.Parameter(t) for t in plain]
        o1, o2 = FusedAdamW(plain, lr=1e-2, max_grad_norm=0.5), FusedAdamW(dts, lr=1e-2, max_grad_norm=0.5)
        for s in range(3):
            for i, (p, d) in enumerate(zip(plain, dts)):
                g = randn(*p.shape, seed=100 * s + i)
                p.grad = g
                d.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            o1.step()
            o2.step()
            assert_close(o2.grad_norm, o1.grad_norm, torch.float32)
        for p, d in zip(plain, dts):
            assert_close(d.full_tensor(), p, torch.float32)
        assert type(o2.state[dts[0]]["exp_avg"]).__name__ == "DTensor"


# ------------------------------------------------------------------------------------------------
# bad input: one clear line naming the argument


def _op_args(ps, **over):
    n = len(ps)
    d = dict(
        params=ps,
        grads=[
            torch.randn_like(p, dtype=torch.float32).to(p.dtype)
            if p.is_floating_point()
            else torch.randn(p.shape)
            for p in ps
        ],
        exp_avgs=[torch.zeros(p.shape, device=p.device) for p in ps],
        exp_avg_sqs=[torch.zeros(p.shape, device=p.device) for p in ps],
        state_steps=[torch.zeros((), device=p.device) for p in ps],
        lrs=[1e-3] * n,
        beta1s=[0.9] * n,
        beta2s=[0.999] * n,
        epss=[1e-8] * n,
        weight_decays=[0.0] * n,
    )
    d.update(over)
    return d


@needs_ext
@pytest.mark.parametrize(
    "case, match",
    [
        ("mixed_devices", r"params\[1\] is on meta but params\[0\] is on cpu"),
        ("integer_param", r"params\[1\] has dtype Long"),
        ("sparse_grad", r"grads\[1\] is sparse"),
        ("len_mismatch", r"exp_avgs has 1 entries but params has 2"),
        ("state_dtype", r"exp_avg_sqs\[0\] has dtype BFloat16; optimizer states must be float32"),
        ("grad_dtype", r"grads\[0\] has dtype BFloat16 but params\[0\] has dtype Float"),
        ("numel", r"grads\[1\] has 5 elements but params\[1\] has 4"),
        ("hyper_len", r"lrs has 3 entries but params has 2"),
    ],
)
def test_op_bad_input(case, match):
    ps = [torch.randn(3), torch.randn(4)]
    if case == "mixed_devices":
        ps[1] = torch.empty(4, device="meta")
    if case == "integer_param":
        ps[1] = torch.arange(4)
    args = _op_args(ps)
    if case == "sparse_grad":
        args["grads"][1] = args["grads"][1].to_sparse()
    if case == "len_mismatch":
        args["exp_avgs"] = args["exp_avgs"][:1]
    if case == "state_dtype":
        args["exp_avg_sqs"][0] = args["exp_avg_sqs"][0].bfloat16()
    if case == "grad_dtype":
        args["grads"][0] = args["grads"][0].bfloat16()
    if case == "numel":
        args["grads"][1] = torch.randn(5)
    if case == "hyper_len":
        args["lrs"] = [1e-3] * 3
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastft.fused_adamw_(**args)


def test_optimizer_bad_input(path):
    with pytest.raises(ValueError, match="max_grad_norm"):
        FusedAdamW([torch.nn.Parameter(torch.randn(2))], max_grad_norm=0.0)
    with pytest.raises(ValueError, match="betas"):
        FusedAdamW([torch.nn.Parameter(torch.randn(2))], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="floating-point"):
        FusedAdamW([torch.arange(3)])
    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        FusedAdamW(emb.parameters()).step()


# ------------------------------------------------------------------------------------------------
# GPU: the CUDA multi-tensor kernel against the CPU op (skipped without a GPU)


@pytest.mark.gpu
@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu(dtype):
    a, b = make_params(dtype, seed=8)
    grads = [[randn(*p.shape, dtype=dtype, seed=13 * s + i) for i, p in enumerate(a + b)] for s in range(10)]
    cpu, opt_c, n_c = run_fused(leaves(a), leaves(b), grads, 0.05, 10.0, 1e-2)
    cuda_grads = [[g.cuda() for g in gs] for gs in grads]
    gpu, opt_g, n_g = run_fused(
        leaves([t.cuda() for t in a]), leaves([t.cuda() for t in b]), cuda_grads, 0.05, 10.0, 1e-2
    )
    for x, y in zip(n_g, n_c):
        assert_close(x, y, torch.float32)
    for p, q in zip(gpu, cpu):
        assert max_err(p, q) <= 2 * torch.finfo(dtype).eps * max(1.0, q.abs().max().item())


def _two_rank_worker(rank: int, store_path: str, use_ext: bool) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    torch.set_num_threads(1)
    fa.USE_EXTENSION = use_ext
    with gloo_group(store_path, rank, world=2):
        mesh = init_device_mesh("cpu", (2,))
        full = [randn(9, 4, seed=1), randn(5, seed=2), randn(1, seed=3)]  # odd shard sizes, an empty shard
        plain = [torch.nn.Parameter(t.clone()) for t in full]
        dts = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in full]
        ref, opt = FusedAdamW(plain, lr=1e-2, max_grad_norm=0.5), FusedAdamW(dts, lr=1e-2, max_grad_norm=0.5)
        for s in range(3):
            for i, (p, d) in enumerate(zip(plain, dts)):
                g = randn(*p.shape, seed=100 * s + i)
                p.grad = g
                d.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            ref.step()
            opt.step()
            assert_close(opt.grad_norm, ref.grad_norm, torch.float32, name="global grad_norm")
        for p, d in zip(plain, dts):
            assert_close(d.full_tensor(), p, torch.float32, name="sharded param")


@pytest.mark.distributed
def test_dtensor_two_ranks_global_norm(tmp_path):
    """2 gloo ranks, Shard(0) params: the all-reduced norm and the updates equal the single-process ones.

    (One spawn costs seconds, so this runs the extension when built, else the fallback; the phased
    fallback path itself is covered single-rank above.)"""
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_worker, args=(str(tmp_path / "store"), _ext.available()), nprocs=2, join=True)


@needs_ext
def test_result_independent_of_thread_count():
    """Chunk partials are summed in a fixed order: 1 and 2 threads give bitwise-identical results."""
    ops = torch.ops.fastft
    shapes = [(200001,), (3, 70000), (5,)]
    out = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        ps = [randn(*s, seed=i) for i, s in enumerate(shapes)]
        gs = [randn(*s, dtype=torch.float32, seed=10 + i) for i, s in enumerate(shapes)]
        n = len(ps)
        norm, _ = ops.fused_adamw_(
            ps,
            gs,
            [torch.zeros_like(p) for p in ps],
            [torch.zeros_like(p) for p in ps],
            [torch.zeros(()) for _ in ps],
            [1e-2] * n,
            [0.9] * n,
            [0.99] * n,
            [1e-8] * n,
            [0.1] * n,
            max_norm=3.0,
        )
        out.append((norm, ps))
    assert torch.equal(out[0][0], out[1][0])
    for a, b in zip(out[0][1], out[1][1]):
        assert torch.equal(a, b)
