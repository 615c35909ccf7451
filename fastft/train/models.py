"""Model loading and family facts: config checks, the tokenizer, ``from_pretrained`` by the task's
auto-class (one place for the error), the task model, the teacher and the strategy's freezing.

fastft runs no code from a model folder: every load passes ``trust_remote_code=False`` (else
transformers asks ``[y/N]`` on stdin, and ``yes | fastft ...`` would run it) and a folder whose
``config.json`` has ``auto_map`` (custom code) is refused up front by :func:`check_model`."""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

import torch

from fastft.train import strategies as strat
from fastft.train.data.modalities import modality_of
from fastft.train.errors import ConfigError, first_line

__all__ = [
    "check_model",
    "load_tokenizer",
    "is_decoder",
    "from_pretrained",
    "load_task_model",
    "load_teacher",
    "apply_strategy",
    "check_modality",
    "head_note",
]


class LabelSpace(Protocol):
    """What this module reads of a :class:`~fastft.train.tasks.base.LabelSpace` (tasks are a layer up)."""

    num_labels: int


class Task(Protocol):
    """What this module reads of a :class:`~fastft.train.tasks.base.Task`: the tasks import this
    module (a layer down), so it names the part it uses instead of importing them."""

    name: str
    modality: str
    auto_class: str

    def model_kwargs(self, space: LabelSpace) -> dict[str, Any]: ...

    def adapt_model(self, model, space: LabelSpace): ...

    def check_teacher(self, teacher, model, space: LabelSpace) -> str | None: ...


def check_modality(task: Task | None, model_config, path: str, folder: str | None = None) -> None:
    """A text-only model given to an image task (or an image model to a text task): ConfigError.
    ``task`` None (``--task auto`` on a data file) is a text task. Unknown model types pass (their
    loading error is the one line then)."""
    mt = getattr(model_config, "model_type", None)
    modality_of(task).check_model(task, mt, path, folder)


def _other_head(task: Task, model_config) -> str | None:
    """Another task's classification head the checkpoint was saved with (``ForSequenceClassification``
    given to token classification, or the reverse), else None."""
    head = task.auto_class.replace("AutoModel", "")
    archs = [str(a) for a in getattr(model_config, "architectures", None) or []]
    if not head.endswith("Classification") or any(a.endswith(head) for a in archs):
        return None
    return next((a[a.index("For") :] for a in archs if "For" in a and a.endswith("Classification")), None)


def _reset_other_head(model) -> None:
    """Re-initialise the head weights that loaded from another task's head of the same shape (a
    7-class sequence classifier's for 7 tags), with the model's own init: the head is new."""
    prefix = getattr(model, "base_model_prefix", "")
    for name, child in model.named_children():
        if name == prefix:
            continue
        for module in child.modules():
            params = list(module.parameters(recurse=False))
            if any(getattr(p, "_is_hf_initialized", False) for p in params):  # loaded, not re-initialised
                for p in params:
                    p._is_hf_initialized = False  # transformers' init skips flagged tensors
                model._init_weights(module)


def head_note(task: Task, model_config, space: LabelSpace) -> str | None:
    """The start-up line when the task head is (re-)initialised: a checkpoint with another task's
    head, another label count (image tasks re-initialise it automatically) or none at all."""
    head = task.auto_class.replace("AutoModel", "")
    archs = getattr(model_config, "architectures", None) or []
    saved_n = getattr(model_config, "num_labels", None)
    other = _other_head(task, model_config)
    if other is not None and space.num_labels:
        return (
            f"  head       new {head.removeprefix('For')} head ({space.num_labels} labels): the checkpoint's "
            f"{other.removeprefix('For')} head is not used"
        )
    if not modality_of(task).new_head_expected or not space.num_labels or task.auto_class == "AutoModel":
        return None  # AutoModel: no HF task head (a contrastive model's class head is its own)
    if not any(a.endswith(head) for a in archs):
        return f"  head       new {head.removeprefix('For')} head ({space.num_labels} labels): the checkpoint has none"
    if saved_n != space.num_labels:
        return (
            f"  head       re-initialised (checkpoint had {saved_n} labels, the data has {space.num_labels})"
        )
    return None


def _custom_code_error(path: str, flag: str) -> ConfigError:
    return ConfigError(
        f"{flag} {path}: its config.json has auto_map (custom code); fastft runs no model-folder code: "
        "pass a model of an architecture transformers ships"
    )


def check_model(path: str, flag: str = "--model"):
    """The model's ``AutoConfig``; :class:`ConfigError` when it is neither a folder nor reachable, or
    when it needs custom code (``auto_map``)."""
    from transformers import AutoConfig

    config_file = os.path.join(path, "config.json")
    if os.path.isdir(path) and not os.path.isfile(config_file):
        raise ConfigError(f"{flag} {path}: the folder has no config.json; pass a Hugging Face model folder")
    if not os.path.isdir(path) and _path_like(path):  # not a hub id: fail now, not after hub retries
        what = "is a file" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"{flag} {path}: {what}; pass a model folder (one with config.json)")
    if os.path.isdir(path) and _has_auto_map(config_file):  # before transformers reads it
        raise _custom_code_error(path, flag)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - OSError / ValueError / hub errors
        raise ConfigError(
            f"unknown model {path!r} ({first_line(e, 160)}); pass {flag} <local model folder> (the hub is offline here)"
        ) from None
    if getattr(config, "auto_map", None):  # a hub id's config
        raise _custom_code_error(path, flag)
    return config


def _has_auto_map(config_file: str) -> bool:
    try:
        with open(config_file, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return False  # unreadable: AutoConfig names the problem
    return isinstance(data, dict) and bool(data.get("auto_map"))


def _path_like(value: str) -> bool:
    """A value meant as a local path, not a hub id (``org/name``): absolute or ./ ../ ~ prefixed,
    more than one ``/``, a backslash, an existing file, or a first component that is a local folder."""
    v = str(value)
    if v.startswith(("/", "./", "../", "~", ".\\")) or v.count("/") > 1 or "\\" in v or v in (".", ".."):
        return True
    return os.path.exists(v) or ("/" in v and os.path.isdir(v.split("/", 1)[0]))


def is_decoder(model_config) -> bool:
    """A causal decoder, by the family table (``fastft/nn/families.py``) or the config flag."""
    from fastft.nn.families import FAMILIES

    mt = getattr(model_config, "model_type", "")
    return bool(getattr(model_config, "is_decoder", False)) or any(
        f.causal and mt in f.model_types for f in FAMILIES
    )


def load_tokenizer(path: str, model_config=None):
    """AutoTokenizer with a pad token guaranteed (GPT-style tokenizers: pad = eos)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"cannot load a tokenizer from {path!r} ({first_line(e, 160)}); pass --tokenizer <folder>"
        ) from None
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
        else:
            raise ConfigError(
                f"tokenizer {path!r} has no pad, eos or unk token; pass a --tokenizer that has one"
            )
    if model_config is not None and is_decoder(model_config):
        tok.padding_side = "right"  # decoders: the last real token is found from the attention mask
    return tok


def from_pretrained(task: Task, path: str, what: str = "--model", *, quiet: bool = False, **kw: Any):
    """``task.auto_class.from_pretrained(path, dtype=float32, **kw)``; one line naming the fix on failure."""
    import transformers

    auto = getattr(transformers, task.auto_class)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()  # the "newly initialised head" report is expected here
    try:
        return auto.from_pretrained(path, dtype=torch.float32, trust_remote_code=False, **kw)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"cannot load {what} {path!r} as {auto.__name__} ({first_line(e)}); pass a compatible model folder"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)


def load_task_model(
    task: Task, path: str, space: LabelSpace, model_config, tokenizer, user_num_labels: int | None
):
    """The model to train: the task's auto-class with the data's label space."""
    kw = task.model_kwargs(space)
    saved_n = getattr(model_config, "num_labels", None)
    archs = getattr(model_config, "architectures", None) or []
    head = task.auto_class.replace("AutoModel", "")
    if (
        kw.get("num_labels") is not None
        and any(a.endswith(head) for a in archs)
        and saved_n not in (None, space.num_labels)
    ):
        # image checkpoints are mostly ImageNet's 1000 classes: a new head is the normal case
        if user_num_labels is None and not modality_of(task).new_head_expected:
            raise ConfigError(
                f"the model's classifier has {saved_n} labels but the data has {space.num_labels}; "
                f"check --label-column, or pass --num-labels {space.num_labels} to re-initialise the classifier"
            )
        kw["ignore_mismatched_sizes"] = True
    other = _other_head(task, model_config)
    if other is not None:  # e.g. a sequence classifier's folder for token classification
        kw["ignore_mismatched_sizes"] = True
    model = from_pretrained(task, path, quiet=True, **kw)
    if other is not None:
        _reset_other_head(model)
    model = task.adapt_model(model, space)
    return modality_of(task).fit_model(model, tokenizer)


def load_teacher(task: Task, path: str, model, space: LabelSpace):
    """The frozen distillation teacher; checked against the student by the task."""
    teacher = from_pretrained(task, path, "--teacher")
    why = task.check_teacher(teacher, model, space)
    if why:
        raise ConfigError(why)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def apply_strategy(model, cfg, fresh_head: bool) -> tuple[set[str], int]:
    """Freeze / LoRA / head-only / gradual as ``cfg.strategy`` says; -> (always-frozen names, groups)."""
    always_frozen: set[str] = set()
    n_groups = 0
    from fastft.nn.families import family_of

    tower = getattr(cfg, "freeze_tower", None)
    try:
        if cfg.strategy == "lora":
            from fastft.lora import add_lora

            kw: dict[str, Any] = dict(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout)
            if cfg.lora_target_modules:
                kw["target_modules"] = list(cfg.lora_target_modules)
            elif tower:  # two towers, one frozen: LoRA on the other one only
                from fastft.lora.inject import tower_lora_targets

                kw["target_modules"] = tower_lora_targets(model, [t for t in strat.TOWERS if t != tower])
            fam = family_of(model)
            if fam is not None and fam.towers:  # the trained projections go into the PEFT adapter too
                kw["modules_to_save"] = [p for t, _, p in fam.towers if p and t != tower]
            add_lora(model, **kw)
            if fresh_head:  # a new task head must train (add_lora keeps heads as they are)
                strat.train_heads(model)
        elif cfg.strategy == "head_only":
            strat.apply_head_only(model)
        if cfg.strategy in ("freeze", "gradual", "full") and (cfg.strategy == "freeze" or cfg.freeze_layers):
            strat.apply_freeze(model, cfg.freeze_layers)
            always_frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        if tower:  # --freeze-tower text|vision (two-tower models), on top of any strategy
            strat.apply_freeze_tower(model, tower)
            always_frozen |= {n for n, p in model.named_parameters() if not p.requires_grad}
        if cfg.strategy == "gradual":
            n_groups = len(strat.layer_groups(model))
            strat.apply_gradual(model, 1, always_frozen)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"--strategy {cfg.strategy}: {first_line(e)}") from None
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"--strategy {cfg.strategy} leaves no trainable parameter; lower --freeze-layers")
    return always_frozen, n_groups
