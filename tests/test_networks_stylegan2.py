"""Tests for the StyleGAN2 networks: published parameter names, shapes, truncation, noise, conditioning."""

import helpers
import numpy as np
import pytest
import torch

from training.networks_stylegan2 import (
    Discriminator,
    Generator,
    MinibatchStdLayer,
    fp16_resolution,
    modulated_conv2d,
)


def tiny_G(c_dim=0, **kwargs):
    return helpers.tiny_stylegan2(resolution=16, map_depth=2, c_dim=c_dim, **kwargs)


def tiny_D(c_dim=0, **kwargs):
    return Discriminator(
        c_dim=c_dim,
        img_resolution=16,
        img_channels=3,
        channel_base=64,
        channel_max=8,
        mapping_kwargs=dict(num_layers=2),
        **kwargs,
    )


def test_generator_parameter_names_and_shapes_follow_the_published_format():
    shapes = {name: list(t.shape) for name, t in tiny_G(c_dim=5).state_dict().items()}
    expected = {
        "mapping.embed.weight": [8, 5],
        "mapping.embed.bias": [8],
        "mapping.fc0.weight": [8, 16],
        "mapping.fc0.bias": [8],
        "mapping.fc1.weight": [8, 8],
        "mapping.fc1.bias": [8],
        "mapping.w_avg": [8],
        "synthesis.b4.const": [8, 4, 4],
        "synthesis.b4.resample_filter": [4, 4],
        "synthesis.b4.conv1.weight": [8, 8, 3, 3],
        "synthesis.b4.conv1.bias": [8],
        "synthesis.b4.conv1.affine.weight": [8, 8],
        "synthesis.b4.conv1.affine.bias": [8],
        "synthesis.b4.conv1.noise_const": [4, 4],
        "synthesis.b4.conv1.noise_strength": [],
        "synthesis.b4.conv1.resample_filter": [4, 4],
        "synthesis.b4.torgb.weight": [3, 8, 1, 1],
        "synthesis.b4.torgb.bias": [3],
        "synthesis.b4.torgb.affine.weight": [8, 8],
        "synthesis.b4.torgb.affine.bias": [8],
    }
    for res, cin, cout in [(8, 8, 8), (16, 8, 4)]:
        block = f"synthesis.b{res}"
        expected[f"{block}.resample_filter"] = [4, 4]
        for conv, conv_in in [("conv0", cin), ("conv1", cout)]:
            expected[f"{block}.{conv}.weight"] = [cout, conv_in, 3, 3]
            expected[f"{block}.{conv}.bias"] = [cout]
            expected[f"{block}.{conv}.affine.weight"] = [conv_in, 8]
            expected[f"{block}.{conv}.affine.bias"] = [conv_in]
            expected[f"{block}.{conv}.noise_const"] = [res, res]
            expected[f"{block}.{conv}.noise_strength"] = []
            expected[f"{block}.{conv}.resample_filter"] = [4, 4]
        expected[f"{block}.torgb.weight"] = [3, cout, 1, 1]
        expected[f"{block}.torgb.bias"] = [3]
        expected[f"{block}.torgb.affine.weight"] = [cout, 8]
        expected[f"{block}.torgb.affine.bias"] = [cout]
    assert shapes == expected


def test_discriminator_parameter_names_and_shapes_follow_the_published_format():
    shapes = {name: list(t.shape) for name, t in tiny_D(c_dim=5).state_dict().items()}
    expected = {
        "b16.fromrgb.weight": [4, 3, 1, 1],
        "b16.fromrgb.bias": [4],
        "b16.fromrgb.resample_filter": [4, 4],
        "b16.conv0.weight": [4, 4, 3, 3],
        "b16.conv0.bias": [4],
        "b16.conv0.resample_filter": [4, 4],
        "b16.conv1.weight": [8, 4, 3, 3],
        "b16.conv1.bias": [8],
        "b16.conv1.resample_filter": [4, 4],
        "b16.skip.weight": [8, 4, 1, 1],
        "b16.skip.resample_filter": [4, 4],
        "b16.resample_filter": [4, 4],
        "b8.conv0.weight": [8, 8, 3, 3],
        "b8.conv0.bias": [8],
        "b8.conv0.resample_filter": [4, 4],
        "b8.conv1.weight": [8, 8, 3, 3],
        "b8.conv1.bias": [8],
        "b8.conv1.resample_filter": [4, 4],
        "b8.skip.weight": [8, 8, 1, 1],
        "b8.skip.resample_filter": [4, 4],
        "b8.resample_filter": [4, 4],
        "mapping.embed.weight": [8, 5],
        "mapping.embed.bias": [8],
        "mapping.fc0.weight": [8, 8],
        "mapping.fc0.bias": [8],
        "mapping.fc1.weight": [8, 8],
        "mapping.fc1.bias": [8],
        "b4.conv.weight": [8, 9, 3, 3],
        "b4.conv.bias": [8],
        "b4.conv.resample_filter": [4, 4],
        "b4.fc.weight": [8, 128],
        "b4.fc.bias": [8],
        "b4.out.weight": [8, 8],
        "b4.out.bias": [8],
    }
    assert shapes == expected
    assert "b4.out.weight" in tiny_D().state_dict() and list(tiny_D().b4.out.weight.shape) == [1, 8]


def test_published_256px_configuration_sizes():
    # StyleGAN2 at 256x256 with the default channels: 14 ws and the well-known layer widths.
    G = Generator(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3)
    assert G.num_ws == 14
    assert list(G.synthesis.b256.conv1.weight.shape) == [128, 128, 3, 3]
    assert list(G.synthesis.b64.conv0.weight.shape) == [512, 512, 3, 3]
    assert [res for res in G.synthesis.block_resolutions if G.synthesis.__getattr__(f"b{res}").use_fp16] == [
        32, 64, 128, 256,
    ]  # fmt: skip
    assert fp16_resolution(1024, 4) == 128 and fp16_resolution(16, 4) == 8


def test_generator_output_truncation_and_noise_modes():
    torch.manual_seed(0)
    G = tiny_G().eval()
    for name, param in G.named_parameters():
        if name.endswith("noise_strength"):  # Zero at initialization; give the noise an effect.
            param.data.fill_(0.5)
    z = torch.randn(4, 8)
    img = G(z, None, noise_mode="const")
    assert img.shape == (4, 3, 16, 16) and img.dtype == torch.float32 and torch.isfinite(img).all()
    assert torch.equal(img, G(z, None, noise_mode="const"))
    assert not torch.equal(G(z, None, noise_mode="random"), G(z, None, noise_mode="random"))
    assert not torch.equal(img, G(z, None, noise_mode="none"))

    # Truncation psi=0 maps every latent to w_avg, so all samples coincide.
    G.mapping.w_avg.copy_(torch.randn(8))
    ws = G.mapping(z, None, truncation_psi=0)
    assert torch.allclose(ws, G.mapping.w_avg.expand(4, G.num_ws, 8))
    ws_cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
    ws_full = G.mapping(z, None)
    assert torch.allclose(ws_cut[:, :2], G.mapping.w_avg.lerp(ws_full[:, :2], 0.5))
    assert torch.equal(ws_cut[:, 2:], ws_full[:, 2:])


def test_w_avg_tracks_the_mapping_output_with_update_emas():
    torch.manual_seed(1)
    G = tiny_G()
    z = torch.randn(6, 8)
    w = G.mapping(z, None)[:, 0]
    G.mapping(z, None, update_emas=True)
    assert torch.allclose(G.mapping.w_avg, w.mean(0) * (1 - 0.998), atol=1e-7)


def test_fused_and_unfused_modulated_conv_agree():
    torch.manual_seed(2)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 4, dtype=torch.float64)
    noise = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    f = torch.tensor([[1.0, 3, 3, 1]], dtype=torch.float64).T @ torch.tensor([[1.0, 3, 3, 1]], dtype=torch.float64)
    f = f / f.sum()
    for demodulate in [True, False]:
        kwargs = dict(noise=noise, up=2, padding=1, resample_filter=f, demodulate=demodulate, flip_weight=False)
        fused = modulated_conv2d(x, weight, styles, fused_modconv=True, **kwargs)
        unfused = modulated_conv2d(x, weight, styles, fused_modconv=False, **kwargs)
        assert fused.shape == (3, 5, 16, 16)
        assert torch.allclose(fused, unfused, atol=1e-10)
    # Demodulation (paper Eq. 3): a 1x1 convolution of a single all-ones pixel gives, per output channel, the
    # sum of the style-scaled weights divided by their L2 norm.
    out = modulated_conv2d(torch.ones(1, 4, 1, 1, dtype=torch.float64), weight[:, :, 1:2, 1:2], styles[:1])
    w_eff = weight[:, :, 1, 1] * styles[0]
    assert torch.allclose(out.flatten(), w_eff.sum(1) / w_eff.norm(dim=1), atol=1e-6)


def test_minibatch_std_matches_a_numpy_computation():
    torch.manual_seed(3)
    x = torch.randn(8, 6, 2, 2, dtype=torch.float64)
    y = MinibatchStdLayer(group_size=4, num_channels=2)(x)
    assert y.shape == (8, 8, 2, 2)
    xn = x.numpy()
    for n in range(8):
        group = [m for m in range(8) if m % 2 == n % 2]  # Groups interleave: sample n is in group n % (N/G).
        for f in range(2):
            part = xn[group][:, f * 3 : (f + 1) * 3]
            expected = np.sqrt(part.var(axis=0) + 1e-8).mean()
            assert np.allclose(y[n, 6 + f].numpy(), expected)
    with pytest.raises(AssertionError, match="divisible"):
        MinibatchStdLayer(group_size=4)(torch.randn(6, 2, 2, 2))


def test_discriminator_conditioning_and_gradients():
    torch.manual_seed(4)
    D = tiny_D(c_dim=3)
    img = torch.randn(4, 3, 16, 16, requires_grad=True)
    c = torch.eye(3)[[0, 1, 2, 0]]
    logits = D(img, c)
    assert logits.shape == (4, 1)
    assert not torch.allclose(D(img, c), D(img, torch.eye(3)[[1, 2, 0, 1]]))
    # R1 needs second derivatives through D.
    (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
    grad.square().sum().backward()
    assert D.b16.conv0.weight.grad is not None and torch.isfinite(D.b16.conv0.weight.grad).all()


def test_cpu_and_force_fp32_run_in_float32():
    G = tiny_G(num_fp16_res=4, conv_clamp=256)
    D = tiny_D(num_fp16_res=4, conv_clamp=256)
    assert all(G.synthesis.__getattr__(f"b{r}").use_fp16 for r in (8, 16))
    img = G(torch.randn(4, 8), None)
    assert img.dtype == torch.float32
    assert D(img, None).dtype == torch.float32
    assert G(torch.randn(4, 8), None, force_fp32=True).dtype == torch.float32


def test_conv_clamp_defaults_to_256_as_published():
    G, D = tiny_G(), tiny_D()
    assert G.synthesis.b16.conv1.conv_clamp == 256 and G.synthesis.b16.torgb.conv_clamp == 256
    assert D.b16.conv0.conv_clamp == 256 and D.b4.conv.conv_clamp == 256
