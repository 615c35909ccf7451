"""Patch component: loss. Filled in by its owner.

apply(model, family) -> undo | None installs the fused loss on this model instance only.
"""


def apply(model, family):
    return None
