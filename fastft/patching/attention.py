"""Patch component: attention. Filled in by its owner.

apply(model, family) -> undo | None installs the fused attention on this model instance only.
"""


def apply(model, family):
    return None
