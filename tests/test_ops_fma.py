"""Tests for torch_utils.ops.fma."""

import numpy as np
import pytest
import torch
from numpy_ops import assert_matches

from torch_utils.ops.fma import fma


def _randn(*shape, seed=0) -> torch.Tensor:
    """Random float64 tensor."""
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


SHAPES = [
    ([2, 3], [2, 3], [2, 3]),
    ([3, 1], [1, 4], [4]),  # every operand broadcasts
    ([4], [2, 3, 4], [2, 1, 1]),
    ([], [2, 2], [1, 2]),  # a 0-D factor
]


@pytest.mark.parametrize("a_shape, b_shape, c_shape", SHAPES)
def test_matches_numpy(a_shape, b_shape, c_shape):
    a, b, c = _randn(*a_shape, seed=1), _randn(*b_shape, seed=2), _randn(*c_shape, seed=3)
    expected = np.multiply(a.numpy(), b.numpy()) + c.numpy()
    assert_matches(fma(a, b, c), expected)


@pytest.mark.parametrize("a_shape, b_shape, c_shape", SHAPES[1:3])
def test_first_and_second_derivatives(a_shape, b_shape, c_shape):
    inputs = tuple(_randn(*s, seed=i).requires_grad_(True) for i, s in enumerate([a_shape, b_shape, c_shape]))
    assert torch.autograd.gradcheck(fma, inputs)
    assert torch.autograd.gradgradcheck(fma, inputs)
