"""The callback dispatcher, and the trainer calling it (a stop request ends the run like early stopping)."""

from __future__ import annotations

import json
import os

import pytest

from fastft.train.callbacks import Callback, CallbackList
from tests.train.trainutil import read_jsonl, workspace


class Rec(Callback):
    def __init__(self, stop_at=None):
        self.calls, self.stop_at = [], stop_at

    def on_start(self, config, output_dir, resumed):
        self.calls.append(("start", output_dir, resumed))

    def on_log(self, record):
        self.calls.append(("log", record["step"]))

    def on_evaluate(self, step, metrics):
        self.calls.append(("eval", step))
        return step == self.stop_at

    def on_end(self, results, output_dir):
        self.calls.append(("end", results["global_step"]))


def test_dispatch_in_order_and_any_stop_wins():
    a, b, base = Rec(), Rec(stop_at=4), Callback()
    cbs = CallbackList([a, b, base])
    cbs.on_start({}, "out", False)
    cbs.on_log({"step": 2})
    assert cbs.on_evaluate(2, {}) is False
    assert cbs.on_evaluate(4, {}) is True  # b asks to stop; a still saw the evaluation
    cbs.on_end({"global_step": 4}, "out")
    want = [("start", "out", False), ("log", 2), ("eval", 2), ("eval", 4), ("end", 4)]
    assert a.calls == want and b.calls == want
    assert base.on_evaluate(1, {}) is None and len(cbs) == 3


def test_rejects_non_callbacks():
    with pytest.raises(TypeError, match="Callback instances"):
        CallbackList([object()])


def test_trainer_calls_hooks_and_a_stop_ends_the_run(tmp_path):
    from fastft.train.config import TrainConfig
    from fastft.train.trainer import Trainer

    env = workspace(tmp_path, 24, 8, 8, bert=dict(head="base"))
    f, out = env["files"], str(tmp_path / "run")
    cfg = TrainConfig(
        model=env["bert"], train_file=f["train"], validation_file=f["validation"], test_file=f["test"],
        output_dir=out, cache_dir=env["cache"], batch_size=8, logging_steps=1, max_steps=6,
        eval_strategy="steps", eval_steps=2,
    )  # fmt: skip
    rec = Rec(stop_at=4)
    results = Trainer(cfg, callbacks=[rec]).train()
    assert results["stopped_early"] and results["global_step"] == 4  # stopped at the 2nd evaluation
    assert rec.calls[0] == ("start", out, False) and rec.calls[-1] == ("end", 4)
    logged = [(r["step"]) for r in read_jsonl(os.path.join(out, "metrics.jsonl"))]
    assert [c[1] for c in rec.calls if c[0] == "log"] == logged  # one on_log per metrics.jsonl line
    assert [c[1] for c in rec.calls if c[0] == "eval"] == [2, 4]
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["trainable_params"] > 0 and saved["peak_memory_mb"] > 0
