"""What ends a ``fastft sweep`` early: a stop signal, or trials that keep failing.

**Signals.** While the study runs, :class:`SweepControl` holds SIGINT/SIGTERM. A trial's trainer
installs its own handlers while it trains and puts ours back after, so each signal reaches one of
the two: ours asks the running trainer (if any, e.g. still loading) to stop; the trainer's is read
back after the trial (:meth:`SweepControl.saw`). Either way the trial saves a checkpoint and ends as
a failed trial holding its folder (the next run of the same command resumes it), the study stops,
and the sweep ends with one line and exit code 128 + signal. A second signal stops at once.

**Failures.** A trial that raises a bad-input or training error ends as a failed trial with a
one-line ``error`` attribute, printed as one line. Only complete and pruned trials count towards
``--trials``, so a config that can never train would be retried for ever: ``max_failures`` failed
trials in a row stop the study.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

__all__ = ["SweepControl", "TrialInterrupted"]


class TrialInterrupted(Exception):
    """Raised by the objective for a trial that a stop signal ended (Optuna records it as failed)."""


class SweepControl:
    """Stop signals and consecutive failures of one sweep process; also the Optuna trial callback."""

    def __init__(self, max_failures: int = 3) -> None:
        self.max_failures = max_failures
        self.signum: int | None = None
        self.trainer: Any = None  # the running trial's trainer, to ask it to stop
        self.failures: list[tuple[int, str]] = []  # (trial number, error) of the failures in a row
        self.bad_input = False  # the last failure was a config/data error (exit 2), else a failed run (1)
        self.interrupted: tuple[int, str] | None = None  # (trial number, run folder) a signal ended
        self._old: dict[int, Any] = {}

    # -- signals ------------------------------------------------------------------------------------
    def __enter__(self) -> SweepControl:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _handler(self, signum: int, frame: Any) -> None:
        from fastft.train.signals import StopNow

        if self.signum is not None:  # the second one: stop now (a third gets the default action)
            signal.signal(signum, signal.SIG_DFL)
            raise StopNow(signum)
        self.saw(signum)
        if self.trainer is not None:
            self.trainer.request_stop(signum)
        print(
            f"\n{signal.Signals(signum).name}: the sweep stops after the current trial saves a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def saw(self, signum: int | None) -> None:
        """Record a stop signal (also one that the trial's trainer caught)."""
        if signum is not None and self.signum is None:
            self.signum = int(signum)

    # -- Optuna callback ----------------------------------------------------------------------------
    def __call__(self, study, trial) -> None:
        state = trial.state.name
        if state == "FAIL" and trial.user_attrs.get("interrupted_dir"):
            self.interrupted = (trial.number, trial.user_attrs["interrupted_dir"])
        elif state == "FAIL" and trial.user_attrs.get("error"):
            self.failures.append((trial.number, trial.user_attrs["error"]))
            print(f"sweep trial {trial.number} failed: {trial.user_attrs['error']}", flush=True)
        elif state in ("COMPLETE", "PRUNED"):
            self.failures = []
        if self.stopped:
            study.stop()

    @property
    def stopped(self) -> bool:
        return self.signum is not None or len(self.failures) >= self.max_failures

    def outcome(self, done: int, trials: int) -> tuple[int, str] | None:
        """``(exit code, line)`` when the sweep was stopped early, else None."""
        again = f"continue the study ({done}/{trials} trials done)"
        if self.signum is not None:
            name = signal.Signals(self.signum).name
            if self.interrupted is None:
                return 128 + self.signum, f"interrupted by {name}; run the same command again to {again}"
            n, run_dir = self.interrupted
            return 128 + self.signum, (
                f"interrupted by {name}: trial {n} saved a checkpoint in {run_dir}; run the same command "
                f"again to resume it and {again}"
            )
        if len(self.failures) >= self.max_failures:
            numbers = ", ".join(str(n) for n, _ in self.failures)
            kind = "error" if self.bad_input else "failed"
            return 2 if self.bad_input else 1, (
                f"{kind}: {len(self.failures)} trials in a row failed (trials {numbers}), the last with: "
                f"{self.failures[-1][1]}; fix that, then run the same command again to {again}"
            )
        return None
