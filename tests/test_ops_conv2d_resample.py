"""Tests for torch_utils.ops.conv2d_resample: every fast path against the numpy definition and the generic path."""

import numpy as np
import pytest
import torch
from numpy_ops import assert_matches, np_conv2d_resample

from torch_utils.ops import conv2d_resample as CR
from torch_utils.ops.upfirdn2d import setup_filter


def _randn(*shape, seed=0) -> torch.Tensor:
    """Random float64 tensor."""
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _filter(kind):
    """A random filter from setup_filter: None, '1d4' (4x4 from 4 taps), '2d3' (3x3) or 'sep8' (separable)."""
    rng = np.random.default_rng(7)
    taps = {"1d4": 4, "2d3": [3, 3], "sep8": 8}
    return None if kind is None else setup_filter(rng.uniform(0.1, 1, size=taps[kind]))


def _setup(kh, kw, groups, filter_kind, seed=0):
    """Images [2, 2*groups, 7, 6], weights [3*groups, 2, kh, kw] and a filter, all float64."""
    x = _randn(2, 2 * groups, 7, 6, seed=seed)
    w = _randn(3 * groups, 2, kh, kw, seed=seed + 1)
    f = _filter(filter_kind)
    return x, w, None if f is None else f.double()


PATH_CASES = [
    # expected path, kh, kw, up, down, filter, padding, groups
    ("_conv_plain", 3, 3, 1, 1, None, 1, 1),
    ("_conv_plain", 3, 2, 1, 1, "2d3", (1, 0, 2, -1), 2),  # the filter is unused without resampling
    ("_conv_plain", 1, 1, 1, 1, None, (0, 1), 1),
    ("_conv_down", 3, 3, 1, 2, "1d4", 0, 1),
    ("_conv_down", 4, 4, 1, 3, "2d3", (1, -1, 0, 2), 2),
    ("_conv_down", 2, 3, 1, 2, "sep8", 1, 3),
    ("_conv1x1_down", 1, 1, 1, 2, "1d4", 0, 2),
    ("_conv1x1_down", 1, 1, 1, 4, "2d3", (1, 0, -1, 2), 1),
    ("_conv1x1_up", 1, 1, 2, 1, "1d4", 0, 1),
    ("_conv1x1_up", 1, 1, 3, 1, "2d3", (-1, 2, 1, 0), 2),
    ("_conv_up", 3, 3, 2, 1, "1d4", 0, 1),
    ("_conv_up", 4, 4, 2, 1, "2d3", (1, -2, 0, 1), 2),
    ("_conv_up", 2, 3, 3, 1, "sep8", 1, 1),
    ("_conv_up", 3, 3, 2, 2, "1d4", (0, 1, 1, 0), 2),
    ("_conv_up", 1, 1, 2, 2, "2d3", 0, 1),  # a 1x1 kernel that both up- and downsamples
    ("_conv_up", 3, 3, 4, 1, None, (2, -1, 0, 3), 3),
]
CASE_IDS = [f"{c[0]}-k{c[1]}x{c[2]}-up{c[3]}-down{c[4]}-{c[5]}-g{c[7]}" for c in PATH_CASES]


def _spy_on(monkeypatch, path: str) -> list:
    """Record each call of the path function `path` of conv2d_resample, still running it."""
    calls, original = [], getattr(CR, path)

    def spy(*args, **kwargs):
        calls.append(path)
        return original(*args, **kwargs)

    monkeypatch.setattr(CR, path, spy)
    return calls


@pytest.mark.parametrize("flip_weight, flip_filter", [(True, False), (False, False), (True, True), (False, True)])
@pytest.mark.parametrize("case", PATH_CASES, ids=CASE_IDS)
def test_fast_path_matches_numpy(monkeypatch, case, flip_weight, flip_filter):
    path, kh, kw, up, down, filter_kind, padding, groups = case
    x, w, f = _setup(kh, kw, groups, filter_kind)
    calls = _spy_on(monkeypatch, path)
    y = CR.conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter)
    assert calls == [path], "conv2d_resample took a different path than expected"
    f_np = None if f is None else f.numpy()
    expected = np_conv2d_resample(x.numpy(), w.numpy(), f_np, up, down, padding, groups, flip_weight, flip_filter)
    assert_matches(y, expected)


@pytest.mark.parametrize("case", PATH_CASES, ids=CASE_IDS)
def test_fast_path_gradients_match_generic(case):
    _, kh, kw, up, down, filter_kind, padding, groups = case
    x, w, f = _setup(kh, kw, groups, filter_kind)
    x.requires_grad_(True)
    w.requires_grad_(True)
    flip_weight = kh % 2 == 0  # vary it across cases; the value test covers both for every case
    fast = CR.conv2d_resample(x, w, f, up, down, padding, groups, flip_weight)
    wide = CR._resampling_padding(padding, f, up, down)
    generic = CR._conv2d_resample_generic(x, w, f, up, down, wide, groups, flip_weight, False)
    grad_out = _randn(*fast.shape, seed=5)
    fast_grads = torch.autograd.grad(fast, (x, w), grad_out)
    generic_grads = torch.autograd.grad(generic, (x, w), grad_out)
    for a, b in zip(fast_grads, generic_grads, strict=True):
        assert_matches(a, b.numpy())


@pytest.mark.parametrize(
    "up, down, kh, kw, groups",
    [(2, 1, 3, 3, 2), (1, 2, 3, 3, 1), (2, 2, 2, 3, 1), (1, 2, 1, 1, 2), (2, 1, 1, 1, 1)],
)
def test_first_and_second_derivatives(up, down, kh, kw, groups):
    x = _randn(1, 2 * groups, 4, 4).requires_grad_(True)
    w = _randn(groups, 2, kh, kw, seed=1).requires_grad_(True)
    f = _filter("1d4").double()

    def fn(x, w):
        return CR.conv2d_resample(x, w, f, up=up, down=down, padding=1, groups=groups, flip_weight=False)

    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


@pytest.mark.parametrize(
    "x_shape, w_shape, kwargs, message",
    [
        ([2, 4, 5], [3, 4, 3, 3], {}, "x must be a 4-D"),
        ([1, 4, 5, 5], [3, 4, 3], {}, "w must be a 4-D"),
        ([1, 4, 5, 5], [3, 3, 3, 3], {}, "x has 4 channels but w expects 3"),
        ([1, 4, 5, 5], [3, 2, 3, 3], dict(groups=2), "not divisible by groups"),
        ([1, 4, 5, 5], [3, 4, 3, 3], dict(up=0), "up must be an int >= 1"),
        ([1, 4, 5, 5], [3, 4, 3, 3], dict(down=1.5), "down must be an int >= 1"),
        ([1, 4, 5, 5], [3, 4, 3, 3], dict(f=torch.ones(1, 1, 1)), "1-D or 2-D"),
    ],
)
def test_rejects_bad_arguments(x_shape, w_shape, kwargs, message):
    with pytest.raises(AssertionError, match=message):
        CR.conv2d_resample(torch.zeros(x_shape), torch.zeros(w_shape), **kwargs)


def test_rejects_mixed_dtypes():
    with pytest.raises(AssertionError, match="same dtype"):
        CR.conv2d_resample(torch.zeros(1, 2, 4, 4), torch.zeros(2, 2, 3, 3, dtype=torch.float64))
