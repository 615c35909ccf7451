"""nn.Module wrappers (losses). Filled in by its owner."""

__all__: list[str] = []
