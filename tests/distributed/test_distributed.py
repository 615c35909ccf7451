"""fastft.distributed: 2 CPU processes over gloo (DDP and FSDP2) against one process.

One ``torch.multiprocessing.spawn`` of 2 ranks (tests/distributed/workers.py) trains the tiny BERT
for 3 optimizer steps with FusedAdamW + clipping under DDP and then FSDP2, writes rank 0's full
checkpoints, resumes them in fresh wrapped objects and exercises the collectives; the tests below
check those results against a single process that sees the same global batches.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.compare import assert_close
from tests.distributed import workers as W

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    import fastft.optim

    if not hasattr(fastft.optim, "FusedAdamW"):
        pytest.skip("fastft.optim.FusedAdamW is not there yet")
    out = str(tmp_path_factory.mktemp("dist"))
    try:
        mp.spawn(W.run, args=(out, W.free_port()), nprocs=W.WORLD, join=True)
    except Exception as e:  # the rank's own traceback is more useful than spawn's summary
        errs = [
            f"{f}:\n" + open(os.path.join(out, f)).read()
            for f in sorted(os.listdir(out))
            if f.startswith(("error-", "fault-")) and os.path.getsize(os.path.join(out, f))
        ]
        written = sorted(os.listdir(out))  # threads-<r>.json: that rank got through all its work
        pytest.fail(f"a rank failed ({e}); written: {written}\n" + "\n".join(errs))
    results = [json.load(open(os.path.join(out, f"result-{r}.json"))) for r in range(W.WORLD)]
    return out, results


@pytest.fixture(scope="module")
def single(two_ranks):
    """The single-process reference: same init, same global batches, 4 micro-batches per step."""
    torch.set_num_threads(1)
    model = W.make_model(seed=0)
    opt = W.make_optimizer(model)
    norms = W.train_steps(model, opt, W.make_data(W.STEPS), rank=0, world=1)
    return model, opt, norms


def _load(path):
    from safetensors.torch import load_file

    return load_file(path)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_same_parameters_as_single_process(two_ranks, single, strategy):
    out, _ = two_ranks
    model, _, _ = single
    sd = _load(os.path.join(out, f"{strategy}-model.safetensors"))
    ref = model.state_dict()
    assert sorted(sd) == sorted(ref), "full state dict keys differ from the plain model's"
    moved = 0
    for k, v in ref.items():
        assert_close(sd[k], v, torch.float32, name=f"{strategy}:{k}")
        moved += 1
    assert moved > 10


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_grad_norm_equals_single_process(two_ranks, single, strategy):
    _, results = two_ranks
    _, _, ref_norms = single
    assert min(ref_norms) > 2 * W.MAX_GRAD_NORM, "clipping must be active for this test to mean anything"
    for res in results:  # every rank reports the global norm, not its local one
        torch.testing.assert_close(
            torch.tensor(res[f"{strategy}_norms"]), torch.tensor(ref_norms), rtol=1e-5, atol=0
        )


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_optimizer_state_matches_and_resumes_in_one_process(two_ranks, single, strategy):
    """A 2-process checkpoint (model + optimizer, written by rank 0) loads into one process and the
    next step there equals the next step the 2 ranks took after their own resume."""
    from fastft.distributed import DistState, load_optim_state_dict

    out, results = two_ranks
    ref_model, ref_opt, _ = single
    osd = torch.load(os.path.join(out, f"{strategy}-optim.pt"), weights_only=True)
    model = W.make_model(seed=5)
    model.load_state_dict(_load(os.path.join(out, f"{strategy}-model.safetensors")))
    opt = W.make_optimizer(model)
    load_optim_state_dict(model, opt, osd, DistState())
    ref_state = ref_opt.state_dict()["state"]
    assert sorted(osd["state"]) == sorted(ref_state)
    for pid, entry in ref_state.items():
        for key, v in entry.items():
            if torch.is_tensor(v) and v.dim() > 0:
                assert_close(
                    osd["state"][pid][key], v, torch.float32, scale=10, name=f"{strategy}:{pid}.{key}"
                )
    norms = W.train_steps(model, opt, W.make_data(W.STEPS + 1)[W.STEPS :], rank=0, world=1)
    dist_after, dist_resumed = results[0][f"{strategy}_resume_norms"]
    assert dist_after == dist_resumed, "resuming inside the 2-process job changed the next step"
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(dist_resumed), rtol=1e-5, atol=0)
    assert results[0][f"{strategy}_resume_maxdiff"] == 0.0


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_lora_and_patched_parts_inside_the_wrappers(two_ranks, strategy):
    """fastft LoRA + patched attention and loss: same LoRA factors and grad norms as one process."""
    out, results = two_ranks
    torch.manual_seed(0)
    model = W.make_lora_model(seed=0)
    opt = W.make_optimizer(model)
    ref_norms = W.train_steps(model, opt, W.make_data(W.STEPS), rank=0, world=1)
    torch.testing.assert_close(
        torch.tensor(results[0][f"{strategy}_lora_norms"]), torch.tensor(ref_norms), rtol=1e-5, atol=0
    )
    sd = _load(os.path.join(out, f"{strategy}-lora.safetensors"))
    ref = model.state_dict()
    assert sorted(sd) == sorted(ref)
    lora_b = [k for k in ref if "lora_B" in k]
    assert lora_b and all(ref[k].abs().sum() > 0 for k in lora_b), "LoRA B starts at 0 and must have trained"
    for k, v in ref.items():
        assert_close(sd[k], v, torch.float32, name=f"{strategy}:{k}")


def test_only_rank0_gets_the_fsdp_state_dict(two_ranks):
    out, results = two_ranks
    assert results[1]["fsdp_nonmain_sd_len"] == 0
    written = sorted(f for f in os.listdir(out) if f.endswith((".safetensors", ".pt")))
    assert written == [
        f"{s}-{f}" for s in ("ddp", "fsdp") for f in ("lora.safetensors", "model.safetensors", "optim.pt")
    ]


def test_cleanup_stops_the_backend_threads(two_ranks):
    """cleanup() itself stops every gloo / TCPStore thread, though the rank (workers._run) still holds
    its last DDP model: a group left alive is torn down later, after the peer rank has
    exited or while the interpreter exits, and now and then a rank died there (SIGABRT
    "terminate called without an active exception", SIGSEGV). threads-cleanup-<r>: right after
    cleanup(); threads-<r>: after the rank's objects are gone, just before exit."""
    out, _ = two_ranks
    for rank in range(W.WORLD):
        for when in ("threads-cleanup", "threads"):
            with open(os.path.join(out, f"{when}-{rank}.json")) as f:
                threads = json.load(f)
            if not threads:
                pytest.skip("no /proc/self/task on this platform")
            left = W.backend_threads(threads)
            assert not left, f"rank {rank}: backend threads still running ({when}): {left}"


def test_no_sync_skips_the_all_reduce(two_ranks):
    _, results = two_ranks
    for res in results:
        assert res["no_sync_ranks_differ"] and res["sync_ranks_equal"]


def test_gather_for_metrics_no_duplicates_no_drops(two_ranks):
    _, results = two_ranks
    for res in results:
        assert res["gather_contiguous"] == [[float(i)] * 3 for i in range(7)]
        assert res["gather_loader"] == [100.0 + i for i in range(7)]
        assert res["index_matches_rows"]
        # the padded eval order has 8 rows, one duplicate: batch["repeat"] keeps each real row once
        assert sorted(x for batch in res["eval_real_rows"] for x in batch) == [100 + i for i in range(7)]
        assert res["gather_index"] == [10.0 * i for i in range(7)]
        assert res["gather_uneven"] == [[1.0, 1.0, -1.0]] * 3 + [[2.0, 2.0, 2.0]] * 2
        assert res["all_reduce_sum"] == 3.0
        assert res["broadcast"] == {"stop": True}


def test_world1_is_identity():
    from fastft import distributed as D

    st = D.init_distributed("cpu")
    assert (st.rank, st.world_size, st.is_main, st.distributed, st.backend) == (0, 1, True, False, None)
    model = torch.nn.Linear(3, 2)
    for strategy in D.STRATEGIES:
        assert D.wrap_model(model, st, strategy) is model
    assert D.unwrap_model(model) is model
    with D.no_sync(model, True):
        pass
    t = torch.arange(6.0)
    assert D.all_reduce_sum(t) is t
    assert D.gather_for_metrics(t, st, 4).tolist() == [0, 1, 2, 3]
    idx = torch.tensor([2, 0, 1, 0])
    assert D.gather_for_metrics(torch.tensor([20.0, 0.0, 10.0, 5.0]), st, 3, index=idx).tolist() == [
        0,
        10,
        20,
    ]
    with pytest.raises(ValueError, match="evaluated by no rank"):
        D.gather_for_metrics(torch.tensor([1.0]), st, 2, index=torch.tensor([0]))
    with pytest.raises(ValueError, match="unknown distributed strategy"):
        D.wrap_model(model, st, "zero3")
    assert D.full_state_dict(model, st).keys() == model.state_dict().keys()
    D.barrier(st)
    D.cleanup(st)


def test_bad_environment_is_one_clear_error(monkeypatch):
    from fastft import distributed as D

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="launch with torchrun"):
        D.init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="not an integer"):
        D.init_distributed("cpu")


def test_cleanup_survives_dead_weak_proxies_on_the_heap():
    """cleanup() walks the heap for DeviceMeshes; a dead weakref.proxy anywhere in the process (any
    library may leave one) must not make it raise (isinstance() on one raises ReferenceError)."""
    import weakref

    import torch.distributed.device_mesh  # noqa: F401  (the heap walk runs only once it is imported)

    from fastft import distributed as D

    class Thing:
        pass

    t = Thing()
    holder = [weakref.proxy(t)]  # kept alive in a list gc tracks, its referent gone
    del t
    with pytest.raises(ReferenceError):
        isinstance(holder[0], torch.distributed.device_mesh.DeviceMesh)
    D.cleanup()


def test_cleanup_frees_a_group_a_live_ddp_model_still_holds(tmp_path):
    """A DDP wrapper's Reducer keeps its group (and the gloo threads) alive; cleanup() must free the
    group anyway, while the caller still holds the model (gloo_group asserts no thread is left)."""
    from fastft import distributed as D

    with W.gloo_group(str(tmp_path / "store"), rank=0, world=1):
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
        model(torch.ones(1, 3)).sum().backward()
    assert isinstance(D.unwrap_model(model), torch.nn.Linear)  # still referenced here, inner module intact
