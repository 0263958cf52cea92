"""Tests for the StyleGAN3 generator: published layout, filter design, and translation equivariance."""

import helpers
import numpy as np
import pytest
import scipy.signal
import torch
from direct_ops import direct_filtered_lrelu

from torch_utils.alias_free import design_lowpass_filter, make_transform
from torch_utils.ops import filtered_lrelu
from training.networks_stylegan3 import Generator, layer_schedule


def tiny_G(res=16, **kwargs):
    return helpers.tiny_stylegan3(res, **kwargs)


def test_published_256px_layer_names():
    T = Generator(512, 0, 512, 256, 3)
    assert T.num_ws == 16
    assert T.synthesis.layer_names == [
        "L0_36_512",
        "L1_36_512",
        "L2_36_512",
        "L3_52_512",
        "L4_52_512",
        "L5_84_512",
        "L6_84_512",
        "L7_148_512",
        "L8_148_512",
        "L9_148_362",
        "L10_276_256",
        "L11_276_181",
        "L12_276_128",
        "L13_256_128",
        "L14_256_3",
    ]
    R = Generator(512, 0, 512, 256, 3, channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True)
    assert R.synthesis.layer_names[0] == "L0_36_1024" and R.synthesis.layer_names[-2] == "L13_256_256"
    assert list(R.synthesis.L0_36_1024.weight.shape) == [1024, 1024, 1, 1]
    assert list(R.synthesis.L0_36_1024.down_filter.shape) == [12, 12]  # Radial: 2-D.
    assert list(R.synthesis.L13_256_256.down_filter.shape) == [12]  # Critically sampled: separable.


def test_generator_parameter_names():
    names = {name: list(t.shape) for name, t in tiny_G().state_dict().items()}
    assert names["synthesis.input.freqs"] == [32, 2] and names["synthesis.input.phases"] == [32]
    assert names["synthesis.input.transform"] == [3, 3] and names["synthesis.input.weight"] == [32, 32]
    assert names["synthesis.input.affine.weight"] == [4, 16] and names["synthesis.input.affine.bias"] == [4]
    first = tiny_G().synthesis.layer_names[0]
    for suffix, shape in [
        ("affine.weight", [32, 16]),
        ("affine.bias", [32]),
        ("weight", [32, 32, 3, 3]),
        ("bias", [32]),
        ("magnitude_ema", []),
        ("up_filter", [12]),
        ("down_filter", [12]),
    ]:
        assert names[f"synthesis.{first}.{suffix}"] == shape, suffix
    assert "mapping.fc1.weight" in names and "mapping.w_avg" in names


def test_filter_schedule_follows_the_paper():
    # Appendix F: cutoffs grow geometrically from 2 to res/2 at layer N - N_crit = 12; stopbands from 2^2.1 to
    # (res/2) * 2^0.3; sampling rate = smallest power of two >= 2 * stopband (at most res); f_h = max(f_t, s/2) - f_c.
    s = layer_schedule(256)
    for i in [0, 3, 6, 12, 14]:
        t = min(i / 12, 1)
        cutoff = 2 * 64**t
        stopband = 2**2.1 * (128 * 2**0.3 / 2**2.1) ** t
        rate = min(2 ** int(np.ceil(np.log2(2 * stopband))), 256)
        assert s["cutoffs"][i] == pytest.approx(cutoff)
        assert s["stopbands"][i] == pytest.approx(stopband)
        assert s["sampling_rates"][i] == rate
        assert s["half_widths"][i] == pytest.approx(max(stopband, rate / 2) - cutoff)
    assert s["cutoffs"][6] == pytest.approx(16.0)


def kaiser_lowpass(numtaps: int, cutoff: float, width: float, fs: float) -> np.ndarray:
    """The windowed-sinc low-pass filter with Kaiser's empirical window formulas, written out independently."""
    attenuation = 2.285 * (numtaps - 1) * np.pi * (width / (fs / 2)) + 7.95  # dB
    if attenuation > 50:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21)
    else:
        beta = 0.0
    n = np.arange(numtaps) - (numtaps - 1) / 2
    h = np.sinc(2 * cutoff / fs * n) * np.i0(beta * np.sqrt(1 - (2 * n / (numtaps - 1)) ** 2)) / np.i0(beta)
    return h / h.sum()


@pytest.mark.parametrize("layer_index", [1, 5, 9, 13])
def test_lowpass_filters_follow_the_schedule(layer_index):
    # Each layer's upsampling filter uses the previous layer's cutoff f_c and half-width f_h, its downsampling
    # filter its own, at the layer's intermediate sampling rate, with 6 taps per unit of resampling factor.
    G = Generator(512, 0, 512, 256, 3)
    s = layer_schedule(256)
    layer = getattr(G.synthesis, G.synthesis.layer_names[layer_index])
    fs = layer.tmp_sampling_rate
    assert fs == 2 * max(s["sampling_rates"][layer_index - 1], s["sampling_rates"][layer_index])
    for f, band in [(layer.up_filter, layer_index - 1), (layer.down_filter, layer_index)]:
        cutoff, half_width = s["cutoffs"][band], s["half_widths"][band]
        taps = f.double().numpy()
        assert len(taps) == 6 * fs / s["sampling_rates"][band]
        assert np.allclose(taps, kaiser_lowpass(len(taps), cutoff, 2 * half_width, fs), atol=1e-6)
        # And it does what a low-pass filter should: unit DC gain, stopband beyond f_c + f_h.
        freqs, response = scipy.signal.freqz(taps, worN=8192, fs=fs)
        assert abs(response[0]) == pytest.approx(1, abs=1e-6)
        assert np.abs(response[freqs >= cutoff + half_width]).max() < 0.1


def test_radial_filter_is_circularly_symmetric_and_normalized():
    f = design_lowpass_filter(12, cutoff=8, width=8, fs=64, radial=True).double().numpy()
    assert f.sum() == pytest.approx(1)
    assert np.allclose(f, f.T) and np.allclose(f, f[::-1, ::-1]) and np.allclose(f, f[::-1, :])
    assert design_lowpass_filter(1, cutoff=8, width=8, fs=64) is None


@pytest.mark.parametrize("shift", [(1, 0), (0, 2), (3, 1)])
def test_integer_translation_of_the_input_translates_the_output(shift):
    torch.manual_seed(0)
    res = 32
    G = tiny_G(res).eval()
    ws = G.mapping(torch.randn(2, 16), None)
    with torch.no_grad():
        img = G.synthesis(ws)
        G.synthesis.input.transform.copy_(
            torch.from_numpy(np.linalg.inv(make_transform((shift[0] / res, shift[1] / res))))
        )
        shifted = G.synthesis(ws)
    dx, dy, m = shift[0], shift[1], 4  # Compare away from the borders, which see content from outside the image.
    expected = img[:, :, m : res - m - dy, m : res - m - dx]
    moved = shifted[:, :, m + dy : res - m, m + dx : res - m]
    error = (moved - expected).abs().max()
    change = (shifted - img)[:, :, m : res - m, m : res - m].abs().max()
    assert error < 5e-3, error  # Measured: about 1e-3 or less.
    assert change > 10 * error  # The image did move.


def test_magnitude_ema_tracks_layer_inputs():
    G = tiny_G(magnitude_ema_beta=0.5)
    layer = getattr(G.synthesis, G.synthesis.layer_names[0])
    ws = G.mapping(torch.randn(4, 16), None)
    x = G.synthesis.input(ws[:, 0]).detach()
    G.synthesis(ws, update_emas=True)
    assert float(layer.magnitude_ema) == pytest.approx(0.5 * float(x.square().mean()) + 0.5, rel=1e-5)


@pytest.mark.parametrize("conv_clamp", [None, 256, 0.5])
def test_fast_reference_ops_give_the_images_and_gradients_of_the_definition(monkeypatch, conv_clamp):
    # A snapshot must render the same images, and train the same way, as when filtered_lrelu was computed step by
    # step: compare G against itself with the ops of tests/direct_ops.py, in float32 (conv_clamp 0.5 binds).
    def direct(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter=False, impl="cuda"):
        return direct_filtered_lrelu(x, fu, fd, b, up, down, padding, gain, slope, clamp, flip_filter)

    torch.manual_seed(0)
    G = Generator(
        z_dim=16,
        c_dim=0,
        w_dim=16,
        img_resolution=16,
        img_channels=3,
        channel_base=512,
        channel_max=16,
        num_fp16_res=0,
        conv_clamp=conv_clamp,
        mapping_kwargs=dict(num_layers=2),
    )
    z = torch.randn(3, 16)
    results = []
    for use_direct in (False, True):
        if use_direct:
            monkeypatch.setattr(filtered_lrelu, "filtered_lrelu", direct)
        G.zero_grad(set_to_none=True)
        img = G(z, None)
        img.square().sum().backward()
        results.append([img.detach()] + [p.grad for p in G.parameters() if p.grad is not None])
    for fast, slow in zip(*results, strict=True):
        assert (fast - slow).abs().max() <= 1e-5 * slow.abs().max()
