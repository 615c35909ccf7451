"""``TrainState``: the position and bookkeeping of a run; what ``trainer_state.json`` stores."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainState"]


def _runtime(default: Any) -> Any:
    """A field that lives only in the running process (not written to checkpoints)."""
    return field(default=default, metadata={"saved": False})


@dataclass
class TrainState:
    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of this epoch consumed by one rank
    best_metric: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None
    best_eval: dict | None = None
    bad_evals: int = 0  # evaluations without improvement (early stopping)
    skipped_steps: int = 0  # non-finite steps skipped
    unfrozen_groups: int | None = None  # gradual unfreezing
    nonfinite_in_a_row: int = _runtime(0)
    last_saved_step: int = _runtime(-1)
    stopped_early: bool = _runtime(False)

    def to_dict(self, **meta: Any) -> dict[str, Any]:
        """The saved fields plus run facts ``meta`` (world_size, total_steps, metric, config, ...)."""
        saved = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("saved", True)
        }
        return {**saved, **meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        """The saved fields of ``d`` (missing ones default; meta keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("saved", True)}
        return cls(**{k: v for k, v in d.items() if k in names})
