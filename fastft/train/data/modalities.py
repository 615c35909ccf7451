"""The input kinds of tasks: one :class:`Modality` per value of ``Task.modality``, holding everything
the data pipeline, the loader and the model checks do differently for that kind of input.

* ``"text"``: a row is a text (+ pair), cleaned by :func:`~fastft.train.data.clean.clean`, augmented
  by EDA copies of train rows and tokenized up front; batches are padded token ids.
* ``"image"``: a row is an image reference (path or encoded bytes); every image is opened up front,
  the splits hold references and the loader decodes, augments (``--augment`` image presets, per
  sample) and processes them per batch.
* ``"image_text"``: an image plus a caption column (tables only, no image folders); its columns
  depend on the run's options, so the task is configured before its sources are read.

Callers look the kind up once (:func:`modality_of`, from a task, a name, or ``None`` for
``--task auto`` on a data file: a text task) and call its methods unconditionally; a new kind of
input is one new class here plus its entry in :data:`MODALITIES`. ``task`` arguments are
:class:`~fastft.train.tasks.base.Task` objects (a layer up: read, never imported).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from fastft.train import vision
from fastft.train.augment import augment_rows
from fastft.train.data.clean import clean, is_word_list
from fastft.train.data.collate import ImageCollator, TextCollator
from fastft.train.data.images import check_images, clean_images, image_dataset, load_image_sources, mode_note
from fastft.train.data.sources import Raw
from fastft.train.data.tokenize import effective_max_length, tokenize
from fastft.train.errors import ConfigError, DataError

__all__ = ["Modality", "TextModality", "ImageModality", "ImageTextModality", "MODALITIES", "modality_of"]

log = logging.getLogger("fastft")
SPLITS = ("train", "validation", "test")

#: transformers' auto-model mappings whose model types are text / image models (for "a text model
#: given to an image task" and the reverse).
TEXT_MAPPINGS = (
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
)
IMAGE_MAPPINGS = ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",)


def _model_types(names: tuple[str, ...]) -> set[str]:
    from transformers.models.auto import modeling_auto

    return {t for n in names for t in getattr(modeling_auto, n, {})}


class Modality:
    """One kind of task input. The defaults are the text kind's where a default is natural."""

    name: str = ""
    #: rows are texts the pipeline tokenizes up front (False: references the loader decodes per batch).
    tokenized: bool = True
    #: image rows carry a caption column beside the image.
    captions: bool = False
    #: a classifier checkpoint with another label count gets a new head without ``--num-labels``
    #: (and a start-up note says so): image checkpoints mostly carry ImageNet's 1000 classes.
    new_head_expected: bool = False
    #: the auto-model mappings of this kind's models, and of the models that never fit it.
    own_models: tuple[str, ...] = ()
    foreign_models: tuple[str, ...] = ()

    # ---- sources ---------------------------------------------------------------------------------
    def requested(self, task, cfg):
        """The task ``--task`` names, as its sources are read (``cfg``: a DataConfig)."""
        return task

    def check_folder(self, folder: str) -> None:
        """A folder given as a data file: fine for kinds that read image folders."""

    def read_sources(self, cfg, task, report: dict) -> tuple[dict[str, Raw], dict] | None:
        """(raw splits, columns used) read by this kind's own reader; ``None``: the pipeline's text
        readers (files, hub, the offline Rotten Tomatoes) read them."""
        return None

    # ---- cleaning, checks, augmentation ----------------------------------------------------------
    def clean(self, raw: Raw, need_labels: bool) -> tuple[Raw, dict]:
        """Drop empty / duplicate / unlabelled rows; -> (kept rows, dropped counts)."""
        raise NotImplementedError

    def check_rows(self, raws: dict[str, Raw], report: dict) -> None:
        """Up-front checks of the cleaned rows of every split (may add notes to ``report``)."""

    def presets(self, spec: str | None) -> list[tuple[str, float | None]]:
        """The ``--augment`` presets of ``spec`` that fit this kind (ConfigError for the others)."""
        raise NotImplementedError

    def augment(self, raws: dict[str, Raw], cfg, report: dict) -> None:
        """Apply (or record) ``cfg.augment`` for the train split; the presets must fit (DataError)."""
        try:
            self.presets(cfg.augment)
        except ConfigError as e:
            raise DataError(str(e)) from None

    # ---- splits and batches ----------------------------------------------------------------------
    def build_splits(self, raws: dict[str, Raw], task, tokenizer, cfg, cols, report: dict) -> dict:
        """The final splits as ``datasets.Dataset`` objects (test = validation stays one object)."""
        raise NotImplementedError

    def batch_lengths(self, ds) -> list[int] | None:
        """Each row's length for length-grouped batches; ``None``: no lengths (no grouping)."""
        return list(ds["length"]) if "length" in ds.column_names else [len(x) for x in ds["input_ids"]]

    def collator(
        self, tokenizer, task, *, pad_to_max_length, max_length, token_dropout, augment, seed, epoch
    ):
        """The loader's collate: a batch's dataset rows -> model inputs (+ labels)."""
        return TextCollator(tokenizer, task, pad_to_max_length, max_length, token_dropout, seed, epoch)

    # ---- models ----------------------------------------------------------------------------------
    def check_model(self, task, model_type: str | None, path: str, folder: str | None) -> None:
        """A model of another kind (a text model for an image task, ...): ConfigError. Model types
        of neither kind pass (their loading error is the one line then)."""
        if self.foreign_models and model_type in _model_types(self.foreign_models):
            if model_type not in _model_types(self.own_models):
                raise self.foreign_model_error(task, model_type, path, folder)

    def foreign_model_error(self, task, model_type: str, path: str, folder: str | None) -> ConfigError:
        raise NotImplementedError

    def fit_model(self, model, tokenizer):
        """The loaded task model checked against / fitted to its preprocessor."""
        return model


class TextModality(Modality):
    name = "text"
    own_models, foreign_models = TEXT_MAPPINGS, IMAGE_MAPPINGS

    def check_folder(self, folder: str) -> None:
        raise DataError(
            f"{folder} is a folder: folders of images need --task image_classification; text tasks take "
            "a data file (csv, tsv, json, jsonl, parquet)"
        )

    def clean(self, raw: Raw, need_labels: bool) -> tuple[Raw, dict]:
        return clean(raw, need_labels=need_labels)

    def presets(self, spec: str | None) -> list[tuple[str, float | None]]:
        return vision.text_presets(spec)

    def augment(self, raws: dict[str, Raw], cfg, report: dict) -> None:
        """EDA copies of train rows (``--augment eda``), counted in ``report["augmented_rows"]``."""
        super().augment(raws, cfg, report)
        if str(cfg.augment).lower() != "eda":
            raise DataError(f"unknown augment {cfg.augment!r}: use eda (or leave it unset)")
        if not 0 <= cfg.augment_prob <= 1:
            raise DataError(f"augment_prob must be in [0, 1], got {cfg.augment_prob}")
        tr = raws["train"]
        if tr.texts and is_word_list(tr.texts[0]):
            raise DataError("--augment eda edits texts and cannot keep word tags aligned; drop --augment")
        copies = augment_rows(tr.texts, tr.pairs, float(cfg.augment_prob), cfg.seed)
        raws["train"] = Raw(
            tr.texts + [x[1] for x in copies],
            tr.pairs + [x[2] for x in copies] if tr.pairs is not None else None,
            tr.labels + [tr.labels[x[0]] for x in copies] if tr.labels is not None else None,
            None,
            tr.rows + [tr.rows[x[0]] for x in copies],
        )
        report["augmented_rows"] = len(copies)

    def build_splits(self, raws: dict[str, Raw], task, tokenizer, cfg, cols, report: dict) -> dict:
        """Tokenized (and cached) splits; the max length and words cut by it go to ``report``."""
        import datasets

        max_length = effective_max_length(tokenizer, cfg.max_length)
        splits, hits, built = {}, {}, {}
        for s in SPLITS:
            raw = raws[s]
            if id(raw) in built:  # test = validation: same object, tokenize once
                splits[s] = built[id(raw)]
                continue
            columns: dict[str, list] = {cols.text: raw.texts}
            if cols.pair:
                columns[cols.pair] = raw.pairs
            if task.needs_labels:
                columns["labels"] = raw.labels
            ds = datasets.Dataset.from_dict(columns)
            splits[s], hits[s] = tokenize(
                ds, tokenizer, cols.text, cols.pair, max_length, task, cfg.cache_dir
            )
            built[id(raw)] = splits[s]
        report["tokenization_cache_hit"] = hits
        report["max_length"] = max_length
        cut = {
            s: int(sum(d["truncated_words"]))
            for s, d in splits.items()
            if "truncated_words" in d.column_names
        }
        if cut:
            report["truncated_words"] = cut
            if any(cut.values()):
                log.warning(
                    "data: words cut by --max-length %d (not trained on, not scored, predicted O): %s; "
                    "raise --max-length to keep them",
                    max_length,
                    json.dumps(cut),
                )
        return splits

    def foreign_model_error(self, task, model_type: str, path: str, folder: str | None) -> ConfigError:
        return ConfigError(
            f"--model {path} is an image model ({model_type}); pass --task image_classification with image "
            "data, or a text model for text data"
        )

    def fit_model(self, model, tokenizer):
        """The pad token id set from the tokenizer; a tokenizer larger than the embeddings: ConfigError."""
        pad = tokenizer.pad_token_id
        if getattr(model.config, "pad_token_id", None) is None and pad is not None:
            model.config.pad_token_id = pad
        n_emb = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > n_emb:
            raise ConfigError(
                f"the tokenizer has {len(tokenizer)} tokens but the model only {n_emb} embeddings; "
                "pass the model's own --tokenizer"
            )
        return model


class ImageModality(Modality):
    name = "image"
    tokenized = False
    new_head_expected = True
    own_models, foreign_models = IMAGE_MAPPINGS, TEXT_MAPPINGS

    def read_sources(self, cfg, task, report: dict) -> tuple[dict[str, Raw], dict]:
        return load_image_sources(cfg, task, report, captions=self.captions)

    def clean(self, raw: Raw, need_labels: bool) -> tuple[Raw, dict]:
        return clean_images(raw, need_labels=need_labels)

    def check_rows(self, raws: dict[str, Raw], report: dict) -> None:
        """Every image opens (missing / corrupt -> DataError naming the row); one note for non-RGB modes."""
        modes: Counter = Counter()
        for s, raw in raws.items():
            modes.update(check_images(raw, s))
        note = mode_note(modes)
        if note:
            log.warning("note: %s", note)
            report.setdefault("notes", []).append(note)
        report["image_modes"] = dict(modes)

    def presets(self, spec: str | None) -> list[tuple[str, float | None]]:
        return vision.image_presets(spec)

    def augment(self, raws: dict[str, Raw], cfg, report: dict) -> None:
        """Only checked and recorded here: the loader applies the presets per sample."""
        super().augment(raws, cfg, report)
        report["augment"] = str(cfg.augment)

    def build_splits(self, raws: dict[str, Raw], task, tokenizer, cfg, cols, report: dict) -> dict:
        """References only: the loader decodes, augments and processes each batch."""
        built: dict[int, Any] = {}
        return {s: built.setdefault(id(raws[s]), image_dataset(raws[s], task.needs_labels)) for s in SPLITS}

    def batch_lengths(self, ds) -> None:
        return None

    def collator(
        self, tokenizer, task, *, pad_to_max_length, max_length, token_dropout, augment, seed, epoch
    ):
        return ImageCollator(tokenizer, task, augment, seed, epoch)

    def foreign_model_error(self, task, model_type: str, path: str, folder: str | None) -> ConfigError:
        if folder is not None:  # --task auto took the folder for images: most likely a mistake
            return ConfigError(
                f"--train-file {folder} is a directory; pass a file (a folder of images needs an image "
                "model and --task image_classification)"
            )
        return ConfigError(
            f"--model {path} is a text model ({model_type}); --task {task.name} needs an image model, e.g. "
            "google/vit-base-patch16-224 or microsoft/resnet-50"
        )


class ImageTextModality(ImageModality):
    name = "image_text"
    captions = True
    # two-tower models are of neither kind: no model check
    own_models, foreign_models = (), ()

    def requested(self, task, cfg):
        """Configured first: its columns depend on the run's options (the class column)."""
        return task.configure(cfg)


#: every input kind, by ``Task.modality`` value.
MODALITIES: dict[str, Modality] = {m.name: m for m in (TextModality(), ImageModality(), ImageTextModality())}


def modality_of(task_or_name: Any) -> Modality:
    """The input kind of a task (its ``modality``), of a modality name, or of ``None`` (``--task auto``
    on a data file: text)."""
    if task_or_name is None:
        name = "text"
    else:
        name = task_or_name if isinstance(task_or_name, str) else task_or_name.modality
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}: use {', '.join(MODALITIES)}") from None
