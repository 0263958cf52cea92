"""Tests for torch_utils.ops.upfirdn2d against the numpy definition in numpy_ops."""

import numpy as np
import pytest
import torch
from direct_ops import derivatives, direct_upfirdn2d
from numpy_ops import assert_matches, np_upfirdn2d

from torch_utils.ops import upfirdn2d as U


def _images(shape, seed=0) -> torch.Tensor:
    """Random float64 images of the given shape."""
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _taps(n, seed=1) -> list[float]:
    """n random positive filter taps (positive so normalizing never divides by ~0)."""
    return (np.random.default_rng(seed).uniform(0.2, 1.0, size=n)).tolist()


# ----------------------------------------------------------------------------
# setup_filter


def test_setup_filter_none_and_scalar_give_identity_2d():
    assert torch.equal(U.setup_filter(None), torch.ones([1, 1]))
    # A 1-tap filter is 1-D, so it becomes the outer product with itself: 3 * 3.
    assert torch.equal(U.setup_filter(3.0, normalize=False), torch.full([1, 1], 9.0))


def test_setup_filter_short_1d_becomes_normalized_outer_product():
    f = U.setup_filter(np.array([1.0, 3.0, 3.0, 1.0]))
    expected = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64
    assert f.dtype == torch.float32 and f.ndim == 2
    np.testing.assert_allclose(f.numpy(), expected, rtol=1e-6)


def test_setup_filter_separable_choice():
    assert U.setup_filter([1] * 8).ndim == 1  # >= 8 taps: separable by default
    assert U.setup_filter([1] * 7).ndim == 2
    assert U.setup_filter([1] * 3, separable=True).ndim == 1
    assert U.setup_filter([1] * 8, separable=False).shape == (8, 8)
    with pytest.raises(AssertionError, match="separable=True needs a 1-D filter"):
        U.setup_filter(np.ones([3, 3]), separable=True)


def test_setup_filter_flip_and_gain():
    f = U.setup_filter(torch.tensor([1.0, 2.0, 4.0]), normalize=False, flip_filter=True, gain=3)
    np.testing.assert_allclose(f.numpy(), 3 * np.outer([4, 2, 1], [4, 2, 1]), rtol=1e-6)
    # A separable filter carries gain**0.5, so its two passes multiply to `gain`.
    g = U.setup_filter([1.0] * 8, gain=4)
    np.testing.assert_allclose(g.numpy(), np.full(8, 2 / 8), rtol=1e-6)


def test_setup_filter_rejects_3d():
    with pytest.raises(AssertionError, match="0-D, 1-D or 2-D"):
        U.setup_filter(np.ones([2, 2, 2]))


# ----------------------------------------------------------------------------
# upfirdn2d against the numpy definition

FILTERS = {
    "none": None,
    "odd1d": _taps(3),  # setup_filter turns these short 1-D filters into 2-D ones
    "even1d": _taps(4),
    "sep8": _taps(8),  # stays 1-D: the separable code path
    "sep9": _taps(9, seed=2),
    "rect2d": np.random.default_rng(3).uniform(-1, 1, size=[3, 2]).tolist(),  # fh != fw
    "sq2d": np.random.default_rng(4).uniform(-1, 1, size=[4, 4]).tolist(),
}

CASES = [
    # filter, up, down, padding, flip_filter, gain, x shape
    ("none", 1, 1, 0, False, 1, [2, 3, 4, 5]),
    ("none", 3, 2, (1, -1, 0, 2), False, 2.5, [1, 2, 3, 4]),
    ("odd1d", 1, 1, 1, False, 1, [2, 2, 5, 6]),
    ("odd1d", 2, 1, (2, 1), True, 1, [1, 2, 4, 3]),
    ("even1d", 2, 2, (2, 1, 2, 1), False, 4, [2, 1, 5, 5]),
    ("even1d", (1, 3), (2, 1), (0, 3, 2, -1), True, 1, [1, 2, 4, 5]),
    ("sep8", 4, 1, (4, 3), False, 16, [1, 2, 3, 3]),
    ("sep8", 1, 4, (-1, 5, 3, 2), True, 1, [1, 2, 9, 8]),
    ("sep9", (2, 3), (3, 2), (4, 4, 4, 3), False, -1.5, [1, 1, 5, 4]),
    ("rect2d", 1, 1, (-1, -1, 1, 0), False, 1, [2, 2, 5, 6]),
    ("rect2d", (3, 2), (1, 3), (1, 2, 0, 1), True, 0.5, [1, 2, 4, 4]),
    ("sq2d", 2, 2, (2, 1, 2, 1), False, 4, [1, 3, 6, 5]),
    ("sq2d", 4, 3, (-2, 0, 1, -3), True, 1, [2, 1, 4, 4]),
]


@pytest.mark.parametrize("name, up, down, padding, flip_filter, gain, shape", CASES)
def test_upfirdn2d_matches_numpy(name, up, down, padding, flip_filter, gain, shape):
    x = _images(shape)
    f = None if FILTERS[name] is None else U.setup_filter(FILTERS[name], normalize=False)
    y = U.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain, impl="ref")
    f_np = None if f is None else f.numpy()
    assert_matches(y, np_upfirdn2d(x.numpy(), f_np, up, down, padding, flip_filter, gain))


@pytest.mark.parametrize("seed", range(8))
def test_upfirdn2d_random_configs_match_numpy(seed):
    rng = np.random.default_rng(seed)
    up, down = rng.integers(1, 5, size=2).tolist(), rng.integers(1, 5, size=2).tolist()
    taps = rng.uniform(-1, 1, size=rng.integers(1, 7, size=rng.integers(1, 3)))
    f = U.setup_filter(taps, normalize=False, separable=taps.ndim == 1 and rng.random() < 0.5)
    fh, fw = f.shape[0], f.shape[-1]
    # Enough rows/cols that even negative padding leaves room for the filter.
    x = _images([1, 2, int(rng.integers(fh + 2, fh + 6)), int(rng.integers(fw + 2, fw + 6))], seed)
    padding = rng.integers(-1, 4, size=4).tolist()
    flip, gain = bool(rng.random() < 0.5), float(rng.uniform(0.5, 2))
    y = U.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    assert_matches(y, np_upfirdn2d(x.numpy(), f.numpy(), up, down, padding, flip, gain))


def test_upfirdn2d_keeps_float32_with_float64_filter():
    x = _images([1, 2, 4, 4]).float()
    f = U.setup_filter([1, 2, 1]).double()
    y = U.upfirdn2d(x, f, padding=1)
    assert y.dtype == torch.float32
    assert_matches(y.double(), np_upfirdn2d(x.double().numpy(), f.numpy(), padding=1), tol=1e-5)


def test_cuda_impl_on_cpu_equals_ref():
    x, f = _images([2, 3, 5, 4]), U.setup_filter(_taps(4))
    kwargs = dict(up=2, down=(1, 2), padding=(2, 1, 0, 3), gain=3)
    assert torch.equal(U.upfirdn2d(x, f, impl="cuda", **kwargs), U.upfirdn2d(x, f, impl="ref", **kwargs))


@pytest.mark.parametrize(
    "kwargs, f_taps",
    [
        (dict(up=2, padding=(2, 1, 1, 2)), _taps(4)),
        (dict(down=2, padding=(4, 3), flip_filter=True, gain=2), _taps(8)),
        (dict(up=(1, 2), down=(2, 1), padding=(0, 1, 2, 0)), _taps(3)),
    ],
)
def test_upfirdn2d_first_and_second_derivatives(kwargs, f_taps):
    x = _images([1, 2, 4, 3]).requires_grad_(True)
    f = U.setup_filter(f_taps).double()

    def fn(x):
        return U.upfirdn2d(x, f, **kwargs)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


# ----------------------------------------------------------------------------
# The polyphase reference path against the step-by-step definition (tests/direct_ops.py), derivatives included


@pytest.mark.parametrize("name, up, down, padding, flip_filter, gain, shape", CASES)
def test_direct_definition_matches_numpy(name, up, down, padding, flip_filter, gain, shape):
    x = _images(shape)
    f = None if FILTERS[name] is None else U.setup_filter(FILTERS[name], normalize=False)
    y = direct_upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    assert_matches(y, np_upfirdn2d(x.numpy(), None if f is None else f.numpy(), up, down, padding, flip_filter, gain))


@pytest.mark.parametrize("name, up, down, padding, flip_filter, gain, shape", CASES)
def test_first_and_second_derivatives_match_direct_definition(name, up, down, padding, flip_filter, gain, shape):
    x = _images(shape).requires_grad_(True)
    f = None if FILTERS[name] is None else U.setup_filter(FILTERS[name], normalize=False).double()
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)
    ours = derivatives(lambda x: U.upfirdn2d(x, f, impl="ref", **kwargs), [x])
    direct = derivatives(lambda x: direct_upfirdn2d(x, f, **kwargs), [x])
    for a, b in zip(ours, direct, strict=True):
        assert_matches(a, b.detach().numpy())


@pytest.mark.parametrize("name, up, down, padding, flip_filter, gain, shape", CASES)
def test_gradgradcheck_every_case(name, up, down, padding, flip_filter, gain, shape):
    x = _images([1, 1, *shape[2:]]).requires_grad_(True)
    f = None if FILTERS[name] is None else U.setup_filter(FILTERS[name], normalize=False).double()

    def fn(x):
        return U.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain, impl="ref")

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("seed", range(8))
def test_random_configs_match_direct_definition_in_float32(seed):
    # Float32 at StyleGAN3-like sizes: the polyphase path sums the same products in another order, so it may differ
    # from the definition by rounding only (measured: about 1e-7 of the output's magnitude).
    rng = np.random.default_rng(seed)
    up, down = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    f = U.setup_filter(rng.uniform(-0.2, 1, size=int(rng.integers(2, 13))), separable=bool(rng.random() < 0.7))
    x = _images([2, 8, 20, 23], seed).float().requires_grad_(True)
    padding = rng.integers(-1, 9, size=4).tolist()
    kwargs = dict(up=up, down=down, padding=padding, flip_filter=bool(rng.random() < 0.5), gain=up * up)
    ours = derivatives(lambda x: U.upfirdn2d(x, f, impl="ref", **kwargs), [x])
    direct = derivatives(lambda x: direct_upfirdn2d(x, f, **kwargs), [x])
    for a, b in zip(ours, direct, strict=True):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()


def test_keeps_the_memory_format_of_x():
    f = U.setup_filter(_taps(8))
    x = _images([2, 3, 6, 7])
    for fmt in (torch.contiguous_format, torch.channels_last):
        y = U.upfirdn2d(x.contiguous(memory_format=fmt), f, up=2, padding=3, impl="ref")
        assert y.is_contiguous(memory_format=fmt)
        assert_matches(y, direct_upfirdn2d(x, f, up=2, padding=3).numpy())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: U.upfirdn2d(torch.zeros(2, 3, 4), None), "4-D"),
        (lambda: U.upfirdn2d(torch.zeros(1, 1, 4, 4, dtype=torch.int64), None), "floating point"),
        (lambda: U.upfirdn2d(torch.zeros(1, 1, 4, 4), None, impl="triton"), "impl must be one of"),
        (lambda: U.upfirdn2d(torch.zeros(1, 1, 2, 2), torch.ones(4, 4)), "output would be empty"),
        (lambda: U.upfirdn2d(torch.zeros(1, 1, 4, 4), None, up=0), "factors must be >= 1"),
        (lambda: U.upfirdn2d(torch.zeros(1, 1, 4, 4), None, padding=(1, 2, 3)), "padding must be"),
        (lambda: U.upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 1)), "1-D or 2-D"),
    ],
)
def test_upfirdn2d_rejects_bad_arguments(call, message):
    with pytest.raises(AssertionError, match=message):
        call()


# ----------------------------------------------------------------------------
# filter2d, upsample2d, downsample2d

HELPER_FILTERS = [None, [1, 2, 1], [1, 3, 3, 1], _taps(8), np.ones([2, 5]).tolist()]


@pytest.mark.parametrize("taps", HELPER_FILTERS)
def test_helpers_give_expected_sizes(taps):
    f = None if taps is None else U.setup_filter(taps)
    x = _images([1, 2, 6, 8])
    assert U.filter2d(x, f).shape == (1, 2, 6, 8)
    assert U.filter2d(x, f, padding=(1, 0, 2, -1)).shape == (1, 2, 7, 9)
    assert U.upsample2d(x, f).shape == (1, 2, 12, 16)
    assert U.upsample2d(x, f, up=(3, 2)).shape == (1, 2, 12, 24)
    assert U.downsample2d(x, f).shape == (1, 2, 3, 4)
    assert U.downsample2d(x, f, down=(4, 3), padding=(0, 0, 1, 2)).shape == (1, 2, 3, 2)


def test_helpers_keep_the_filter_centered():
    x = _images([2, 3, 4, 6])
    # A centered delta filter is the identity.
    assert_matches(U.filter2d(x, U.setup_filter([0, 1, 0], normalize=False)), x.numpy())
    # A box filter of width 2 makes upsample2d repeat each pixel, and downsample2d average 2x2 blocks.
    box = U.setup_filter([1, 1])
    assert_matches(U.upsample2d(x, box), x.numpy().repeat(2, axis=2).repeat(2, axis=3))
    blocks = x.numpy().reshape(2, 3, 2, 2, 3, 2)
    assert_matches(U.downsample2d(x, box), blocks.mean(axis=(3, 5)))


# helper, its keyword arguments, filter shape [fh, fw], padding and gain that upfirdn2d must then get, worked out
# by hand from the formulas. Non-square, even-sized filters make every left/right split asymmetric.
HELPER_CASES = [
    (U.filter2d, dict(gain=-2), [3, 4], (2, 1, 1, 1), -2),
    (U.filter2d, dict(padding=(1, 0, -1, 2), flip_filter=True), [3, 4], (3, 1, 0, 3), 1),
    (U.upsample2d, dict(gain=0.5), [3, 4], (2, 1, 2, 0), 2),
    (U.upsample2d, dict(up=(3, 2), flip_filter=True), [2, 5], (3, 1, 1, 0), 6),
    (U.downsample2d, dict(gain=3), [4, 5], (2, 1, 1, 1), 3),
    (U.downsample2d, dict(down=(3, 2), padding=1, flip_filter=True), [3, 4], (2, 1, 2, 1), 1),
]


@pytest.mark.parametrize("helper, kwargs, f_shape, padding, gain", HELPER_CASES)
def test_helpers_pad_as_specified(helper, kwargs, f_shape, padding, gain):
    x = _images([1, 2, 6, 7])
    f = U.setup_filter(np.random.default_rng(5).uniform(-1, 1, size=f_shape))
    up = kwargs.get("up", 2) if helper is U.upsample2d else 1
    down = kwargs.get("down", 2) if helper is U.downsample2d else 1
    flip = kwargs.get("flip_filter", False)
    expected = np_upfirdn2d(x.numpy(), f.numpy(), up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
    assert_matches(helper(x, f, **kwargs), expected)
