"""nn.Module wrappers (attention). Filled in by its owner."""

__all__: list[str] = []
