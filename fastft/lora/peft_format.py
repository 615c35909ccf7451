"""Adapters in PEFT's on-disk format: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are PEFT's (adapter name stripped, as ``save_pretrained`` writes them):
``base_model.model.<path>.lora_A.weight`` (r, in), ``base_model.model.<path>.lora_B.weight`` (out, r)
and, for each module in ``modules_to_save``, ``base_model.model.<path>.<param>``. Only safetensors is
read (never pickle).

``adapter_config.json`` holds PEFT's keys only, so ``PeftModel.from_pretrained`` loads it without an
"Unexpected keyword arguments" warning. fastft's own metadata (who wrote it, the exact LoRA module
paths) goes into the sidecar ``fastft_adapter.json``, which PEFT ignores. Adapters written by older
fastft versions carry a ``"fastft": true`` key inside ``adapter_config.json``; they still load here.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch
from torch import nn

from fastft.lora.inject import _STATE, add_lora, lora_layers, lora_state, unwrap

__all__ = ["save_adapter", "load_adapter", "adapter_state_dict", "SIDECAR_NAME"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
SIDECAR_NAME = "fastft_adapter.json"
#: Keys older fastft versions put into adapter_config.json; never written now, ignored on load.
_LEGACY_KEYS = ("fastft",)
PREFIX = "base_model.model."

_TASK_TYPES = (
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
)
#: PEFT LoRA features fastft does not implement: config key -> value that means "off".
_UNSUPPORTED = {
    "use_dora": False,
    "lora_bias": False,
    "layers_to_transform": None,
    "layer_replication": None,
    "target_parameters": None,
    "use_qalora": False,
    "alora_invocation_tokens": None,
    "trainable_token_indices": None,
}


def _full(t: torch.Tensor) -> torch.Tensor:
    if hasattr(t, "full_tensor"):  # FSDP2 DTensor
        t = t.full_tensor()
    return t.detach().to("cpu").clone().contiguous()


def _all_layers(model: nn.Module) -> dict:
    st = lora_state(model)
    layers = dict(lora_layers(model))
    if st is not None:
        layers.update(st.merged)
    return dict(
        sorted(layers.items(), key=lambda kv: st.targets.index(kv[0]) if st and kv[0] in st.targets else 0)
    )


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's keys (CPU copies)."""
    model = unwrap(model)
    st = lora_state(model)
    if st is None:
        raise ValueError("save_adapter: the model has no LoRA layers (call fastft.add_lora first)")
    out: dict[str, torch.Tensor] = {}
    for path, layer in _all_layers(model).items():
        out[f"{PREFIX}{path}.lora_A.weight"] = _full(layer.lora_A.weight)
        out[f"{PREFIX}{path}.lora_B.weight"] = _full(layer.lora_B.weight)
    for path in st.modules_to_save:
        for name, t in model.get_submodule(path).state_dict().items():
            out[f"{PREFIX}{path}.{name}"] = _full(t)
    return out


def _target_names(model: nn.Module, paths: list[str]) -> list[str]:
    """Leaf names if PEFT's suffix rule over ``model`` selects exactly ``paths``, else the full paths."""
    leaves = sorted({p.rsplit(".", 1)[-1] for p in paths})
    from fastft.lora.layer import supported_base

    st = lora_state(model)
    skip = st.modules_to_save if st else []
    hit = {
        n
        for n, m in model.named_modules()
        if n
        and (supported_base(m) or n in paths)
        and any(n == t or n.endswith("." + t) for t in leaves)
        and not any(n == s or n.startswith(s + ".") for s in skip)
    }
    return leaves if hit == set(paths) else sorted(paths)


def save_adapter(model: nn.Module, save_directory: str | os.PathLike) -> str:
    """Write the adapter in PEFT's format; ``peft.PeftModel.from_pretrained(base, dir)`` loads it."""
    from safetensors.torch import save_file

    model = unwrap(model)
    st = lora_state(model)
    tensors = adapter_state_dict(model)
    layers = _all_layers(model)
    paths = list(layers)
    ranks = {p: layer.r for p, layer in layers.items()}
    alphas = {p: layer.alpha for p, layer in layers.items()}
    task = next((t for suffix, t in _TASK_TYPES if type(model).__name__.endswith(suffix)), None)
    try:
        from importlib.metadata import version

        peft_version = version("peft")
    except Exception:
        peft_version = None
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": task,
        "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        "r": st.r,
        "lora_alpha": st.alpha,
        "lora_dropout": st.dropout,
        "use_rslora": st.use_rslora,
        "target_modules": _target_names(model, paths),
        "modules_to_save": list(st.modules_to_save) or None,
        "fan_in_fan_out": any(layer.weight_layout == "conv1d" for layer in layers.values()),
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {re.escape(p): r for p, r in ranks.items() if r != st.r},
        "alpha_pattern": {re.escape(p): a for p, a in alphas.items() if a != st.alpha},
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
        "peft_version": peft_version,
    }
    sidecar = {"saved_by": "fastft", "fastft_version": _fastft_version(), "lora_modules": paths}
    os.makedirs(save_directory, exist_ok=True)
    for name, obj in ((CONFIG_NAME, config), (SIDECAR_NAME, sidecar)):
        with open(os.path.join(save_directory, name), "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
    save_file(tensors, os.path.join(save_directory, WEIGHTS_NAME), metadata={"format": "pt"})
    return str(save_directory)


def _fastft_version() -> str | None:
    try:
        from fastft._version import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return None


def _pattern_value(path: str, pattern: dict[str, Any], default):
    # PEFT's rule: a key matches a module path when the path ends with it (as a regex).
    for key, val in pattern.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return val
    return default


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """Load a PEFT LoRA adapter (saved by ``peft`` or :func:`save_adapter`) into ``model``.

    A model without LoRA gets LoRA layers exactly where the adapter has weights (ranks from the
    tensors, alphas from ``lora_alpha``/``alpha_pattern``) plus the adapter's ``modules_to_save``;
    a model that already has matching LoRA layers just receives the weights.
    """
    from safetensors.torch import load_file

    model = unwrap(model)
    cfg, w_path = _read_adapter_config(adapter_dir)
    lora, other = _split_adapter_tensors(load_file(w_path))
    r0, a0 = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    alphas = {p: float(_pattern_value(p, cfg.get("alpha_pattern") or {}, a0)) for p in lora}
    st = lora_state(model)
    if st is None:
        add_lora(
            model,
            r=r0,
            alpha=a0,
            dropout=float(cfg.get("lora_dropout", 0.0)),
            target_modules=list(lora),
            modules_to_save=sorted(_adapter_modules_to_save(model, cfg, other)),
            use_rslora=bool(cfg.get("use_rslora", False)),
            ranks={p: int(ab["lora_A"].shape[0]) for p, ab in lora.items()},
            alphas=alphas,
        )
        st = model.__dict__[_STATE]
    layers = _all_layers(model)
    if set(layers) != set(lora):
        raise ValueError(
            f"load_adapter: the model's LoRA layers ({len(layers)}) differ from the adapter's ({len(lora)}); "
            "call fastft.remove_lora(model) first to load it from scratch"
        )
    rslora = bool(cfg.get("use_rslora", False))
    with torch.no_grad():
        for path, layer in layers.items():
            _copy_lora_weights(path, layer, lora[path], merged=path in st.merged)
            layer.alpha = alphas[path]
            layer.scaling = layer.alpha / ((layer.r**0.5) if rslora else layer.r)
            layer.use_rslora = rslora
        msd = model.state_dict(keep_vars=True)
        missing = [k for k in other if k not in msd]
        if missing:
            raise ValueError(
                f"load_adapter: adapter tensors {missing[:3]} have no counterpart in {type(model).__name__}"
            )
        for k, t in other.items():
            msd[k].copy_(t)
    return model


def _read_adapter_config(adapter_dir: str | os.PathLike) -> tuple[dict, str]:
    """-> (adapter_config.json, the weights file path); refuses what fastft's LoRA cannot represent."""
    cfg_path = os.path.join(adapter_dir, CONFIG_NAME)
    w_path = os.path.join(adapter_dir, WEIGHTS_NAME)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"load_adapter: no {CONFIG_NAME} in {adapter_dir}")
    if not os.path.isfile(w_path):
        raise FileNotFoundError(
            f"load_adapter: no {WEIGHTS_NAME} in {adapter_dir} (pickled adapter_model.bin is not read; "
            "re-save it with safe_serialization=True)"
        )
    with open(cfg_path) as f:
        cfg = json.load(f)
    for key in _LEGACY_KEYS:  # older fastft wrote its marker into PEFT's file
        cfg.pop(key, None)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"load_adapter: peft_type {cfg.get('peft_type')!r} is not LORA")
    bad = [k for k, off in _UNSUPPORTED.items() if cfg.get(k, off) not in (off, [], {})]
    if cfg.get("bias", "none") != "none":
        bad.append("bias")
    if bad:
        raise ValueError(
            f"load_adapter: PEFT options {bad} are not supported by fastft's LoRA; train without them"
        )
    return cfg, w_path


def _split_adapter_tensors(
    sd: dict[str, torch.Tensor],
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """PEFT's flat state dict -> ({layer path: {"lora_A": A, "lora_B": B}}, {other key: tensor})."""
    lora: dict[str, dict[str, torch.Tensor]] = {}
    other: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        k = key[len(PREFIX) :] if key.startswith(PREFIX) else key
        m = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight", k)
        if m:
            lora.setdefault(m.group(1), {})[m.group(2)] = t
        elif "lora_" in k:
            raise ValueError(f"load_adapter: unsupported adapter tensor {key!r} (only Linear/Conv1D LoRA)")
        else:
            other[k] = t
    incomplete = [p for p, ab in lora.items() if set(ab) != {"lora_A", "lora_B"}]
    if incomplete:
        raise ValueError(f"load_adapter: {incomplete[:3]} lack lora_A or lora_B weights")
    return lora, other


def _adapter_modules_to_save(model: nn.Module, cfg: dict, other: dict[str, torch.Tensor]) -> set[str]:
    """The config's ``modules_to_save`` entries that own adapter tensors, plus the owner of any stray one."""
    owners = {k.rsplit(".", 1)[0] for k in other}
    save = {
        p
        for p in _module_paths(model, cfg.get("modules_to_save") or [])
        if any(m == p or m.startswith(p + ".") for m in owners)
    }
    return save | {m for m in owners if not any(m == p or m.startswith(p + ".") for p in save)}


def _copy_lora_weights(path: str, layer: nn.Module, ab: dict[str, torch.Tensor], merged: bool) -> None:
    a, b = ab["lora_A"], ab["lora_B"]
    if tuple(a.shape) != tuple(layer.lora_A.weight.shape) or tuple(b.shape) != tuple(
        layer.lora_B.weight.shape
    ):
        raise ValueError(f"load_adapter: {path}: adapter rank {a.shape[0]} != layer rank {layer.r}")
    if merged:
        raise ValueError("load_adapter: the model's LoRA is merged; call fastft.unmerge_lora(model) first")
    layer.lora_A.weight.copy_(a)
    layer.lora_B.weight.copy_(b)


def _module_paths(model: nn.Module, names: list[str]) -> set[str]:
    return {n for n, _ in model.named_modules() if n and any(n == s or n.endswith("." + s) for s in names)}
