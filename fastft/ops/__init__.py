"""Autograd Functions and torch.library custom ops, one module per op (layer 1); the fused losses
share :mod:`fastft.ops._losses_common`."""
