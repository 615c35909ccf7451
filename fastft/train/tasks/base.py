"""The :class:`Task` protocol: everything that differs between training tasks, in one object.

The data pipeline, the training loop, the evaluator and the CLI call these methods and never ask
which task they run. A task is stateless (one shared instance per task in the registry); the
label space it learns from the data travels in :class:`LabelSpace`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastft.train.numerics import IGNORE_INDEX

__all__ = ["Task", "LabelSpace", "EvalBatch", "MODEL_INPUTS", "IGNORE_INDEX"]

#: the batch keys that are model inputs (everything else in a batch is bookkeeping or labels).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values")


@dataclass
class LabelSpace:
    """What a task learned from the training labels; saved in the model config when it has names."""

    num_labels: int
    label2id: dict[str, int] | None = None
    id2label: dict[int, str] | None = None


@dataclass
class EvalBatch:
    """One evaluated batch: summed loss and item count (already without shard-padding rows) and the
    per-row tensors that are gathered across ranks by dataset index for the metrics."""

    loss_sum: torch.Tensor
    count: torch.Tensor
    rows: dict[str, torch.Tensor]


def model_inputs(batch: dict) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


class DataHooks(ABC):
    """Rows in: reading a table, labels, tokenization and the collate (the data pipeline and loader call these)."""

    @property
    def reads_folders(self) -> bool:
        """Whether a folder (of images) can stand for a data file; text tasks need a file."""
        return self.modality != "text"

    def read_table(self, ds, where: str):
        """A data file's table (the ``datasets.Dataset`` as read) in this task's columns, e.g. SQuAD's
        nested JSON as one row per question; ``where`` names the file in errors. ``ds`` by default."""
        return ds

    def detects(self, labels: list, texts: list) -> bool:
        """``--task auto``: do these raw label values (and texts) look like this task's? Detection asks
        the registered tasks in registry order; the first that says yes wins."""
        return False

    @abstractmethod
    def encode_labels(
        self, values: list, num_labels: int | None, label2id: dict[str, int] | None
    ) -> tuple[list, LabelSpace]:
        """Raw label values of all splits -> (encoded values, label space). ``label2id`` given = a
        fixed label space (a trained model's, or a built-in dataset's); ``num_labels`` = the user's
        ``--num-labels`` (the labels must fit it). Raises ``DataError`` on bad labels."""

    def strata(self, labels: list) -> list | None:
        """Values to stratify the train/validation/test split by (``None``: not stratified)."""
        return None

    def label_counts(self, labels: list, space: LabelSpace) -> dict | None:
        """Per-label row counts of one split for the data report (``None``: not meaningful)."""
        return None

    def tokenize(
        self, batch: dict[str, list], tokenizer, text_col: str, pair_col: str | None, max_length: int
    ) -> dict:
        """One ``datasets.map(batched=True)`` batch -> model columns (+ ``length``). Token-level tasks
        override it to tokenize pre-split words and align their labels through ``word_ids``."""
        enc = tokenizer(
            batch[text_col], batch[pair_col] if pair_col else None, truncation=True, max_length=max_length
        )
        out = {
            k: [list(x) for x in enc[k]]
            for k in ("input_ids", "attention_mask", "token_type_ids")
            if k in enc
        }
        out["length"] = [len(x) for x in out["input_ids"]]
        return out

    def tokenize_key(self) -> list:
        """What, besides the tokenizer, data and max length, changes this task's tokenization (cache key)."""
        return [False]

    def collate_labels(
        self, feats: dict[str, list], padded: dict[str, np.ndarray], left: bool
    ) -> torch.Tensor | dict[str, torch.Tensor] | None:
        """The batch's ``labels`` tensor from the raw rows ``feats`` and the padded model columns
        (``padded["input_ids"]`` is (B, width); ``left`` = left padding). A dict adds its tensors to
        the batch (``labels`` and per-token bookkeeping the task's evaluation reads)."""
        if "labels" not in feats:
            return None
        return torch.tensor(feats["labels"], dtype=torch.float32)

    def collate_inputs(self, images: list, feats: dict[str, list], processor) -> dict[str, torch.Tensor]:
        """Image modalities: the model inputs of one batch from its decoded (and, in training,
        augmented) RGB PIL ``images`` and its dataset rows ``feats`` (image_text: tokenize
        ``feats["text"]`` here too)."""
        from fastft.train.vision import pixel_values

        return {"pixel_values": pixel_values(processor, images)}

    def count_items(self, batch: dict) -> int:
        """Items the loss averages over (sequences; label tokens for token-level tasks)."""
        return int(batch["labels"].shape[0])

    def split_warnings(self, raws: dict, space: LabelSpace) -> list[str]:
        """Warnings about the final raw splits (encoded labels), e.g. test tags never seen in train."""
        return []

    def refine(self, labels: list) -> Task:
        """The task to run for these raw label values (e.g. image classification -> image multi-label
        when the labels are lists); ``self`` unless a task has a variant."""
        return self


class ModelHooks:
    """The model side: preprocessor, head, loss set-up, fused parts, teacher checks, run-time configuration."""

    def load_preprocessor(self, path: str, model_config):
        """What turns rows into model inputs: the tokenizer (text), the ``AutoImageProcessor``
        (image) or an ``AutoProcessor`` (image_text tasks override this). Saved with the model."""
        if self.modality == "image":
            from fastft.train.vision import load_image_processor

            return load_image_processor(path)
        from fastft.train.models import load_tokenizer

        return load_tokenizer(path, model_config)

    def adapt_model(self, model, space: LabelSpace):
        """The loaded model, changed for this task before the strategy applies (e.g. a contrastive
        model's extra class head); ``model`` unchanged by default."""
        return model

    def model_kwargs(self, space: LabelSpace) -> dict[str, Any]:
        """Extra ``from_pretrained`` keyword arguments (label count, names, problem_type)."""
        kw: dict[str, Any] = {"num_labels": space.num_labels, "problem_type": self.problem_type}
        if space.label2id:
            kw.update(label2id=dict(space.label2id), id2label={int(k): v for k, v in space.id2label.items()})
        return kw

    def claims_model(self, config) -> bool:
        """Is a saved model (its ``AutoConfig``) one of this task's? Asked in registry order."""
        return getattr(config, "problem_type", None) == self.problem_type

    def fused_parts(self, patched: list[str], model, cfg) -> list[str]:
        """The fused parts this run's training really uses (the start-up summary's ``fused`` line):
        ``patched`` (``fastft.patch``'s parts on ``model``) without its ``loss`` part unless the model's
        own loss trains, plus the fused losses the task computes itself (KD with a teacher)."""
        kd = self.distils and bool(getattr(cfg, "teacher", None))
        parts = [p for p in patched if p != "loss" or (self.uses_model_loss and not kd)]
        if kd:
            parts.append("KD loss")
        elif self.fused_loss:
            parts.append(self.fused_loss)
        return parts

    def check_teacher(self, teacher, model, space: LabelSpace) -> str | None:
        """Why ``teacher`` cannot teach ``model`` (one line naming the fix), or ``None``."""
        if teacher.config.num_labels != space.num_labels:
            return (
                f"--teacher has {teacher.config.num_labels} labels but the data has {space.num_labels}; "
                "pass a teacher trained on the same labels"
            )
        return None

    def configure(self, cfg) -> Task:
        """This task with the run's options (a ``DataConfig``) applied: ``self`` unless the task has
        options (token classification: ``--label-all-tokens``); the result is the run's task object."""
        return self

    def run_warnings(self, cfg, world: int) -> list[str]:
        """Start-up warnings (one line each) about this run's options (a ``TrainConfig``, ``world``
        processes) that train differently for this task than the user may expect."""
        return []

    def loss_setup(
        self, cfg, train, space: LabelSpace, report: dict, device
    ) -> tuple[dict[str, Any], list[str]]:
        """Hook, once before training: extra keyword arguments for :meth:`loss` worked out from the
        training split ``train`` (classification: ``class_weight`` of ``--class-weights``) and the
        start-up report's lines; may add entries to ``report`` (results.json's ``data``).
        Default: nothing, and ``--class-weights`` is refused."""
        from fastft.train.errors import ConfigError

        if (cfg.class_weights or "none").strip().lower() not in ("none", "imbalanced"):
            raise ConfigError(
                f"--class-weights applies to single-label classification, not {self.problem_type}; "
                "drop --class-weights"
            )
        return {}, []


class EvalHooks(ABC):
    """Losses and evaluation: the training loss, evaluated batches, metrics, collapse checks, reports."""

    @abstractmethod
    def item_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-item loss (B,) in float32, as the training loss defines it (used by the evaluator)."""

    def loss(self, model, batch: dict, n_items: int, *, teacher=None, cfg=None) -> torch.Tensor:
        """Loss of one micro-batch = sum of its per-item losses / ``n_items`` (the whole accumulated
        batch's item count). ``cfg`` (a ``TrainConfig``) carries ``fused`` and the KD settings."""
        logits = model(**model_inputs(batch)).logits.float()
        return self.item_losses(logits, batch["labels"]).sum() / n_items

    def eval_batch(self, model, batch: dict) -> EvalBatch:
        """Loss sum, count and gatherable rows of one eval batch; rows flagged in ``batch["repeat"]``
        (shard padding under torchrun) are left out of the loss sum (they are dropped at gathering)."""
        logits = model(**model_inputs(batch)).logits.float()
        rows = {"logits": logits}
        loss_sum = torch.zeros((), dtype=torch.float64, device=logits.device)
        count = torch.zeros((), dtype=torch.float64, device=logits.device)
        if "labels" in batch:
            rows["labels"] = batch["labels"]
            keep = ~batch["repeat"] if "repeat" in batch else torch.ones(len(logits), dtype=torch.bool)
            keep = keep.to(logits.device)
            loss_sum = (self.item_losses(logits, batch["labels"]) * keep).sum().double()
            count = keep.sum().double()
        return EvalBatch(loss_sum, count, rows)

    @abstractmethod
    def metrics(self, rows: dict[str, torch.Tensor], mean_loss: float, count: int) -> dict[str, Any]:
        """The metrics dict from the gathered rows (dataset order, each row once) and the mean loss."""

    def model_metrics(self, model, rows: dict[str, torch.Tensor], mean_loss: float, count: int) -> dict:
        """:meth:`metrics`, for tasks that need the evaluated model's config (e.g. its ``id2label``)."""
        return self.metrics(rows, mean_loss, count)

    def collapse_check(
        self, rows: dict[str, torch.Tensor], metrics: dict, names: dict[int, str] | None = None
    ) -> dict[str, Any] | None:
        """Does this evaluation (the gathered ``rows``: ``logits``, or token tasks' ``preds``, and
        ``labels``; their ``metrics``) look like a model that learned nothing? The report of
        :mod:`fastft.train.diagnose`'s check for :attr:`collapse_kind` (symptoms, one warning line)
        or ``None``; ``names``: label id -> name."""
        scores = rows.get("logits", rows.get("preds"))
        if self.collapse_kind is None or scores is None or "labels" not in rows:
            return None
        from fastft.train.diagnose import COLLAPSE_CHECKS

        check = COLLAPSE_CHECKS[self.collapse_kind]
        return check(scores.float().cpu().numpy(), rows["labels"].cpu().numpy(), metrics, names)

    def headline(self, test: dict) -> str | None:
        """The one-line summary of the test metrics printed at the end of ``fastft train``."""
        return None

    def metrics_table(self, metrics: dict) -> str | None:
        """A text table of the metrics that ``fastft eval`` prints after the JSON (``None``: none)."""
        return None

    def describe(self, space: LabelSpace) -> str:
        """The ``task`` line of the start-up summary."""
        return f"{self.problem_type}, {space.num_labels} labels"

    def artifacts(self, metrics: dict, model, out_dir: str) -> list[str]:
        """Extra files written to ``out_dir`` from a split's metrics (e.g. a confusion-matrix PNG);
        returns their names (the output-dir manifest records them)."""
        return []


class InferenceHooks:
    """``fastft eval|predict``: a task rebuilt from a saved model, its head, its prediction rows."""

    def predict(
        self, model, tokenizer, ds, batches, *, device, text_columns: list[str], options
    ) -> list[dict]:
        """``fastft predict`` rows (ordered dicts, one per input row, in file order): the input
        text columns then the task's outputs. ``batches`` iterates ``ds`` in file order;
        ``options`` holds the CLI's generation flags."""
        logits = []
        with torch.no_grad():
            for batch in batches:
                inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
                logits.append(model(**inputs).logits.float().cpu())
        out = torch.cat(logits).numpy()
        id2label = {int(k): v for k, v in (getattr(model.config, "id2label", None) or {}).items()}
        records = []
        for i in range(len(ds)):
            rec = {c: ds[c][i] for c in text_columns}
            rec.update(self.prediction_fields(out[i], id2label))
            records.append(rec)
        return records

    def prediction_fields(self, logits: np.ndarray, id2label: dict[int, str]) -> dict[str, Any]:
        """The output columns of one row from its logits (used by the default :meth:`predict`)."""
        raise NotImplementedError(f"{self.name} has no prediction output")

    def for_inference(self, saved: dict, *, images_only: bool = False) -> Task:
        """The task ``fastft eval|predict`` runs for a saved model, with the training run's options
        (``saved``: its ``train_config.json``) applied; ``images_only``: rows need no text (predict
        with ``--captions-file``). ``self`` unless the task has run options."""
        return self

    def attach_saved_head(self, model, folder: str):
        """The loaded model with the parts ``from_pretrained`` does not restore put back from
        ``folder`` (e.g. a contrastive model's class head); ``model`` unchanged by default."""
        return model

    def inference_text_columns(
        self, columns: list[str], pair_col: str | None, where: str
    ) -> tuple[str | None, str | None]:
        """The (text, pair) columns ``fastft predict`` keeps in its output when ``--text-column`` and
        the run give none: detected among the file's raw ``columns`` for text tasks; image tasks
        read no text column (``None``, ``pair_col``)."""
        if self.modality != "text":
            return None, pair_col
        from fastft.train.data.sources import resolve_columns

        text_col, pair_col, _ = resolve_columns(columns, None, pair_col, None, False, where, self)
        return text_col, pair_col


class Task(DataHooks, ModelHooks, EvalHooks, InferenceHooks):
    """One training task. Subclass it in one file of ``fastft/train/tasks/`` and register it.

    Class attributes:

    * ``name``: the ``--task`` value; ``aliases``: other accepted spellings.
    * ``problem_type``: the string saved as ``problem_type`` in the model config and results.json
      (Hugging Face's values where HF has one), read back by ``fastft eval|predict``.
    * ``auto_class``: the ``transformers`` auto-class that loads the model.
    * ``needs_labels``: whether rows must carry a label (causal LM: no).
    * ``label_in_dataset``: whether the tokenized dataset keeps a ``labels`` column for the collate;
      ``batch_columns``: further tokenized columns :meth:`collate_labels` reads.
    * ``text_columns`` / ``pair_for`` / ``label_columns``: column names tried, in order, when
      ``--text-column`` / ``--text-pair-column`` / ``--label-column`` are not given.
    * ``best_metric``: the metric that picks the best checkpoint by default; ``lower_is_better``:
      the metrics (of this task) where lower wins.
    * ``predict_format``: ``"csv"`` or ``"jsonl"`` -- how ``fastft predict`` writes :meth:`predict`'s rows.
    * ``modality``: what a row's input is. ``"text"``: tokenized text (+ pair). ``"image"``: an image
      reference (``--image-column``, detected from ``image_columns``; or an image folder), decoded
      lazily per batch by the loader. ``"image_text"``: an image plus a caption (``--text-column``,
      detected from ``text_columns``). Image datasets hold the columns ``image_ref`` (a path or
      encoded bytes), ``text`` (the caption, image_text only) and ``labels``; the loader's collate
      decodes + augments (train split only) the images and calls :meth:`collate_inputs`.
    """

    name: str = ""
    aliases: tuple[str, ...] = ()
    problem_type: str = ""
    auto_class: str = "AutoModelForSequenceClassification"
    needs_labels: bool = True
    label_in_dataset: bool = True
    #: the task head is newly initialised: it trains under LoRA (a causal LM's lm_head does not).
    fresh_head: bool = True
    #: the fused loss this task's own training loss goes through under ``--fused`` (None: none).
    fused_loss: str | None = None
    #: the training loss is the model's own (``labels=`` into its forward), so the ``loss`` part of
    #: ``fastft.patch`` is what fuses it; otherwise that part is never called in training.
    uses_model_loss: bool = False
    #: with ``--teacher`` the training loss is fastft's fused KD loss.
    distils: bool = False
    #: labels have names (``label2id`` in the model config) that eval files are encoded with.
    named_labels: bool = False
    #: extra tokenized columns the collate needs (e.g. ``word_ids`` for token-level labels).
    batch_columns: tuple[str, ...] = ()
    text_columns: tuple[str, ...] = (
        "text",
        "sentence",
        "sentence1",
        "review",
        "content",
        "document",
        "premise",
        "question",
        "comment",
        "tweet",
        "body",
        "utterance",
    )
    pair_for: dict[str, str] = {"sentence1": "sentence2", "premise": "hypothesis"}
    label_columns: tuple[str, ...] = (
        "label",
        "labels",
        "category",
        "class",
        "target",
        "score",
        "sentiment",
        "y",
    )
    best_metric: str = "loss"
    lower_is_better: tuple[str, ...] = ("loss",)
    predict_format: str = "csv"
    modality: str = "text"
    image_columns: tuple[str, ...] = ("image", "image_path", "path", "file", "filename", "img")
    #: which :data:`fastft.train.diagnose.COLLAPSE_CHECKS` check judges an evaluation for a collapsed
    #: model (:meth:`collapse_check`); ``None``: not checked.
    collapse_kind: str | None = None
    #: a ``.tsv`` file is read as CoNLL (one token and its tag per line), not as a table.
    reads_conll: bool = False
    #: the flag that names the label column in messages, and a column the task itself asks for
    #: (contrastive's optional class column); read by the image-table reader.
    label_flag: str = "--label-column"
    class_column: str | None = None
