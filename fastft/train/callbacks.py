"""Training callbacks: the only interface the trainer knows for trackers, sweeps and the like.

The trainer calls, on every rank unless a callback filters itself (trackers log on rank 0 only):

* ``on_start(config, output_dir, resumed)`` once, after the output dir is prepared (``config`` is the
  resolved config as a dict);
* ``on_step(step)`` after every optimizer step, before that step's evaluation and checkpoint (e.g.
  ``trainer.request_stop()`` there ends the run with this step's checkpoint);
* ``on_log(record)`` for every record appended to ``metrics.jsonl`` (``type`` train / eval / test);
  an evaluation's record (``final`` True at the run's last step) comes before its ``on_evaluate``;
* ``on_evaluate(step, metrics)`` after each validation evaluation; returning ``True`` asks the run to
  stop (a pruned sweep trial): the trainer finishes as after early stopping;
* ``on_end(results, output_dir)`` once, after ``results.json`` is written.

A callback that raises is the caller's bug and propagates; trackers catch their own I/O errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["Callback", "CallbackList"]


class Callback:
    """Base class: every hook is a no-op, override the ones you need."""

    def on_start(self, config: dict[str, Any], output_dir: str, resumed: bool) -> None:
        pass

    def on_step(self, step: int) -> None:
        pass

    def on_log(self, record: dict[str, Any]) -> None:
        pass

    def on_evaluate(self, step: int, metrics: dict[str, Any]) -> bool | None:
        return None

    def on_end(self, results: dict[str, Any], output_dir: str) -> None:
        pass


class CallbackList(Callback):
    """Dispatches each hook to every callback in order; ``on_evaluate`` is True if any asked to stop
    (every callback still sees the evaluation)."""

    def __init__(self, callbacks: Iterable[Callback] | None = None) -> None:
        self.callbacks: list[Callback] = []
        for cb in callbacks or ():
            self.add(cb)

    def add(self, cb: Callback) -> None:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be fastft.train.callbacks.Callback instances, got {type(cb)!r}")
        self.callbacks.append(cb)

    def __len__(self) -> int:
        return len(self.callbacks)

    def __iter__(self):
        return iter(self.callbacks)

    def on_start(self, config: dict[str, Any], output_dir: str, resumed: bool) -> None:
        for cb in self.callbacks:
            cb.on_start(config, output_dir, resumed)

    def on_step(self, step: int) -> None:
        for cb in self.callbacks:
            cb.on_step(step)

    def on_log(self, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_log(record)

    def on_evaluate(self, step: int, metrics: dict[str, Any]) -> bool:
        stop = False
        for cb in self.callbacks:
            stop = bool(cb.on_evaluate(step, metrics)) or stop
        return stop

    def on_end(self, results: dict[str, Any], output_dir: str) -> None:
        for cb in self.callbacks:
            cb.on_end(results, output_dir)
