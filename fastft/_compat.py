"""Environment repairs that must run before ``transformers`` is first imported.

torchvision with compiled ops that do not match the installed torch (PyPI's CUDA torchvision next to a
CPU-only torch build: its ``_C.so`` needs ``libc10_cuda.so``) cannot be imported: its
``_meta_registrations`` registers fake kernels for ``torchvision::nms``/``qnms`` without the
``_has_ops()`` guard it uses for every other op, and fails with "operator torchvision::nms does not
exist". ``transformers`` imports torchvision whenever it is installed (``image_utils``, reached from
every model), so that one failure breaks every model import. fastft uses only torchvision's pure-Python
transforms, so defining those two schemas (no kernels) is enough; detection ops stay unavailable.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

import torch

__all__ = ["repair_torchvision", "torchvision_note"]

log = logging.getLogger("fastft")
#: set when the repair was applied: one line for the start-up summary.
torchvision_note: str | None = None
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # kept alive: dropping it would undefine the schemas
_checked = False


def _ops_load(spec) -> bool:
    """Whether torchvision's compiled ops load into this torch."""
    folder = os.path.dirname(spec.origin or "")
    so = next((f for f in os.listdir(folder) if f.startswith("_C.") and f.endswith(".so")), None)
    if so is None:
        return False
    try:
        torch.ops.load_library(os.path.join(folder, so))
    except (OSError, RuntimeError):
        return False
    return True


def repair_torchvision() -> None:
    """Make ``import torchvision`` work when its compiled ops cannot load (idempotent, cheap)."""
    global _library, _checked, torchvision_note
    if _checked or "torchvision" in sys.modules:
        return
    _checked = True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or _ops_load(spec):
        return
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS.values():
        _library.define(schema)
    torchvision_note = (
        "torchvision's compiled ops do not match this torch build; fastft uses only its transforms"
    )
    log.info(torchvision_note)
