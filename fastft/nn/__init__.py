"""``nn.Module`` wrappers of the functional API (LoRALinear lives in :mod:`fastft.lora`)."""

from fastft.nn.attention import *  # noqa: F403
from fastft.nn.losses import *  # noqa: F403
