"""torch.distributed integration (torchrun; DDP and FSDP2). Filled in by its owner."""
