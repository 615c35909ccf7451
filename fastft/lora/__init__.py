"""LoRA for fastft: the fused ``LoRALinear`` layer, injection into HF models, merge/unmerge, and
adapters in PEFT's format (``save_adapter`` / ``load_adapter``)."""

from fastft.lora.inject import (
    add_lora,
    lora_layers,
    lora_parameters,
    merge_lora,
    patch_component,
    remove_lora,
    unmerge_lora,
)
from fastft.lora.layer import LoRALinear
from fastft.lora.peft_format import adapter_state_dict, load_adapter, save_adapter

__all__ = [
    "LoRALinear",
    "add_lora",
    "merge_lora",
    "unmerge_lora",
    "remove_lora",
    "save_adapter",
    "load_adapter",
    "adapter_state_dict",
    "lora_parameters",
    "lora_layers",
    "patch_component",
]
