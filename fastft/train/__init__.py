"""The fastft trainer: ``TrainConfig`` (every knob, one dataclass) and ``Trainer(cfg).train()``.

Layout: :mod:`~fastft.train.tasks` (one file per task + the registry), :mod:`~fastft.train.data`
(sources, cleaning, split, tokenization, batching), :mod:`~fastft.train.models` (loading, family
facts, strategies), :mod:`~fastft.train.schedule` (optimizer + LR schedule),
:mod:`~fastft.train.evaluate`, :mod:`~fastft.train.state` (``TrainState``),
:mod:`~fastft.train.checkpoint`, :mod:`~fastft.train.trainer` (the loop); the CLI
(``fastft train|eval|predict``) is :mod:`fastft.cli`.
"""

from fastft.train.config import DataConfig, TrainConfig
from fastft.train.errors import ConfigError
from fastft.train.trainer import Trainer, TrainingError

__all__ = ["TrainConfig", "DataConfig", "Trainer", "ConfigError", "TrainingError"]
