"""Config files and their keys: ``-c run.yaml|json`` -> :class:`TrainConfig`, and the one table of
Hugging Face spellings (:data:`ALIASES`) that config files and the CLI's flags both accept."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any

from fastft.train.config.train import TrainConfig
from fastft.train.errors import ConfigError, first_line

__all__ = ["ALIASES", "KEY_ALIASES", "config_from_dict", "load_config_file"]

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

#: field -> its Hugging Face ``TrainingArguments`` / ``run_classification.py`` names (snake_case);
#: config files take them as keys, the CLI as ``--kebab-case`` flag aliases.
ALIASES: dict[str, tuple[str, ...]] = {
    "model": ("model_name_or_path",),
    "epochs": ("num_train_epochs",),
    "lr": ("learning_rate",),
    "batch_size": ("per_device_train_batch_size", "train_batch_size"),
    "eval_batch_size": ("per_device_eval_batch_size",),
    "grad_accum": ("gradient_accumulation_steps",),
    "max_length": ("max_seq_length",),
    "scheduler": ("lr_scheduler_type",),
    "dataset": ("dataset_name",),
    "eval_strategy": ("evaluation_strategy",),
    "text_pair_column": ("text_column_pair",),
}
#: HF name -> field, derived from :data:`ALIASES`.
KEY_ALIASES: dict[str, str] = {hf: name for name, hfs in ALIASES.items() for hf in hfs}


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
