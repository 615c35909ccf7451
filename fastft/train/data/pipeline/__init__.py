"""The data pipeline (run layer): ``prepare_data``: sources -> cleaning -> labels -> split -> limits + augmentation -> tokenization.

Decisions users see the effects of:

* **Sources** (:mod:`.sources`): ``train_file`` (+ ``validation_file``/``test_file``) wins over
  ``dataset``; ``dataset=None`` without files, or ``"rotten_tomatoes"``, is the offline default.
* **Labels** (the task's ``encode_labels``, jointly over all splits so a class seen only in
  validation is still known). ``--task auto`` asks the registered tasks in order (list values ->
  multi-label; numbers with a non-integer value -> regression; else single-label classification).
  ``num_labels`` is 1 for regression and 0 for causal_lm.
* **Cleaning** (:mod:`.clean`) per split, counted in ``report``.
* **Splits** (:mod:`.split`): one split given -> seeded, stratified (by the task's strata)
  ``split_ratios`` train/validation/test split; with ``split_group_column`` whole groups go to one
  split. Train + validation given -> test is carved out of train (ratio test/(train+test)); train +
  test -> validation likewise. A test ratio of 0 makes the test split the validation split. Indices
  (rows of the source, 0-based) go to ``output_dir/split_indices.json``. ``max_train_samples`` /
  ``max_eval_samples`` then take a seeded random subset of train / of validation and test.
* **Augmentation** (EDA) of the train split only; **tokenization** cached (:mod:`.tokenize`).
* **Images** (image input kinds, :mod:`~fastft.train.data.modalities`, :mod:`.images`): the sources give image references (image
  folder, path column, HF ``Image``), every image is checked up front (missing/corrupt -> DataError
  naming the row), cleaning/labels/splits/limits are the same, and the splits hold references
  (``image_ref``): the loader decodes, augments (train only) and processes them per batch.

Modules: :mod:`.gather` (the requested task and the raw sources), :mod:`.prepare` (``prepare_data``
and its steps), :mod:`.file` (``prepare_file`` for ``fastft eval`` / ``predict``).
"""

from fastft.train.data.pipeline.file import prepare_file
from fastft.train.data.pipeline.gather import data_fingerprints, requested_task
from fastft.train.data.pipeline.prepare import PreparedData, prepare_data

__all__ = ["PreparedData", "prepare_data", "prepare_file", "requested_task", "data_fingerprints"]
