"""Autograd Function + custom op for attention (owner: the attention work). Filled in by its owner."""

__all__: list[str] = []
