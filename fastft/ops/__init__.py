"""Autograd Functions and torch.library custom ops, one module per op (layer 3)."""
