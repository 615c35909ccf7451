"""Contrastive losses over the global batch: 2 gloo ranks with ``gather=True`` equal one process.

Each rank holds its rows of one global batch of embeddings (the two ranks hold 3 and 4 rows, so
the uneven case is covered too) and computes its local loss against the all-gathered batch. With the
rank weights n_r / N, the ranks' losses add up to the single-process global-batch loss, the gradient
each rank gets for its own embedding rows is the single-process gradient of those rows, and the
temperature/bias gradients add up to the single-process ones.
"""

from __future__ import annotations

import json
import os
import traceback

import pytest
import torch

from tests.compare import assert_close
from tests.distributed.workers import free_port, torchrun_env

pytestmark = pytest.mark.distributed

WORLD = 2
ROWS = (3, 4)
D = 6


def _global_batch():
    g = torch.Generator().manual_seed(123)
    n = sum(ROWS)
    img = torch.randn(n, D, generator=g)
    txt = torch.randn(n, D, generator=g) + 0.5 * img
    return img, txt, torch.tensor(1.3), torch.tensor(-1.5)


def _losses(img, txt, t, b, gather):
    from fastft.functional import clip_loss, siglip_loss

    return {
        "clip_fused": clip_loss(img, txt, t, gather=gather),
        "clip_torch": clip_loss(img, txt, t, fused=False, gather=gather),
        "siglip": siglip_loss(img, txt, t, b, gather=gather),
    }


def _leaves(img, txt, t, b):
    return [x.clone().requires_grad_() for x in (img, txt, t, b)]


def _worker(rank: int, out: str, port: int) -> None:
    try:
        os.environ.update(torchrun_env(rank, WORLD, port))
        torch.set_num_threads(1)
        from fastft import distributed as dist_api

        st = dist_api.init_distributed("cpu")
        start = sum(ROWS[:rank])
        img, txt, t, b = _global_batch()
        res = {}
        for name in ("clip_fused", "clip_torch", "siglip"):
            leaves = _leaves(img[start : start + ROWS[rank]], txt[start : start + ROWS[rank]], t, b)
            loss = _losses(*leaves, gather=True)[name]
            weighted = loss * ROWS[rank] / sum(ROWS)
            weighted.backward()
            res[name] = {
                "loss": weighted.item(),
                "grads": [(x.grad if x.grad is not None else torch.zeros_like(x)).tolist() for x in leaves],
            }
        with open(os.path.join(out, f"result-{rank}.json"), "w") as f:
            json.dump(res, f)
        dist_api.barrier(st)
        dist_api.cleanup(st)
    except BaseException:
        with open(os.path.join(out, f"error-{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    out = str(tmp_path_factory.mktemp("gather"))
    try:
        mp.spawn(_worker, args=(out, free_port()), nprocs=WORLD, join=True)
    except Exception as e:
        errs = [open(os.path.join(out, f)).read() for f in sorted(os.listdir(out)) if f.startswith("error-")]
        pytest.fail("a rank failed:\n" + ("\n".join(errs) or str(e)))
    return [json.load(open(os.path.join(out, f"result-{r}.json"))) for r in range(WORLD)]


@pytest.mark.parametrize("name", ["clip_fused", "clip_torch", "siglip"])
def test_gathered_loss_and_grads_equal_global_batch(ranks, name):
    leaves = _leaves(*_global_batch())
    ref = _losses(*leaves, gather=False)[name]
    ref.backward()
    total = sum(r[name]["loss"] for r in ranks)
    assert_close(torch.tensor(total), ref, torch.float32, name=f"{name} loss")
    for k, what in enumerate(("d_img", "d_txt")):
        got = torch.cat([torch.tensor(r[name]["grads"][k]) for r in ranks], 0)
        assert_close(got, leaves[k].grad, torch.float32, name=f"{name} {what}")
    for k, what in ((2, "d_logit_scale"), (3, "d_logit_bias")):
        got = sum(torch.tensor(r[name]["grads"][k]) for r in ranks)
        assert_close(got, leaves[k].grad if leaves[k].grad is not None else torch.zeros(()), name=what)
    # the gradient of a row depends on the other rank's rows: a local-only loss would differ
    local = _losses(*_leaves(*[x[: ROWS[0]] if x.dim() else x for x in _global_batch()]), gather=False)[name]
    assert abs(local.item() * ROWS[0] / sum(ROWS) - ranks[0][name]["loss"]) > 1e-4


def test_torchrun_contrastive_run_equals_one_process(tmp_path):
    """``torchrun -m fastft train --task contrastive``: 2 ranks x 8 rows, embeddings gathered with
    gradients, log the same losses and gradient norms as one process with batches of 16."""
    import subprocess
    import sys

    from tests import child_env
    from tests.clip_util import save_tiny, write_pairs

    model = save_tiny(str(tmp_path / "clip"), "clip")
    data = write_pairs(str(tmp_path / "data"), 48, "pairs.csv", classes=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))
    }
    env = child_env(base=env, OMP_NUM_THREADS="1")
    args = ["train", "--task", "contrastive", "--model", model, "--train-file", data, "--max-steps", "2",
            "--logging-steps", "1", "--eval-strategy", "no", "--device", "cpu", "--no-group-by-length",
            "--contrastive-class-column", "colour", "--lr", "1e-3"]  # fmt: skip
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
              "127.0.0.1", "--master_port", str(free_port()), "-m", "fastft"]  # fmt: skip
    out = {name: str(tmp_path / name) for name in ("ddp", "one")}
    p = subprocess.run([*launch, *args, "--batch-size", "8", "--output-dir", out["ddp"]], env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    from fastft.cli import main

    assert main([*args, "--batch-size", "16", "--output-dir", out["one"]]) == 0  # one process, in this one
    records = {}
    for name, path in out.items():
        with open(os.path.join(path, "metrics.jsonl")) as fh:
            records[name] = [r for r in map(json.loads, fh) if r["type"] == "train"]
    assert len(records["ddp"]) == len(records["one"]) == 2
    for a, b in zip(records["ddp"], records["one"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
