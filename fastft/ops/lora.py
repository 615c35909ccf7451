"""Autograd Function + custom op for lora (owner: the lora work). Filled in by its owner."""

__all__: list[str] = []
