"""The table of input kinds (:mod:`fastft.train.data.modalities`): lookup and the per-kind choices."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fastft.train.data.modalities import MODALITIES, ImageModality, TextModality, modality_of
from fastft.train.errors import ConfigError, DataError
from fastft.train.tasks import TASKS


def test_every_registered_task_has_a_kind_and_none_is_text():
    for task in TASKS.values():
        assert modality_of(task) is MODALITIES[task.modality]
    assert isinstance(modality_of(None), TextModality)
    assert isinstance(modality_of("image_text"), ImageModality)
    with pytest.raises(ValueError, match="unknown modality 'boxes'"):
        modality_of("boxes")


def test_kind_facts():
    text, image, pair = (MODALITIES[n] for n in ("text", "image", "image_text"))
    assert text.tokenized and not image.tokenized and not pair.tokenized
    assert (text.captions, image.captions, pair.captions) == (False, False, True)
    assert (text.new_head_expected, image.new_head_expected) == (False, True)
    with pytest.raises(DataError, match="is a folder"):
        text.check_folder("imgs")
    image.check_folder("imgs")


def test_augment_presets_per_kind():
    assert MODALITIES["text"].presets("eda") == [("eda", None)]
    with pytest.raises(ConfigError, match="flip augment images, and this is a text task"):
        MODALITIES["text"].presets("flip")
    with pytest.raises(ConfigError, match="eda edits texts, and this is an image task"):
        MODALITIES["image"].presets("eda")
    assert [n for n, _ in MODALITIES["image_text"].presets("flip,crop")] == ["flip", "crop"]


def test_model_of_the_other_kind_is_refused():
    task = SimpleNamespace(name="image_classification", modality="image")
    with pytest.raises(ConfigError, match=r"is a text model \(bert\)"):
        modality_of(task).check_model(task, "bert", "m", None)
    with pytest.raises(ConfigError, match="is a directory"):
        modality_of(task).check_model(task, "bert", "m", "imgs")
    with pytest.raises(ConfigError, match=r"is an image model \(vit\)"):
        modality_of(None).check_model(None, "vit", "m", None)
    modality_of("image_text").check_model(task, "bert", "m", None)  # two towers: no check
    modality_of(None).check_model(None, "some-unknown-type", "m", None)
