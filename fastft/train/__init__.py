"""The fastft trainer: ``TrainConfig`` (every knob, one dataclass) and ``Trainer(cfg).train()``.

Data loading/batching lives in :mod:`fastft.train.data`, metrics in :mod:`fastft.train.metrics`;
the CLI (``fastft train|eval|predict``) is :mod:`fastft.cli`.
"""

from fastft.train.config import ConfigError, TrainConfig
from fastft.train.trainer import Trainer, TrainingError

__all__ = ["TrainConfig", "Trainer", "ConfigError", "TrainingError"]
