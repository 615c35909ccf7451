"""Make ``import torchvision`` work when its compiled ops do not match this torch build.

transformers imports torchvision (``image_utils``) as soon as any model class is imported, when
torchvision is installed. A torchvision wheel built for another torch (e.g. PyPI's CUDA build beside
a CPU torch) cannot load its ``_C`` library; its ``_meta_registrations`` then registers fake kernels
for ``torchvision::nms``/``qnms`` without checking that the ops exist, and the import fails with
``operator torchvision::nms does not exist`` -- for every transformers model, text ones included.
fastft uses only torchvision's transforms (pure python), so when the library cannot load, the two
schemas are defined here (no kernels: calling them raises), before torchvision is first imported.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

__all__ = ["ensure_torchvision_importable"]

log = logging.getLogger("fastft")
_done = False
_library = None  # the torch.library.Library holding the two schemas (kept alive)


def ensure_torchvision_importable() -> bool:
    """Apply the shim when needed (once per process). True when it was applied."""
    global _done, _library
    if _done or "torchvision" in sys.modules:
        _done = True
        return _library is not None
    _done = True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    import torch

    folder = list(spec.submodule_search_locations)[0]
    lib = next((os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("_C.")), None)
    if lib is not None:
        try:
            torch.ops.load_library(lib)  # what torchvision itself does first; a match loads fine
            return False
        except (ImportError, OSError):
            pass
    if _has_schema("nms") and _has_schema("qnms"):
        return False
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        if not _has_schema(name):
            _library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    log.info("torchvision's compiled ops do not match this torch build; fastft uses only its transforms")
    return True


def _has_schema(name: str) -> bool:
    import torch

    try:
        torch._C._get_schema(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False
