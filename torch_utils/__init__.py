"""PyTorch helpers: custom ops, distributed set-up, training statistics."""
