"""``torchrun --nproc_per_node 2 -m fastft train`` end to end (gloo on CPU, 127.0.0.1 only).

Four launches of the real CLI on a tiny random BERT (the MiniLM tokenizer) and 80 labelled rows:

* ``ref``: 1 process, batch 4 x accum 4;
* ``ddp`` and ``fsdp``: 2 processes, batch 4 x accum 2 (the same 16-row global batches; 56 train
  rows fill whole batches for 1 and 2 ranks, so both see the very same batch order), every
  write below the output dir audited per rank through a ``sitecustomize`` audit hook;
* ``resumed``: 1 process resuming the DDP run's checkpoint-2 (data position re-sharded).

The eval batch size (6) does not divide the 16 validation rows: the 2-rank eval order is padded
with repeated rows, which must neither count twice nor push real rows out.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

from tests import child_env
from tests.compare import assert_close
from tests.distributed.workers import free_port
from tests.models import build, minilm_dir, tiny_bert_config

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


# Installed into every launched process: records each write-like event below FASTFT_AUDIT_ROOT,
# per rank, into FASTFT_AUDIT_LOG-<rank> (opened before the hook exists, written with os.write).
AUDIT_HOOK = r"""
import os, sys
_root = os.environ.get("FASTFT_AUDIT_ROOT")
if _root:
    _fd = os.open(os.environ["FASTFT_AUDIT_LOG"] + "-" + os.environ.get("RANK", "single"),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    _W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if not (isinstance(mode, str) and any(c in mode for c in "wax+")) and not (
                isinstance(flags, int) and flags & _W
            ):
                return
        elif event not in ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree",
                           "shutil.move", "shutil.copyfile", "os.truncate"):
            return
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            p = os.path.abspath(os.fsdecode(path))
            if p.startswith(_root):
                os.write(_fd, (event + " " + p + "\n").encode())

    sys.addaudithook(_hook)
"""

COMMON = [
    "--max-length", "32", "--batch-size", "4", "--max-steps", "4", "--eval-strategy", "steps",
    "--eval-steps", "2", "--eval-batch-size", "6", "--logging-steps", "1", "--lr", "2e-3",
    "--max-grad-norm", "0.01", "--seed", "3", "--warmup-steps", "0",
]  # fmt: skip


def _write_data(path: str) -> None:
    rng = random.Random(0)
    good, bad = "great fine lovely superb moving".split(), "awful dull boring weak bland".split()
    filler = "the movie plot actor scene story was and".split()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(80):
            lab = i % 2
            words = rng.choices(filler, k=rng.randint(2, 12)) + rng.choices(good if lab else bad, k=2)
            rng.shuffle(words)
            w.writerow([f"r{i} " + " ".join(words), "pos" if lab else "neg"])


def _launch_env(*paths: str, **env: str) -> dict:
    """This process's environment without its own torchrun variables (if any), one thread per rank."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))
    }
    return child_env(*paths, base=base, OMP_NUM_THREADS="1", **env)


def _torchrun(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "-m", "fastft", "train", *args]  # fmt: skip


def _launch(args: list[str], env: dict, nproc: int, cwd: str) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", "fastft", "train", *args]
    else:
        cmd = _torchrun(nproc, args)
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:6])} ... exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def _events(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _tree(out: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    work = str(tmp_path_factory.mktemp("torchrun"))
    model_dir = os.path.join(work, "model")
    build(
        "AutoModelForSequenceClassification", tiny_bert_config(vocab_size=tok.vocab_size, num_labels=2)
    ).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = os.path.join(work, "train.csv")
    _write_data(data)
    hook_dir = os.path.join(work, "hook")
    os.makedirs(hook_dir)
    with open(os.path.join(hook_dir, "sitecustomize.py"), "w") as f:
        f.write(AUDIT_HOOK)
    env = _launch_env(
        hook_dir,
        FASTFT_AUDIT_ROOT=os.path.join(work, "runs"),
        FASTFT_AUDIT_LOG=os.path.join(hook_dir, "audit"),
    )
    base = ["--model", model_dir, "--train-file", data, "--cache-dir", os.path.join(work, "cache"), *COMMON]
    out = {name: os.path.join(work, "runs", name) for name in ("ref", "ddp", "fsdp", "resumed")}
    logs = {}
    logs["ref"] = _launch([*base, "--grad-accum", "4", "--output-dir", out["ref"]], env, 1, work).stdout
    logs["ddp"] = _launch([*base, "--grad-accum", "2", "--output-dir", out["ddp"]], env, 2, work).stdout
    audit = {}
    for rank in (0, 1):
        path = os.path.join(hook_dir, f"audit-{rank}")
        audit[("ddp", rank)] = open(path).read().splitlines() if os.path.exists(path) else []
        if os.path.exists(path):
            os.remove(path)
    fsdp_args = [*base, "--grad-accum", "2", "--dist-strategy", "fsdp", "--output-dir", out["fsdp"]]
    logs["fsdp"] = _launch(fsdp_args, env, 2, work).stdout
    for rank in (0, 1):
        path = os.path.join(hook_dir, f"audit-{rank}")
        audit[("fsdp", rank)] = open(path).read().splitlines() if os.path.exists(path) else []
    # the 2-process run's checkpoint-2 continued in one process (accum 4 keeps the global batch)
    shutil.copytree(out["ddp"], out["resumed"])
    resume = [*base, "--grad-accum", "4", "--output-dir", out["resumed"], "--resume",
              os.path.join(out["resumed"], "checkpoint-2")]  # fmt: skip
    logs["resumed"] = _launch(resume, env, 1, work).stdout
    return out, audit, logs


def _train_records(out):
    return [e for e in _events(out) if e["type"] == "train"]


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_logged_loss_and_grad_norm_equal_single_process(runs, name):
    out, _, _ = runs
    ref, got = _train_records(out["ref"]), _train_records(out[name])
    assert [e["step"] for e in got] == [e["step"] for e in ref] == [1, 2, 3, 4]
    for a, b in zip(got, ref):
        assert a["grad_norm"] > 0.01, "clipping must be active"
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), f"step {a['step']} grad norm"
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), f"step {a['step']} loss"
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_eval_metrics_equal_single_process(runs, name):
    """16 validation rows, eval batch 6, 2 ranks: 24 padded rows of which 8 are repeats."""
    out, _, _ = runs
    ref = [e for e in _events(out["ref"]) if e["type"] in ("eval", "test")]
    got = [e for e in _events(out[name]) if e["type"] in ("eval", "test")]
    assert [(e["type"], e["step"]) for e in got] == [(e["type"], e["step"]) for e in ref]
    for a, b in zip(got, ref):
        for key in ("loss", "accuracy", "f1_macro", "auc_roc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), f"{a['type']}@{a['step']} {key}"
    res, ref_res = (json.load(open(os.path.join(out[n], "results.json"))) for n in (name, "ref"))
    assert res["test"]["confusion_matrix"] == ref_res["test"]["confusion_matrix"]
    assert sum(map(sum, res["test"]["confusion_matrix"])) == 8  # every test row exactly once


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_final_model_equals_single_process(runs, name):
    from safetensors.torch import load_file

    out, _, _ = runs
    ref = load_file(os.path.join(out["ref"], "model.safetensors"))
    got = load_file(os.path.join(out[name], "model.safetensors"))
    assert sorted(got) == sorted(ref)
    for k in ref:
        assert_close(got[k], ref[k], torch.float32, name=f"{name}:{k}")


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_only_rank0_writes(runs, name):
    out, audit, logs = runs
    assert audit[(name, 0)], "the audit hook saw no write at all: it is not installed"
    assert audit[(name, 1)] == [], f"rank 1 wrote below the output dir: {audit[(name, 1)][:5]}"
    assert _tree(out[name]) == _tree(out["ref"])
    assert len(_events(out[name])) == len(_events(out["ref"]))
    assert logs[name].count("TEST ACCURACY") == 1  # the final report is printed once


def test_two_process_checkpoint_resumes_in_one_process(runs):
    """checkpoint-2 of the 2-rank run, continued by 1 process, ends where the 1-process run ends."""
    from safetensors.torch import load_file

    out, _, _ = runs
    state = json.load(open(os.path.join(out["ddp"], "checkpoint-2", "trainer_state.json")))
    assert state["global_step"] == 2
    resumed, ref = _train_records(out["resumed"]), _train_records(out["ref"])
    assert [e["step"] for e in resumed] == [1, 2, 3, 4]
    for a, b in zip(resumed[2:], ref[2:]):  # steps taken after the resume, in one process
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), f"step {a['step']}"
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5), f"step {a['step']}"
    got = load_file(os.path.join(out["resumed"], "model.safetensors"))
    for k, v in load_file(os.path.join(out["ref"], "model.safetensors")).items():
        assert_close(got[k], v, torch.float32, name=k)


def test_a_locked_output_dir_stops_every_rank_at_once(tmp_path):
    """Rank 0 is refused the run lock: rank 1 stops with it (before: a gloo traceback from the next
    collective), and the refusal is printed once, by rank 0."""
    from fastft.train import outdir as od

    data, out = str(tmp_path / "train.csv"), str(tmp_path / "run")
    _write_data(data)
    lock = od.acquire(out, argv=["fastft", "train", "(the test's run)"])
    try:
        args = ["--model", minilm_dir(), "--train-file", data, "--output-dir", out, *COMMON]
        p = subprocess.run(
            _torchrun(2, args), env=_launch_env(), cwd=str(tmp_path), capture_output=True, text=True,
            timeout=240,
        )  # fmt: skip
    finally:
        lock.release()
    assert p.returncode != 0
    refusals = [ln for ln in p.stderr.splitlines() if ln.startswith("fastft train: error:")]
    assert len(refusals) == 1, p.stderr[-3000:]
    assert str(os.getpid()) in refusals[0], refusals[0]  # it names the process holding the lock
    assert "fastft/" not in p.stderr, p.stderr[-3000:]  # no traceback from a rank
