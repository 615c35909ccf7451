"""The callback dispatcher (the trainer-side calls are tested end to end in tests/experiments)."""

from __future__ import annotations

import pytest

from fastft.train.callbacks import Callback, CallbackList


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
