"""Tests for torch_utils.ops.filtered_lrelu against the numpy definition in numpy_ops."""

import math

import numpy as np
import pytest
import torch
from direct_ops import derivatives, direct_filtered_lrelu
from numpy_ops import assert_matches, np_filtered_lrelu

from torch_utils.ops.filtered_lrelu import _clamp_is_inactive, filtered_lrelu
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


# More cases for the reference path's shortcuts: a negative or zero gain (not folded into the filter), slope 1
# (no leaky ReLU), a clamp that cannot bind (skipped) and one that binds hard, filters with negative taps.
SHORTCUT_CASES = [
    *CASES,
    (2, 2, "1d", "1d", (4, 3), -1.5, 0.2, 0.8, False, True),
    (2, 1, "2d4", None, 2, 0.0, 0.2, 0.5, False, True),
    (1, 1, None, None, 0, 1.0, 1.0, 0.7, False, True),
    (2, 2, "2d3", "1d", (3, 2, 4, 1), math.sqrt(2), 0.2, 1e4, True, True),
    (4, 2, "1d", "2d4", (5, 4, 4, 5), 3.0, 1.5, 0.05, False, False),
]


@pytest.mark.parametrize("up, down, fu, fd, padding, gain, slope, clamp, flip_filter, bias", SHORTCUT_CASES)
def test_first_and_second_derivatives_match_direct_definition(
    up, down, fu, fd, padding, gain, slope, clamp, flip_filter, bias
):
    x = _randn(2, 3, 5, 6).requires_grad_(True)
    b = _randn(3, seed=1).requires_grad_(True) if bias else None
    fu, fd = _filter(fu, 2), _filter(fd, 3)
    if fu is not None:
        fu = fu - 0.3 * fu.mean()  # some negative taps
    args = (up, down, padding, gain, slope, clamp, flip_filter)
    inputs = [x] if b is None else [x, b]

    def ours(x, b=None):
        return filtered_lrelu(x, fu, fd, b, *args, impl="ref")

    def direct(x, b=None):
        return direct_filtered_lrelu(x, fu, fd, b, *args)

    expected = derivatives(direct, inputs)
    assert_matches(
        expected[0],
        np_filtered_lrelu(x.detach().numpy(), _np(fu), _np(fd), _np(None if b is None else b.detach()), *args),
    )
    for a, e in zip(derivatives(ours, inputs), expected, strict=True):
        assert_matches(a, e.detach().numpy())


@pytest.mark.parametrize("seed", range(6))
def test_clamp_is_inactive_only_when_no_activation_reaches_it(seed):
    rng = np.random.default_rng(seed)
    fu = setup_filter(rng.uniform(-0.5, 1, size=[8] if seed % 2 else [4, 4]))
    x = _randn(2, 3, 6, 6, seed=seed) * float(rng.uniform(0.1, 3))
    up, gain, slope = 2, float(rng.uniform(-2, 2)), float(rng.uniform(-1.5, 1.5))
    lrelu = direct_filtered_lrelu(x, fu, None, None, up, 1, 4, gain, slope, None, False)  # before the clamp
    peak = float(lrelu.abs().max())
    assert not _clamp_is_inactive(x, fu, up, gain, slope, peak)  # the bound is never below the real peak
    assert _clamp_is_inactive(x, fu, up, gain, slope, 1e3 * peak)
    assert not _clamp_is_inactive(x.clone().fill_(float("nan")), fu, up, gain, slope, 1e30)


def test_channels_last_input_gives_channels_last_output():
    x, f = _randn(1, 3, 5, 5), _filter("1d", 0)
    y = filtered_lrelu(x.contiguous(memory_format=torch.channels_last), f, f, up=2, down=2, padding=5, impl="ref")
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_matches(y, direct_filtered_lrelu(x, f, f, None, 2, 2, 5, math.sqrt(2), 0.2, None, False).numpy())


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


def test_filter_gradients_flow_through_the_reference_path():
    # A filter that needs gradients makes the upsampled tensor part of the graph even when x is not.
    x, fu, fd = _randn(1, 2, 4, 4), _filter("2d4", 2).requires_grad_(True), _filter("1d", 3).requires_grad_(True)
    args = (2, 2, (2, 1, 1, 2), math.sqrt(2), 0.2, None, False)
    ours = derivatives(lambda fu, fd: filtered_lrelu(x, fu, fd, None, *args, impl="ref"), [fu, fd])
    direct = derivatives(lambda fu, fd: direct_filtered_lrelu(x, fu, fd, None, *args), [fu, fd])
    for a, e in zip(ours, direct, strict=True):
        assert_matches(a, e.detach().numpy())
