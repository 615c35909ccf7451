"""fastft: kernel-accelerated fine-tuning for Hugging Face BERT- and GPT-family models.

Heavy parts (transformers, triton, the trainer) are imported lazily on first use, so
``import fastft`` is cheap and works without triton or the compiled extension.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastft._backend import backend, current_backend, report
from fastft._version import __version__

# public name -> module that defines it
_LAZY = {
    "functional": "fastft.functional",
    "optim": "fastft.optim",
    "nn": "fastft.nn",
    "lora": "fastft.lora",
    "patch": "fastft.patching",
    "unpatch": "fastft.patching",
    "is_patched": "fastft.patching",
    "add_lora": "fastft.lora",
    "merge_lora": "fastft.lora",
    "unmerge_lora": "fastft.lora",
    "remove_lora": "fastft.lora",
    "save_adapter": "fastft.lora",
    "load_adapter": "fastft.lora",
    "Trainer": "fastft.train",
    "TrainConfig": "fastft.train",
}

__all__ = ["backend", "current_backend", "report", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'fastft' has no attribute {name!r}")
    module = importlib.import_module(mod)
    value = module if mod.rsplit(".", 1)[-1] == name else getattr(module, name)
    globals()[name] = value
    return value
