"""Parsing of ``--vary field=a,b``, ``--search field=kind:...`` and ``--enqueue field=v,...``.

Every field must be a :class:`fastft.train.TrainConfig` field (snake_case or kebab-case); values
are coerced the way a config file's values are (``config_from_dict``), so a bad one is a
:class:`ConfigError` naming the flag before any run starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any

from fastft.train.config import TrainConfig, config_from_dict
from fastft.train.errors import ConfigError

__all__ = [
    "field_name",
    "parse_value",
    "parse_vary",
    "parse_assignments",
    "SearchSpace",
    "parse_search",
    "describe_distribution",
]

_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_CHOICES = {f.name: f.metadata.get("choices") for f in dataclasses.fields(TrainConfig)}
# fields that an experiment sets itself for every run
RESERVED = ("output_dir", "resume", "overwrite")


def field_name(raw: str, flag: str) -> str:
    """``lora-r`` / ``lora_r`` -> ``lora_r``; an unknown name is a one-line ConfigError."""
    name = raw.strip().replace("-", "_")
    if name not in _FIELDS:
        prefix = sorted((f for f in _FIELDS if name.startswith(f + "_") or f.startswith(name)), key=len)
        close = prefix[-1:] or difflib.get_close_matches(name, sorted(_FIELDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; see `fastft train --help` for the fields"
        raise ConfigError(f"{flag} {raw!r}: unknown TrainConfig field{hint}")
    if name in RESERVED:
        raise ConfigError(f"{flag} {raw!r}: set by the experiment itself; pick another field")
    return name


def parse_value(name: str, text: str, flag: str) -> Any:
    """A value as written on the command line -> the field's type (``none`` -> None)."""
    import yaml

    text = text.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if isinstance(value, (dict, list)):
        value = text
    try:
        value = getattr(config_from_dict({name: value}), name)
    except ConfigError:
        raise ConfigError(f"{flag} {name}={text!r}: not a valid value for {name}") from None
    choices = _CHOICES.get(name)
    if isinstance(choices, tuple) and value not in choices:
        shown = " | ".join("none" if c is None else str(c) for c in choices)
        raise ConfigError(f"{flag} {name}={text!r}: not a valid value for {name} ({shown})")
    return value


def parse_vary(specs: list[str]) -> list[tuple[str, list[Any]]]:
    """``["strategy=full,lora", "lr=2e-5,5e-5"]`` -> ``[("strategy", ["full", "lora"]), ("lr", [...])]``."""
    out: list[tuple[str, list[Any]]] = []
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"--vary {spec!r}: expected field=value1,value2 (e.g. --vary lr=2e-5,5e-5)")
        key, _, vals = spec.partition("=")
        name = field_name(key, "--vary")
        if any(name == n for n, _ in out):
            raise ConfigError(f"--vary {name} given twice; list all its values in one --vary")
        items = [v for v in vals.split(",") if v.strip()]
        if not items:
            raise ConfigError(f"--vary {spec!r}: no values after '='; e.g. --vary {name}=a,b")
        values = [parse_value(name, v, "--vary") for v in items]
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"--vary {spec!r}: a value is repeated")
        out.append((name, values))
    return out


def parse_assignments(spec: str, flag: str) -> dict[str, Any]:
    """``"lr=1e-3,batch_size=16"`` -> ``{"lr": 0.001, "batch_size": 16}``."""
    out: dict[str, Any] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError(f"{flag} {spec!r}: expected field=value[,field=value...]")
        key, _, val = part.partition("=")
        name = field_name(key, flag)
        out[name] = parse_value(name, val, flag)
    if not out:
        raise ConfigError(f"{flag} {spec!r}: expected field=value[,field=value...]")
    return out


@dataclass(frozen=True)
class SearchSpace:
    """One searched field: ``kind`` in loguniform | uniform | int | int_log | choice."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        if self.kind == "loguniform":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.name, self.low, self.high)
        if self.kind in ("int", "int_log"):
            return trial.suggest_int(self.name, self.low, self.high, log=self.kind == "int_log")
        return trial.suggest_categorical(self.name, list(self.choices))

    def describe(self) -> str:
        if self.kind == "choice":
            return "choice:" + ",".join(map(str, self.choices))
        return f"{self.kind}:{self.low}:{self.high}"

    def distribution(self):
        """The Optuna distribution :meth:`suggest` draws from (to check it against a stored study)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.choices))
        if self.kind in ("int", "int_log"):
            return IntDistribution(int(self.low), int(self.high), log=self.kind == "int_log")
        return FloatDistribution(float(self.low), float(self.high), log=self.kind == "loguniform")


def describe_distribution(dist) -> str:
    """An Optuna distribution as the ``--search`` text that makes it (``loguniform:1e-05:0.001``)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return "choice:" + ",".join(map(str, dist.choices))
    if isinstance(dist, IntDistribution):
        return f"{'int_log' if dist.log else 'int'}:{dist.low}:{dist.high}"
    return f"{'loguniform' if dist.log else 'uniform'}:{dist.low:g}:{dist.high:g}"


_KINDS = "loguniform:LOW:HIGH | uniform:LOW:HIGH | int:LOW:HIGH | choice:A,B,..."


def _bounds(name: str, kind: str, rest: str, spec: str) -> tuple[float, float]:
    parts = rest.split(":")
    if len(parts) != 2:
        raise ConfigError(f"--search {spec!r}: {kind} needs LOW:HIGH (e.g. {name}={kind}:1:8)")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"--search {spec!r}: LOW and HIGH must be numbers") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"--search {spec!r}: needs finite LOW < HIGH")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"--search {spec!r}: loguniform needs LOW > 0")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"--search {spec!r}: int needs integer bounds")
    return low, high


def parse_search(specs: list[str]) -> list[SearchSpace]:
    """``["lr=loguniform:1e-5:3e-4", "lora_r=choice:4,8,16"]`` -> search spaces (types checked)."""
    out: list[SearchSpace] = []
    for spec in specs:
        key, eq, rest = spec.partition("=")
        kind, colon, rest = rest.partition(":")
        if not eq or not colon:
            raise ConfigError(f"--search {spec!r}: expected field=KIND:..., KIND one of {_KINDS}")
        name = field_name(key, "--search")
        if any(s.name == name for s in out):
            raise ConfigError(f"--search {name} given twice")
        kind = kind.strip().lower()
        typ = str(next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name))
        if kind == "choice":
            items = [v for v in rest.split(",") if v.strip()]
            if not items:
                raise ConfigError(f"--search {spec!r}: choice needs values (choice:a,b)")
            choices = tuple(parse_value(name, v, "--search") for v in items)
            if any(isinstance(c, list) for c in choices):
                raise ConfigError(f"--search {name}: list fields cannot be searched")
            out.append(SearchSpace(name, "choice", choices=choices))
            continue
        if kind not in ("loguniform", "uniform", "int"):
            raise ConfigError(f"--search {spec!r}: unknown kind {kind!r}; use {_KINDS}")
        if not (typ.startswith("int") or typ.startswith("float")):
            raise ConfigError(f"--search {name}: {kind} needs a numeric field ({name} is {typ}); use choice:")
        low, high = _bounds(name, kind, rest, spec)
        if kind == "int" or typ.startswith("int"):
            if not (low.is_integer() and high.is_integer()):
                raise ConfigError(f"--search {spec!r}: {name} is an integer field; give integer bounds")
            low, high = int(low), int(high)
            kind = "int" if kind == "uniform" else kind
            if kind == "loguniform":
                kind = "int_log"
        out.append(SearchSpace(name, kind, low, high))
    return out
