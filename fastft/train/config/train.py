"""``TrainConfig``: every knob of ``fastft train``, composed of one dataclass per concern.

The sections (:class:`~fastft.train.config.data.DataConfig` and those of
:mod:`fastft.train.config.sections`) are its base classes, so the fields stay flat: ``cfg.lr``,
``--lr``, ``lr:`` in a YAML file and the keys of ``train_config.json``, in the same order.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from fastft.train.config.data import DataConfig
from fastft.train.config.defaults import DEFAULT_DATASET, default_model_path
from fastft.train.config.sections import (
    EvalLogConfig,
    ModelConfig,
    NumericsConfig,
    OptimConfig,
    OutputConfig,
    ScheduleConfig,
    StrategyConfig,
)
from fastft.train.errors import ConfigError

__all__ = ["TrainConfig", "RESUME_EXEMPT"]


# Base classes in reverse field order: a dataclass collects the fields of its bases from the last
# one to the first, so ``dataclasses.fields(TrainConfig)`` starts with the data fields.
@dataclass
class TrainConfig(
    EvalLogConfig,
    NumericsConfig,
    StrategyConfig,
    OptimConfig,
    ScheduleConfig,
    OutputConfig,
    ModelConfig,
    DataConfig,
):
    """Every field of a run; see the sections for their meaning and ``fastft train --help``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def data(self) -> DataConfig:
        """The data part of this config, as a :class:`DataConfig` (a copy)."""
        return DataConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)})

    def resolved(self) -> TrainConfig:
        """A copy with every ``None``-means-default filled in (model path, dataset, output dir)."""
        c = dataclasses.replace(self)
        if c.model is None:
            c.model = default_model_path(ConfigError)
        if c.dataset is None and c.train_file is None:
            c.dataset = DEFAULT_DATASET
        if c.output_dir is None:
            if c.resume not in (None, "latest") and os.path.basename(os.path.normpath(c.resume)).startswith(
                "checkpoint-"
            ):
                c.output_dir = os.path.dirname(os.path.normpath(c.resume)) or "."
            else:
                name = c.dataset or os.path.splitext(os.path.basename(c.train_file or "run"))[0]
                c.output_dir = os.path.join("outputs", "fastft-" + name.replace("/", "_"))
        return c

    def validate(self) -> None:
        """Raise :class:`ConfigError` on the first invalid value (before anything is written): each
        section checks its own fields."""
        self.validate_schedule()
        self.validate_optim()
        self.validate_strategy()
        self.validate_output()
        self.validate_eval()
        self.validate_numerics()
        self.validate_data()


#: Fields that do not change what a resumed run computes (where it writes, logs, what device runs it,
#: test-only data): ``--resume`` compares every other field with the checkpoint's config.
RESUME_EXEMPT = frozenset(
    {
        "output_dir",
        "overwrite",
        "resume",
        "resume_force",
        "save_steps",
        "save_total_limit",
        "logging_steps",
        "report_to",
        "eval_batch_size",
        "test_file",
        "cache_dir",
        "device",
        "dist_strategy",
        "deterministic",
    }
)
