"""Config validation that belongs to the config (data fields included), and the typed DataConfig view."""

from __future__ import annotations

import pytest

from fastft.train.config import DataConfig, TrainConfig
from fastft.train.errors import ConfigError


def test_zero_validation_ratio_is_rejected_by_the_config(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("text,label\na,0\n")
    with pytest.raises(ConfigError, match="validation ratio must be > 0"):
        TrainConfig(train_file=str(f), split_ratios=[0.9, 0.0, 0.1]).validate()
    # with a validation file the validation ratio is unused
    TrainConfig(train_file=str(f), validation_file=str(f), split_ratios=[0.9, 0.0, 0.1]).validate()


def test_unknown_task_and_bad_augment_prob():
    with pytest.raises(ConfigError, match="--task 'ner-ish' is not one of auto"):
        TrainConfig(task="ner-ish").resolved().validate()
    with pytest.raises(ConfigError, match="--augment-prob"):
        TrainConfig(augment_prob=1.5).resolved().validate()
    TrainConfig(task="single_label_classification").resolved().validate()  # the HF spelling too


def test_data_view_is_a_typed_copy():
    cfg = TrainConfig(max_length=17, seed=3, text_column="review")
    d = cfg.data
    assert type(d) is DataConfig and (d.max_length, d.seed, d.text_column) == (17, 3, "review")
    d.max_length = 5
    assert cfg.max_length == 17
