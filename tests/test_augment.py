"""Tests for training.augment: every transform against its definition, exactness at p = 0, gradients, state, ADA."""

import copy
import math
import pickle
import unittest.mock
from statistics import NormalDist

import numpy as np
import pytest
import torch

from torch_utils import distributed
from training.augment import AUGMENT_PRESETS, AdaController, AugmentPipe, make_band_filters


def _images(shape, seed=0) -> torch.Tensor:
    """Random float32 images in about [-1, 1]."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).clamp(-2, 2) / 2


def _pipe(p: float = 1.0, **kwargs) -> AugmentPipe:
    """An AugmentPipe with the given weights and p."""
    pipe = AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def _z(percentile: float) -> float:
    """The standard normal distribution's quantile."""
    return NormalDist().inv_cdf(percentile)


# ----------------------------------------------------------------------------
# Presets, p = 0 and p = 1.


def test_presets_table():
    geom, color = {"scale", "rotate", "aniso", "xfrac"}, {"brightness", "contrast", "lumaflip", "hue", "saturation"}
    assert set(AUGMENT_PRESETS["blit"]) == {"xflip", "rotate90", "xint"}
    assert set(AUGMENT_PRESETS["geom"]) == geom
    assert set(AUGMENT_PRESETS["color"]) == color
    assert set(AUGMENT_PRESETS["bgc"]) == {"xflip", "rotate90", "xint"} | geom | color
    assert set(AUGMENT_PRESETS["bgcfnc"]) == set(AUGMENT_PRESETS["bgc"]) | {"imgfilter", "noise", "cutout"}
    assert all(w == 1 for kwargs in AUGMENT_PRESETS.values() for w in kwargs.values())
    AugmentPipe(**AUGMENT_PRESETS["bgcfnc"])  # every key is a constructor argument


@pytest.mark.parametrize("preset", list(AUGMENT_PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_p0_is_exact_identity(preset, channels):
    x = _images([4, channels, 16, 16])
    torch.manual_seed(0)
    assert torch.equal(_pipe(0.0, **AUGMENT_PRESETS[preset])(x), x)
    assert torch.equal(_pipe(0.0, **AUGMENT_PRESETS[preset])(x, debug_percentile=0.8), x)


@pytest.mark.parametrize("preset", list(AUGMENT_PRESETS))
def test_p1_changes_every_image(preset):
    x = _images([8, 3, 16, 16])
    torch.manual_seed(1)
    y = _pipe(1.0, **AUGMENT_PRESETS[preset])(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    changed = (y - x).abs().flatten(1).amax(dim=1) > 1e-3  # [N]
    # Pixel blitting leaves an image alone with probability 1/2 * 1/4 * 1/4 (no flip, k = 0, no shift).
    assert changed.sum() >= 6, f"{preset} changed only {int(changed.sum())} of 8 images"


@pytest.mark.parametrize(
    "kwargs, p, expected",
    [
        (dict(xflip=1), 0.5, 0.25),  # fires with p, then flips with probability 1/2
        (dict(rotate=1), 0.5, 0.5),  # pre- or post-rotation: P(at least one) = p, not 1 - (1 - p)^2
        (dict(scale=0.5), 1.0, 0.5),  # weights multiply p
        (dict(brightness=1), 0.3, 0.3),
        (dict(imgfilter=1, imgfilter_bands=(0, 0, 0, 1)), 0.4, 0.4),
        (dict(cutout=1), 0.4, 0.4),
    ],
)
def test_probability_of_each_transform(kwargs, p, expected):
    n = 2000
    x = _images([n, 1, 8, 8])
    torch.manual_seed(2)
    changed = (_pipe(p, **kwargs)(x) != x).flatten(1).any(dim=1).float().mean().item()
    assert abs(changed - expected) < 0.04, f"{kwargs} at p={p}: {changed:.3f} of images changed, expected {expected}"


# ----------------------------------------------------------------------------
# Pixel blitting: exact.


def test_xflip():
    x = _images([2, 3, 8, 12])
    assert torch.equal(_pipe(xflip=1)(x, debug_percentile=0.75), x.flip(3))  # pixel (x, y) -> (W-1-x, y)
    assert torch.equal(_pipe(xflip=1)(x, debug_percentile=0.25), x)  # fired, but drew "no flip"
    x = _images([16, 3, 8, 12])
    torch.manual_seed(3)
    y = _pipe(xflip=1)(x)
    flipped = [torch.equal(yi, xi.flip(2)) for xi, yi in zip(x, y, strict=True)]
    same = [torch.equal(yi, xi) for xi, yi in zip(x, y, strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True)) and any(flipped) and any(same)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotate90(k):
    size, px, py = 16, 3, 5
    x = torch.zeros([1, 1, size, size])
    x[0, 0, py, px] = 1
    y = _pipe(rotate90=1)(x, debug_percentile=(k + 0.5) / 4)
    # With y pointing down, a quarter turn is clockwise on screen: (x, y) -> (W-1-y, x).
    expected = [(px, py), (size - 1 - py, px), (size - 1 - px, size - 1 - py), (py, size - 1 - px)][k]
    assert y.sum() == 1 and y[0, 0, expected[1], expected[0]] == 1
    img = _images([2, 3, size, size])
    assert torch.equal(_pipe(rotate90=1)(img, debug_percentile=(k + 0.5) / 4), torch.rot90(img, -k, dims=(2, 3)))


def test_rotate90_needs_square_images():
    with pytest.raises(AssertionError, match="square"):
        _pipe(rotate90=1)(_images([1, 3, 8, 16]))


def _shift_reflect(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Move content by (dx, dy) >= 0 pixels, filling in by reflection (np.pad 'reflect')."""
    h, w = x.shape[-2:]
    padded = np.pad(x, [(0, 0), (0, 0), (dy, 0), (dx, 0)], mode="reflect")
    return padded[..., :h, :w]


def test_xint_translates_by_whole_pixels_with_reflection():
    x = _images([2, 3, 16, 32])
    # u = -0.125 + 0.25 * 0.9 = 0.1 image sizes: round(3.2) = 3 pixels in x, round(1.6) = 2 in y.
    y = _pipe(xint=1)(x, debug_percentile=0.9)
    np.testing.assert_array_equal(y.numpy(), _shift_reflect(x.numpy(), 3, 2))


def test_blit_composes_flip_then_rotation_then_translation():
    x = _images([2, 3, 16, 16])
    y = _pipe(**AUGMENT_PRESETS["blit"])(x, debug_percentile=0.9)  # flip, k = 3, shift by 2 in x and y
    expected = _shift_reflect(torch.rot90(x.flip(3), -3, dims=(2, 3)).numpy(), 2, 2)
    np.testing.assert_array_equal(y.numpy(), expected)


# ----------------------------------------------------------------------------
# General geometric transforms.


def _rot(t):
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])


def _expected_geometric_matrix(kwargs: dict, pct: float, size: int) -> np.ndarray:
    """The content transform T @ R_post @ A @ R_pre @ S at a percentile, with the default stds."""
    z, theta = _z(pct), (2 * pct - 1) * math.pi
    m = np.eye(3)
    if "scale" in kwargs:
        m = np.diag([2 ** (0.2 * z), 2 ** (0.2 * z), 1]) @ m
    if "rotate" in kwargs:
        m = _rot(theta) @ m
    if "aniso" in kwargs:
        m = np.diag([2 ** (0.2 * z), 2 ** (-0.2 * z), 1]) @ m
    if "rotate" in kwargs:
        m = _rot(theta) @ m
    if "xfrac" in kwargs:
        m = np.array([[1, 0, 0.125 * z * size], [0, 1, 0.125 * z * size], [0, 0, 1]]) @ m
    return m


@pytest.mark.parametrize(
    "kwargs", [dict(scale=1), dict(rotate=1), dict(aniso=1), dict(xfrac=1), AUGMENT_PRESETS["geom"]], ids=str
)
@pytest.mark.parametrize("pct", [0.3, 0.7])
def test_geometric_moves_a_blob_where_the_matrix_says(kwargs, pct):
    size, sigma = 32, 2.0
    c0 = np.array([17.3, 13.6])  # blob centre, pixels
    centre = np.array([(size - 1) / 2, (size - 1) / 2])
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    blob = torch.exp(-((xx - c0[0]) ** 2 + (yy - c0[1]) ** 2) / (2 * sigma**2))[None, None]  # [1, 1, H, W]
    y = _pipe(**kwargs)(blob, debug_percentile=pct)[0, 0]

    m = _expected_geometric_matrix(kwargs, pct, size)
    expected = (m @ np.r_[c0 - centre, 1])[:2] + centre
    # Measure within 7 px of the expected centre: the border reflection may show a mirrored blob's tail.
    y = y * (((xx - expected[0]) ** 2 + (yy - expected[1]) ** 2) < 7**2)
    got = np.array([(y * xx).sum() / y.sum(), (y * yy).sum() / y.sum()])
    np.testing.assert_allclose(got, expected, atol=0.05)
    # The blob's mass scales with the area change |det M|.
    np.testing.assert_allclose(y.sum(), blob.sum() * abs(np.linalg.det(m)), rtol=0.01)


def test_geometric_identity_transform_keeps_a_smooth_image_in_place():
    # At the median every draw is neutral (scale 1) but the image still goes through the 2x resampler; the
    # asymmetric Symlet filter delays it by ~0.2 pixel unless compensated for.
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    x = (torch.sin(2 * math.pi * 0.05 * xx + 0.3) * torch.cos(2 * math.pi * 0.035 * yy))[None, None]
    y = _pipe(scale=1)(x, debug_percentile=0.5)
    assert not torch.equal(y, x)
    assert (y - x)[..., 4:-4, 4:-4].abs().max() < 5e-3


# ----------------------------------------------------------------------------
# Color transforms.

GRAY = torch.tensor([0.3, 0.3, 0.3]).reshape(1, 3, 1, 1).expand(1, 3, 4, 4)
CHROMA = torch.tensor([0.4, -0.1, -0.3]).reshape(1, 3, 1, 1).expand(1, 3, 4, 4)  # sums to 0: no luma


def test_brightness_and_contrast():
    for x in (_images([2, 3, 8, 8]), _images([2, 1, 8, 8])):
        y = _pipe(brightness=1)(x, debug_percentile=0.8)
        torch.testing.assert_close(y, x + 0.2 * _z(0.8))
        y = _pipe(contrast=1)(x, debug_percentile=0.8)
        torch.testing.assert_close(y, x * 2 ** (0.5 * _z(0.8)))
        y = _pipe(brightness=1, contrast=1)(x, debug_percentile=0.8)  # brightness first, then contrast
        torch.testing.assert_close(y, (x + 0.2 * _z(0.8)) * 2 ** (0.5 * _z(0.8)))


def test_lumaflip_negates_luma_and_keeps_chroma():
    torch.testing.assert_close(_pipe(lumaflip=1)(GRAY, debug_percentile=0.75), -GRAY)
    torch.testing.assert_close(_pipe(lumaflip=1)(CHROMA, debug_percentile=0.75), CHROMA)
    torch.testing.assert_close(_pipe(lumaflip=1)(GRAY + CHROMA, debug_percentile=0.25), GRAY + CHROMA)
    x = _images([2, 1, 8, 8])
    torch.testing.assert_close(_pipe(lumaflip=1)(x, debug_percentile=0.75), -x)


def test_hue_rotates_chroma_about_the_gray_axis():
    torch.testing.assert_close(_pipe(hue=1)(GRAY, debug_percentile=0.7), GRAY)
    y = _pipe(hue=1)(GRAY + CHROMA, debug_percentile=0.7) - GRAY  # rotation by 0.4 pi
    a, b = CHROMA[0, :, 0, 0], y[0, :, 0, 0]
    torch.testing.assert_close(b.sum(), torch.tensor(0.0))  # still pure chroma
    torch.testing.assert_close(b.norm(), a.norm())
    v = torch.full([3], 1 / math.sqrt(3))
    angle = math.atan2(float(torch.linalg.cross(a, b) @ v), float(a @ b))  # right-handed about v
    assert abs(angle - 0.4 * math.pi) < 1e-5
    x = _images([2, 1, 8, 8])
    torch.testing.assert_close(_pipe(hue=1)(x, debug_percentile=0.7), x)  # gray images have no hue


def test_saturation_scales_chroma():
    z = _z(0.8)
    torch.testing.assert_close(_pipe(saturation=1)(GRAY + CHROMA, debug_percentile=0.8), GRAY + CHROMA * 2**z)
    x = _images([2, 1, 8, 8])
    torch.testing.assert_close(_pipe(saturation=1)(x, debug_percentile=0.8), x)


def test_color_preset_is_one_affine_color_map_per_image():
    x = _images([2, 3, 8, 8])
    y = _pipe(**AUGMENT_PRESETS["color"])(x, debug_percentile=0.8)
    # An affine color map per image: y = A x + b at every pixel, with A, b fitted from the pixels.
    xs = torch.cat([x[0].reshape(3, -1), torch.ones(1, 64)]).T  # [64, 4]
    coef = torch.linalg.lstsq(xs, y[0].reshape(3, -1).T).solution  # [4, 3]
    torch.testing.assert_close(xs @ coef, y[0].reshape(3, -1).T, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------
# Image-space filtering, noise, cutout.


def test_band_filters_split_the_spectrum():
    bands = make_band_filters()  # [4, taps]
    taps = bands.shape[1]
    delta = np.zeros(taps)
    delta[taps // 2] = 1
    np.testing.assert_allclose(bands.sum(axis=0), delta, atol=1e-12)
    np.testing.assert_allclose(bands, bands[:, ::-1], atol=1e-15)  # zero phase
    freqs = np.array([0, 1 / 32, 3 / 32, 3 / 16, 3 / 8, 1 / 2])  # DC, the 4 band centres, Nyquist; cycles/pixel
    response = bands @ np.cos(2 * np.pi * np.outer(np.arange(taps) - taps // 2, freqs))  # [4, 6]
    np.testing.assert_allclose(response[:, 0], [1, 0, 0, 0], atol=1e-12)  # DC: lowest band
    np.testing.assert_allclose(response[:, -1], [0, 0, 0, 1], atol=1e-12)  # Nyquist: highest band
    centres = response[:, 1:5]  # [band, centre]
    assert (centres.argmax(axis=0) == np.arange(4)).all() and (np.diag(centres) > 0.7).all()


def test_imgfilter_gains_keep_the_expected_power():
    g = 2 ** _z(0.8)  # the top band's gain before renormalization
    pipe = _pipe(imgfilter=1, imgfilter_bands=(0, 0, 0, 1))
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    flat = torch.ones([1, 1, 16, 16])
    checker = ((-1.0) ** (xx + yy)).float()[None, None]  # Nyquist in x and y
    gain_low = pipe(flat, debug_percentile=0.8).mean().sqrt()  # the filter runs along x and y: gain^2
    gain_high = (pipe(checker, debug_percentile=0.8) / checker).mean().sqrt()
    torch.testing.assert_close(gain_high / gain_low, torch.tensor(g))
    # sum_i share_i * gain_i^2 = 1 with shares (10, 1, 1, 1) / 13.
    torch.testing.assert_close((12 * gain_low**2 + gain_high**2) / 13, torch.tensor(1.0))
    # Equal gains in every band renormalize to the identity.
    x = _images([1, 3, 16, 16])
    torch.testing.assert_close(_pipe(imgfilter=1)(x, debug_percentile=0.8), x)


def test_noise_std():
    x = torch.zeros([4, 3, 32, 32])
    torch.manual_seed(4)
    y = _pipe(noise=1)(x, debug_percentile=0.9)
    assert abs(y.std().item() / (0.1 * _z(0.9)) - 1) < 0.03
    assert abs(y.mean().item()) < 0.01


def test_cutout_area():
    x = torch.ones([1, 3, 16, 16])
    y = _pipe(cutout=1)(x, debug_percentile=0.5)  # centred square of side 8
    expected = torch.ones_like(x)
    expected[..., 4:12, 4:12] = 0
    assert torch.equal(y, expected)
    y = _pipe(cutout=1)(x, debug_percentile=0.9)  # centre (14.4, 14.4) px: clipped to 6x6
    expected = torch.ones_like(x)
    expected[..., 10:, 10:] = 0
    assert torch.equal(y, expected)
    torch.manual_seed(5)
    zeros = (_pipe(cutout=1)(torch.ones([32, 1, 16, 16])) == 0).sum(dim=[1, 2, 3])
    assert zeros.min() >= 16 and zeros.max() <= 64  # at least a quarter of the square stays inside


# ----------------------------------------------------------------------------
# Gradients, host syncs, determinism, state.


def test_gradients_reach_the_images():
    x = _images([4, 3, 16, 16]).requires_grad_()
    torch.manual_seed(6)
    (_pipe(**AUGMENT_PRESETS["bgc"])(x) * torch.randn([4, 3, 16, 16])).sum().backward()
    assert x.grad.isfinite().all() and (x.grad.flatten(1).abs().sum(1) > 0).all()


def test_r1_double_backward_through_the_pipe():
    # loss.py differentiates D(augment(x)) w.r.t. x with create_graph, then back-propagates the penalty.
    x = _images([2, 3, 16, 16]).requires_grad_()
    weight = torch.randn([4, 3, 3, 3], requires_grad=True)
    torch.manual_seed(7)
    logits = torch.nn.functional.conv2d(_pipe(**AUGMENT_PRESETS["bgcfnc"])(x), weight).square().sum()
    (grad,) = torch.autograd.grad(logits, x, create_graph=True)
    grad.square().sum().backward()
    assert weight.grad.isfinite().all() and weight.grad.abs().sum() > 0


def test_forward_never_reads_tensors_on_the_host():
    def host_sync(*args, **kwargs):
        raise AssertionError("AugmentPipe.forward read a tensor on the host")

    pipe = _pipe(0.5, **AUGMENT_PRESETS["bgcfnc"])
    x = _images([2, 3, 16, 16])
    names = ["item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"]
    with unittest.mock.patch.multiple(torch.Tensor, **{name: host_sync for name in names}):
        pipe(x)
        pipe(x, debug_percentile=0.3)


def test_debug_percentile_is_deterministic():
    pipe = _pipe(**{k: v for k, v in AUGMENT_PRESETS["bgcfnc"].items() if k != "noise"})
    x = _images([3, 3, 16, 16])
    torch.manual_seed(8)
    a = pipe(x, debug_percentile=0.6)
    torch.manual_seed(9)
    assert torch.equal(a, pipe(x, debug_percentile=torch.tensor(0.6)))


def test_state_dict_deepcopy_and_pickle_keep_p():
    pipe = _pipe(0.375, **AUGMENT_PRESETS["bgc"])
    assert list(pipe.state_dict()) == ["p"] and pipe.state_dict()["p"].dtype == torch.float32
    fresh = AugmentPipe(**AUGMENT_PRESETS["bgc"])
    fresh.load_state_dict(pipe.state_dict())
    x = _images([2, 3, 16, 16])
    for other in (fresh, copy.deepcopy(pipe), pickle.loads(pickle.dumps(pipe))):
        assert other.p.item() == 0.375
        torch.manual_seed(10)
        a = other(x)
        torch.manual_seed(10)
        assert torch.equal(a, pipe(x))


# ----------------------------------------------------------------------------
# AdaController.


def test_ada_raises_and_lowers_p_by_one_step():
    pipe = AugmentPipe()
    ada = AdaController(pipe, target=0.6, interval=4, ada_kimg=500)
    step = 64 * 4 / 500_000
    assert ada.update(0.9, batch_size=64) == pytest.approx(step, abs=1e-9)
    assert ada.update(0.9, batch_size=64) == pytest.approx(2 * step, abs=1e-9)
    assert ada.update(0.1, batch_size=64) == pytest.approx(step, abs=1e-9)
    assert ada.update(0.6, batch_size=64) == pytest.approx(step, abs=1e-9)  # at the target: no change
    assert ada.update(-1.0, batch_size=64) == 0.0
    assert ada.update(-1.0, batch_size=64) == 0.0  # never below 0
    assert pipe.p.item() == 0.0 and ada.num_updates == 6


def test_ada_goes_from_0_to_1_in_ada_kimg():
    pipe = AugmentPipe()
    ada = AdaController(pipe, target=0.6, interval=4, ada_kimg=1.024)  # step 32 * 4 / 1024 = 1/8, exact
    ps = [ada.update(1.0, batch_size=32) for _ in range(9)]
    assert ps == [k / 8 for k in range(1, 9)] + [1.0]  # 1 after 8 updates, then clamped
    assert pipe.p.item() == 1.0

    pipe = AugmentPipe()
    ada = AdaController(pipe, ada_kimg=500)  # 1953.125 updates of batch 64
    ps = [ada.update(1.0, batch_size=64) for _ in range(1954)]
    assert ps[1952] == pytest.approx(1953 * 64 * 4 / 500_000, abs=1e-4) and ps[1952] < 1
    assert ps[1953] == 1.0


def _logits(*values: float) -> torch.Tensor:
    """D's raw outputs [N, 1] on N reals."""
    return torch.tensor(values, dtype=torch.float32)[:, None]


def test_ada_updates_every_interval_from_the_mean_sign_of_what_it_observed():
    pipe = AugmentPipe()
    ada = AdaController(pipe, target=0.5, interval=2, ada_kimg=0.512)
    assert ada.step_size(batch_size=32) == 32 * 2 / (0.512 * 1000) == 1 / 8  # batch * interval / (ada_kimg * 1000)

    ada.observe(_logits(1.0, 2.0, -3.0, 0.0))  # signs 1, 1, -1, 0
    ada.after_step(step=1, batch_size=32)  # not a multiple of the interval: nothing moves
    assert pipe.p.item() == 0.0 and ada.num_updates == 0
    assert ada.state_dict()["real_signs"].tolist() == [1.0, 4.0]
    ada.observe(_logits(5.0, 6.0, 7.0, 8.0))
    ada.after_step(step=2, batch_size=32)  # r_t = 5 / 8 over both steps' reals, above the target: p goes up
    assert pipe.p.item() == 1 / 8 and ada.num_updates == 1
    assert ada.state_dict()["real_signs"].tolist() == [0.0, 0.0]  # the window starts anew

    ada.observe(_logits(-1.0, -1.0, 1.0))  # r_t = -1/3, below the target: p goes down
    ada.after_step(step=4, batch_size=32)
    assert pipe.p.item() == 0.0
    ada.observe(_logits(-1.0))
    ada.after_step(step=6, batch_size=32)
    assert pipe.p.item() == 0.0 and ada.num_updates == 3  # clamped at 0

    ada.observe(_logits(1.0, -1.0))  # r_t = 0 at target 0: p stays
    ada.target = 0.0
    ada.after_step(step=8, batch_size=32)
    assert pipe.p.item() == 0.0 and ada.num_updates == 4
    assert ada.take_real_sign_mean() == 0.0  # nothing observed since


def test_ada_snapshot_and_restore_put_back_the_pending_signs():
    ada = AdaController(AugmentPipe())
    ada.observe(_logits(1.0, -1.0, 2.0))
    saved = ada.snapshot()
    ada.observe(_logits(4.0, 5.0))  # a phase that is then undone (--batch-gpu=auto)
    ada.restore(saved)
    assert ada.state_dict()["real_signs"].tolist() == [1.0, 3.0]
    assert ada.take_real_sign_mean() == 1 / 3


def test_ada_state_dict_round_trip():
    ada = AdaController(AugmentPipe(), target=0.7, interval=8, ada_kimg=100)
    ada.update(1.0, batch_size=16)
    ada.observe(_logits(3.0, -2.0, 1.0))
    other = AdaController(AugmentPipe())
    other.load_state_dict(ada.state_dict())
    state = other.state_dict()
    signs = state.pop("real_signs")
    assert state == dict(target=0.7, interval=8, ada_kimg=100.0, num_updates=1)
    assert signs.dtype == torch.float64 and signs.device.type == "cpu" and signs.tolist() == [1.0, 3.0]
    assert torch.equal(signs, ada.state_dict()["real_signs"])
    assert other.take_real_sign_mean() == ada.take_real_sign_mean() == 1 / 3


def _ada_rank_worker(out_dir):
    """One of two ranks: rank r observes r + 1 positive and 2 negative logits, then gathers, saves and reloads."""
    torch.set_num_threads(1)
    rank = distributed.get_rank()
    ada = AdaController(AugmentPipe(), target=0.0, interval=1, ada_kimg=1)
    ada.observe(_logits(*[1.0] * (rank + 1), -1.0, -1.0))
    pending = ada.state_dict()["real_signs"]
    ada.gather_pending()
    saved = ada.state_dict()  # What rank 0 writes: every rank's signs.
    ada.load_state_dict(saved)  # Resuming, every rank reads rank 0's state.
    ada.observe(_logits(1.0))
    torch.save(dict(pending=pending, saved=saved["real_signs"], mean=ada.take_real_sign_mean()), f"{out_dir}/{rank}.pt")


@pytest.mark.slow
def test_ada_sums_the_signs_over_ranks_and_gathers_them_on_rank_0(tmp_path):
    distributed.launch(_ada_rank_worker, (str(tmp_path),), num_processes=2)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    assert [r["pending"].tolist() for r in results] == [[-1.0, 3.0], [0.0, 4.0]]
    assert [r["saved"].tolist() for r in results] == [[-1.0, 7.0], [0.0, 0.0]]  # on rank 0 alone: no double count
    assert [r["mean"] for r in results] == [1 / 9, 1 / 9]  # (-1 + 0 + 1 + 1) / (7 + 2) on both ranks
