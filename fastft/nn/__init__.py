"""``nn.Module`` wrappers of the functional API (LoRALinear lives in :mod:`fastft.lora`), and the model
family table (:mod:`fastft.nn.families`: where each family keeps its blocks, heads and attention)."""

from fastft.nn.attention import *  # noqa: F403
from fastft.nn.losses import *  # noqa: F403
