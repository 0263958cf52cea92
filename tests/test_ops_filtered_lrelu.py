"""Tests for torch_utils.ops.filtered_lrelu against the numpy definition in numpy_ops."""

import math

import numpy as np
import pytest
import torch
from numpy_ops import assert_matches, np_filtered_lrelu

from torch_utils.ops.filtered_lrelu import filtered_lrelu
from torch_utils.ops.upfirdn2d import setup_filter


def _randn(*shape, seed=0) -> torch.Tensor:
    """Random float64 tensor."""
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _filter(kind, seed):
    """A random filter from setup_filter: None, '1d' (separable, 8 taps), '2d3' (3x3) or '2d4' (4x4 from 4 taps)."""
    rng = np.random.default_rng(seed)
    taps = {"1d": 8, "2d3": [3, 3], "2d4": 4}
    return None if kind is None else setup_filter(rng.uniform(0.1, 1, size=taps[kind]))


def _np(t):
    """t as a numpy array, or None."""
    return None if t is None else t.numpy()


CASES = [
    # up, down, fu, fd, padding, gain, slope, clamp, flip_filter, bias
    (1, 1, None, None, 0, math.sqrt(2), 0.2, None, False, False),
    (2, 2, "2d4", "2d4", (3, 2), math.sqrt(2), 0.2, None, False, True),
    (2, 1, "1d", "2d3", (4, 3, 5, 2), 1.0, 0.1, 0.5, True, True),
    (4, 2, "2d3", "1d", 3, 2.0, 0.0, 1.0, False, True),
    (1, 2, "2d3", "2d4", (1, 2, 2, 1), 0.7, -0.5, None, True, False),
    (2, 4, "1d", "1d", (-1, 5, 4, 3), math.sqrt(2), 0.2, 0.3, False, True),
]


@pytest.mark.parametrize("up, down, fu, fd, padding, gain, slope, clamp, flip_filter, bias", CASES)
def test_matches_numpy(up, down, fu, fd, padding, gain, slope, clamp, flip_filter, bias):
    x = _randn(2, 3, 5, 6)
    b = _randn(3, seed=1) if bias else None
    fu, fd = _filter(fu, 2), _filter(fd, 3)
    args = (up, down, padding, gain, slope, clamp, flip_filter)
    y = filtered_lrelu(x, fu, fd, b, *args, impl="ref")
    assert_matches(y, np_filtered_lrelu(x.numpy(), _np(fu), _np(fd), _np(b), *args))


def test_cuda_impl_on_cpu_equals_ref():
    x, b, f = _randn(1, 2, 4, 4), _randn(2, seed=1), _filter("2d4", 0)
    kwargs = dict(b=b, up=2, down=2, padding=(2, 1), clamp=0.5)
    assert torch.equal(filtered_lrelu(x, f, f, impl="cuda", **kwargs), filtered_lrelu(x, f, f, impl="ref", **kwargs))


@pytest.mark.parametrize("clamp", [None, 0.6])
def test_first_and_second_derivatives(clamp):
    x = _randn(1, 2, 3, 3).requires_grad_(True)
    b = _randn(2, seed=1).requires_grad_(True)
    fu, fd = _filter("2d4", 2).double(), _filter("2d3", 3).double()

    def fn(x, b):
        return filtered_lrelu(x, fu, fd, b, up=2, down=2, padding=(2, 1, 1, 2), clamp=clamp)

    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(up=2.0), "up must be an int >= 1"),
        (dict(down=0), "down must be an int >= 1"),
        (dict(impl="triton"), "impl must be one of"),
        (dict(fu=torch.ones(2, 2, 2)), "1-D or 2-D"),
        (dict(b=torch.zeros(5)), "b must be a 1-D tensor of length"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(AssertionError, match=message):
        filtered_lrelu(torch.zeros(1, 2, 4, 4), **kwargs)


def test_rejects_non_4d_input():
    with pytest.raises(AssertionError, match="4-D"):
        filtered_lrelu(torch.zeros(2, 4, 4))
