"""The fastft trainer: ``TrainConfig`` (every knob, one flat dataclass) and ``Trainer(cfg).train()``.

Layers, bottom first (``tests/test_layers.py`` checks that imports only go down):
:mod:`~fastft.train.errors` and :mod:`~fastft.train.numerics`; :mod:`~fastft.train.config`
(self-validating sections); the libraries (:mod:`~fastft.train.models`, :mod:`~fastft.train.metrics`,
the data readers in :mod:`~fastft.train.data`, checkpoints, output folder, trackers, strategies);
:mod:`~fastft.train.tasks` (one file per task + the registry); the run layer
(:mod:`~fastft.train.data.pipeline`, :mod:`~fastft.train.data.loader`, :mod:`~fastft.train.setup`
-> a ``Run``, :mod:`~fastft.train.step`, :mod:`~fastft.train.loop`, :mod:`~fastft.train.evaluate`,
:mod:`~fastft.train.resume`, :mod:`~fastft.train.finish`); :mod:`~fastft.train.trainer` (the
facade); the CLI (``fastft train|eval|predict``) is :mod:`fastft.cli`.
"""

from fastft.train.config import DataConfig, TrainConfig
from fastft.train.errors import ConfigError
from fastft.train.trainer import Trainer, TrainingError

__all__ = ["TrainConfig", "DataConfig", "Trainer", "ConfigError", "TrainingError"]
