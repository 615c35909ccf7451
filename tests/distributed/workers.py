"""Code that runs inside the 2 spawned ranks of tests/distributed (gloo on CPU, 127.0.0.1 only).

Each rank gets the environment torchrun would give it and goes through the public
``fastft.distributed`` API only, so the same code path as ``torchrun -m fastft train`` is exercised.
Results are written as JSON / safetensors into ``out`` and checked by the parent test process.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import json
import os
import socket
import traceback

import torch

WORLD = 2
STEPS = 3
ACCUM = 2  # micro-batches per optimizer step and rank
MICRO = 2  # rows per micro-batch
GLOBAL_BATCH = WORLD * ACCUM * MICRO
LR = 1e-2
MAX_GRAD_NORM = 0.05  # well below the tiny model's grad norm, so clipping is always active


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def make_model(seed: int = 0):
    from tests.models import build, tiny_bert_config

    return build("AutoModelForSequenceClassification", tiny_bert_config(num_labels=3), seed=seed)


def make_lora_model(seed: int = 0):
    """The tiny BERT with fastft LoRA (r=4) and fastft's patched attention and loss."""
    import fastft

    model = make_model(seed)
    fastft.add_lora(model, r=4, alpha=8)
    fastft.patch(model)
    return model


def make_data(steps: int = STEPS):
    """Global batches with padded, variable-length rows: (input_ids, attention_mask, labels) per step."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(steps):
        ids = torch.randint(3, 128, (GLOBAL_BATCH, 12), generator=g)
        lengths = torch.randint(4, 13, (GLOBAL_BATCH,), generator=g)
        mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
        labels = torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)
        out.append((ids * mask, mask, labels))
    return out


def make_optimizer(model):
    from fastft.optim import FusedAdamW

    return FusedAdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=LR,
        weight_decay=0.01,
        max_grad_norm=MAX_GRAD_NORM,
    )


def train_steps(model, opt, batches, rank: int, world: int, sync_ctx=None) -> list[float]:
    """Run one optimizer step per global batch; rank r takes its contiguous quarter of the rows.

    The loss of each micro-batch is its mean divided by ACCUM: equal micro-batches, so the gradient
    averaged over ranks and micro-batches is that of the mean over the global batch.
    """
    norms = []
    rows = GLOBAL_BATCH // world
    for ids, mask, labels in batches:
        accum = rows // MICRO
        for micro in range(accum):
            lo = rank * rows + micro * MICRO
            sl = slice(lo, lo + MICRO)
            ctx = sync_ctx(micro < accum - 1) if sync_ctx else _null()
            with ctx:
                loss = model(input_ids=ids[sl], attention_mask=mask[sl], labels=labels[sl]).loss / accum
                loss.backward()
        opt.step()
        norms.append(float(_full(opt.grad_norm)))
        opt.zero_grad(set_to_none=True)
    return norms


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _save_sd(path: str, sd: dict) -> None:
    from safetensors.torch import save_file

    # safetensors refuses shared storage (tied weights): clone every tensor.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}, path)


def run(rank: int, out: str, port: int) -> None:
    """Entry point for ``torch.multiprocessing.spawn``; any failure is written to ``out/error-<rank>``."""
    # A native crash (SIGSEGV/SIGABRT) leaves no Python traceback: faulthandler writes every thread's
    # stack to out/fault-<rank>.txt, which the parent shows when the rank dies.
    fault = open(os.path.join(out, f"fault-{rank}.txt"), "w")  # noqa: SIM115  (open until exit)
    faulthandler.enable(file=fault, all_threads=True)
    try:
        os.environ.update(torchrun_env(rank, WORLD, port))
        torch.set_num_threads(1)
        _run(rank, out)
        gc.collect()  # what is left now is torn down at interpreter exit
        with open(os.path.join(out, f"threads-{rank}.json"), "w") as f:
            json.dump(native_threads(), f)
    except BaseException:
        with open(os.path.join(out, f"error-{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise


def _run(rank: int, out: str) -> None:
    import torch.distributed as dist

    from fastft import distributed as D

    st = D.init_distributed("cpu")
    assert (st.rank, st.world_size, st.is_main, st.backend) == (rank, WORLD, rank == 0, "gloo"), st
    res: dict = {"rank": rank}
    batches = make_data(STEPS + 1)

    for strategy in ("ddp", "fsdp"):
        # Every rank initialises differently: wrap_model must make them all start from rank 0's weights.
        model = D.wrap_model(make_model(seed=rank), st, strategy)
        assert D.is_fsdp(model) == (strategy == "fsdp")
        opt = make_optimizer(model)
        norms = train_steps(model, opt, batches[:STEPS], rank, WORLD, lambda a, m=model: D.no_sync(m, a))
        res[f"{strategy}_norms"] = norms
        sd = D.full_state_dict(model, st)
        osd = D.optim_state_dict(model, opt, st)
        if st.is_main:
            _save_sd(os.path.join(out, f"{strategy}-model.safetensors"), sd)
            torch.save(osd, os.path.join(out, f"{strategy}-optim.pt"))
        else:
            res[f"{strategy}_nonmain_sd_len"] = len(sd) if strategy == "fsdp" else None
        D.barrier(st)

        # Resume from what rank 0 wrote, in fresh wrapped objects, and take one more step in both.
        model2 = D.wrap_model(make_model(seed=7), st, strategy)
        opt2 = make_optimizer(model2)
        from safetensors.torch import load_file

        D.load_full_state_dict(model2, load_file(os.path.join(out, f"{strategy}-model.safetensors")), st)
        D.load_optim_state_dict(
            model2, opt2, torch.load(os.path.join(out, f"{strategy}-optim.pt"), weights_only=True), st
        )
        n1 = train_steps(model, opt, batches[STEPS:], rank, WORLD, lambda a, m=model: D.no_sync(m, a))
        n2 = train_steps(model2, opt2, batches[STEPS:], rank, WORLD, lambda a, m=model2: D.no_sync(m, a))
        sd1, sd2 = D.full_state_dict(model, st), D.full_state_dict(model2, st)
        if st.is_main:
            res[f"{strategy}_resume_norms"] = [n1, n2]
            res[f"{strategy}_resume_maxdiff"] = max((sd1[k] - sd2[k]).abs().max().item() for k in sd1)

    # LoRA + patched attention / loss inside DDP and FSDP2 (rank 1 starts from other LoRA factors).
    from fastft.patching import patched_parts

    for strategy in ("ddp", "fsdp"):
        model = D.wrap_model(make_lora_model(seed=rank), st, strategy)
        assert patched_parts(D.unwrap_model(model)) == ["attention", "loss"]
        opt = make_optimizer(model)
        res[f"{strategy}_lora_norms"] = train_steps(
            model, opt, batches[:STEPS], rank, WORLD, lambda a, m=model: D.no_sync(m, a)
        )
        sd = D.full_state_dict(model, st)
        if st.is_main:
            _save_sd(os.path.join(out, f"{strategy}-lora.safetensors"), sd)

    # DDP's no_sync really skips the all-reduce: after one no_sync backward the ranks' grads differ,
    # after a synced backward they agree.
    model = D.wrap_model(make_model(), st, "ddp")
    ids, mask, labels = batches[0]
    sl = slice(rank * MICRO, rank * MICRO + MICRO)
    with D.no_sync(model, True):
        model(input_ids=ids[sl], attention_mask=mask[sl], labels=labels[sl]).loss.backward()
    w = D.unwrap_model(model).classifier.weight
    unsynced = w.grad.clone()
    model(input_ids=ids[sl], attention_mask=mask[sl], labels=labels[sl]).loss.backward()
    synced = w.grad.clone()
    gathered = [torch.empty_like(unsynced) for _ in range(WORLD)]
    dist.all_gather(gathered, unsynced)
    res["no_sync_ranks_differ"] = not torch.equal(gathered[0], gathered[1])
    dist.all_gather(gathered, synced)
    res["sync_ranks_equal"] = torch.allclose(gathered[0], gathered[1])

    # gather_for_metrics: 7 samples sharded into 2 x 4 with one padding duplicate.
    total = 7
    contiguous = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 0]][rank], dtype=torch.float32)[:, None] * torch.ones(
        1, 3
    )
    res["gather_contiguous"] = D.gather_for_metrics(contiguous, st, total).tolist()
    inter_idx = torch.tensor([[0, 2, 4, 6], [1, 3, 5, 0]][rank])
    res["gather_index"] = D.gather_for_metrics(inter_idx.float() * 10, st, total, index=inter_idx).tolist()
    # ... and with the real eval loader: each row's input id encodes its dataset row.
    from types import SimpleNamespace

    import datasets

    from fastft.train.data.loader import make_dataloader

    ds = datasets.Dataset.from_dict(
        {"input_ids": [[100 + i] * (1 + i % 3) for i in range(total)], "labels": [0] * total}
    )
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=None, padding_side="right")
    loader = make_dataloader(
        ds,
        tok,
        batch_size=2,
        shuffle=False,
        seed=0,
        group_by_length=False,
        task="classification",
        rank=rank,
        world_size=WORLD,
    )
    batches = list(loader)
    local = torch.cat([b["input_ids"][:, 0] for b in batches]).float()
    index = torch.cat([b["index"] for b in batches])
    # each batch says which of its rows are order padding (repeats): the rest is each real row once
    real = [b["input_ids"][:, 0][~b["repeat"]].tolist() for b in batches]
    res["eval_real_rows"] = sorted(D.broadcast_object(real, st, src=0) + D.broadcast_object(real, st, src=1))
    res["index_matches_rows"] = bool((local == 100 + index.float()).all())
    res["gather_loader"] = D.gather_for_metrics(local, st, total, index=index).tolist()
    # ranks with different row counts and different trailing dims (padded with pad_value)
    uneven = torch.full((3 if rank == 0 else 2, 2 + rank), float(rank + 1))
    res["gather_uneven"] = D.gather_for_metrics(uneven, st, 5, pad_value=-1).tolist()
    res["all_reduce_sum"] = D.all_reduce_sum(torch.tensor([float(rank + 1)])).item()
    res["broadcast"] = D.broadcast_object({"stop": rank == 0}, st)

    with open(os.path.join(out, f"result-{rank}.json"), "w") as f:
        json.dump(res, f)
    D.barrier(st)
    D.cleanup(st)
    with open(os.path.join(out, f"threads-cleanup-{rank}.json"), "w") as f:
        json.dump(native_threads(), f)


@contextlib.contextmanager
def gloo_group(store_path: str, rank: int, world: int):
    """A gloo process group over a FileStore for a test that builds its own group, torn down the way
    ``fastft.distributed`` does it, and checked: no gloo / TCPStore thread may outlive the block.

    ``dist.destroy_process_group()`` alone leaves the group alive (``torch.distributed.nn``'s default
    arguments and DeviceMesh / DTensor caches keep it), so its gloo threads run into interpreter exit,
    where the last collective's work object is freed on a gloo thread while Python is finalising: that
    thread then takes the GIL of a dying interpreter and the rank aborts ("terminate called without an
    active exception"; gdb: ``~AsyncAllgatherCoalescedWork`` -> ``decref_pyobject`` -> ``take_gil`` ->
    ``pthread_exit`` inside ``ProcessGroupGloo::runLoop``)."""
    import torch.distributed as dist

    from fastft import distributed as D
    from fastft.distributed.launch import _import_group_defaults

    _import_group_defaults()  # torch.distributed.nn before the group exists, as init_distributed does
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        yield
    finally:
        D.cleanup()
    left = backend_threads()
    assert not left, f"rank {rank}: backend threads outlive the process group: {left}"


def backend_threads(threads: list[str] | None = None) -> list[str]:
    """The gloo / TCPStore threads among ``threads`` (default: this process's native threads)."""
    return [t for t in (native_threads() if threads is None else threads) if "gloo" in t or "tcpstore" in t]


def native_threads() -> list[str]:
    """Names of this process's OS threads (Linux /proc; [] elsewhere)."""
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return []
    names = []
    for t in tids:
        try:
            with open(f"/proc/self/task/{t}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return sorted(names)
