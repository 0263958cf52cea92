"""Fused multiply-add, a * b + c, used by the modulated convolutions."""

import torch


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Return a * b + c, broadcasting all three like the arithmetic operators.

    Args:
        a: First factor.
        b: Second factor.
        c: Addend.

    Returns:
        Tensor of the broadcast shape of a, b and c. torch.addcmul does it in one kernel, and autograd reduces
        each gradient back to its input's shape, to any order of derivative.
    """
    return torch.addcmul(c, a, b)
