"""Tests for the CREPS generator: published layout, the modulated layer, and any-scale rendering."""

import numpy as np
import pytest
import torch

from training.networks_creps import Generator, line_coordinates, modulated_fc


def tiny_G(res=16, **kwargs):
    return Generator(
        z_dim=16,
        c_dim=0,
        w_dim=16,
        img_resolution=res,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        channel_base=res * 8,
        channel_max=16,
        **kwargs,
    )


def test_parameter_names_and_shapes():
    G = Generator(512, 0, 512, 256, 3, channel_base=65536, channel_max=1024)
    shapes = {name: list(t.shape) for name, t in G.state_dict().items()}
    assert G.num_ws == 15  # 1 input + 1 + 2*6 fc layers + 1 last skip output.
    expected = {
        "synthesis.b4.input.freqs": [1, 1024 // 2 * 8],
        "synthesis.b4.input.coords": [1, 256, 2, 1],
        "synthesis.b4.input.weight": [1, 1024, 1, 16],
        "synthesis.b4.input.affine.weight": [1024 * 16, 512],
        "synthesis.b4.fc1.weight": [1024, 1024],
        "synthesis.b4.fc1.affine.weight": [1024, 512],
        "synthesis.b4.tores.weight": [32, 1024],
        "synthesis.b4.tores.bias": [32],
        "synthesis.b64.fc0.weight": [1024, 1024],
        "synthesis.b128.fc0.weight": [512, 1024],
        "synthesis.b256.fc1.weight": [256, 256],
        "synthesis.b256.tores.weight": [32, 256],
        "synthesis.decoder_8.0.weight": [64, 32],
        "synthesis.decoder_8.1.weight": [128, 64],
        "synthesis.decoder_8.2.weight": [64, 128],
        "synthesis.decoder_8.3.weight": [32, 64],
        "synthesis.decoder_last.3.bias": [32],
        "synthesis.decoder_img.weight": [3, 32],
        "synthesis.block0.fc0.weight": [128, 32],
        "synthesis.block0.fc1.weight": [128, 128],
        "synthesis.block0.tores.weight": [3, 128],
        "synthesis.block1.fc0.weight": [64, 128],
        "synthesis.block1.tores.weight": [3, 64],
        "mapping.fc7.weight": [512, 512],
        "mapping.w_avg": [512],
    }
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    assert "synthesis.decoder_4.0.weight" not in shapes and "synthesis.b4.fc0.weight" not in shapes
    assert torch.equal(G.synthesis.b4.input.coords[0, :, 1, 0], torch.linspace(0, 1, 256))


def test_blocks_share_ws_as_published():
    G = tiny_G()
    ws = torch.arange(G.num_ws, dtype=torch.float32).reshape(1, -1, 1).expand(1, -1, 16)
    starts = [int(w[0, 0, 0]) for w in G.synthesis.block_ws(ws)]
    assert starts == [0, 1, 3]  # b4: input, fc1, tores = ws 0-2; b8 starts at 1; b16 at 3 (ws 3-5).
    assert G.num_ws == 7  # The last w drives the two final image blocks.


def test_modulated_fc_matches_a_loop():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    weight = torch.randn(6, 3, dtype=torch.float64)
    styles = torch.randn(2, 3, dtype=torch.float64)
    out = modulated_fc(x, weight, styles)
    for n in range(2):
        w = weight * styles[n]  # [O, I]
        w = w / w.norm(dim=1, keepdim=True)
        expected = np.einsum("oi,ihw->ohw", w.numpy(), x[n].numpy())
        assert np.allclose(out[n].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("scale, size", [(0.5, 8), (1, 16), (1.5, 24), (2, 32)])
def test_output_size_follows_scale(scale, size):
    G = tiny_G().eval()
    with torch.no_grad():
        img = G(torch.randn(2, 16), None, scale=scale)
    assert img.shape == (2, 3, size, size) and torch.isfinite(img).all()


def test_line_coordinates_nest_across_scales():
    assert torch.equal(line_coordinates(16, 16, torch.device("cpu")), torch.linspace(0, 1, 16))
    fine = line_coordinates(16, 32, torch.device("cpu"))
    assert torch.allclose(fine.reshape(16, 2).mean(dim=1), torch.linspace(0, 1, 16), atol=1e-6)


def test_rendering_at_scale_2_then_box_downsampling_is_close_to_scale_1():
    torch.manual_seed(64)
    G = tiny_G(64, fc_clamp=None).eval()
    with torch.no_grad():
        ws = G.mapping(torch.randn(4, 16), None)
        img1 = G.synthesis(ws)
        img2 = G.synthesis(ws, scale=2)
    down = torch.nn.functional.avg_pool2d(img2, 2)
    rel_error = float((down - img1).square().mean().sqrt() / img1.std())
    one_pixel_shift = float((img1[..., 1:] - img1[..., :-1]).square().mean().sqrt() / img1.std())
    # Measured 0.076 for this untrained network (its random weights make high frequencies, where averaging two
    # samples and sampling their midpoint differ); a one-pixel misalignment gives several times more.
    assert rel_error < 0.1, rel_error
    assert one_pixel_shift > 3 * rel_error


def test_first_block_skip_output_and_first_decoder_are_unused_as_published():
    G = tiny_G()
    G(torch.randn(2, 16), None).square().sum().backward()
    assert G.synthesis.b4.tores.weight.grad is None and G.synthesis.decoder_8[0].weight.grad is None
    assert G.synthesis.b8.tores.weight.grad is not None and G.synthesis.decoder_16[0].weight.grad is not None


def test_final_blocks_are_float16_and_clamped_at_256_as_published():
    synthesis = tiny_G().synthesis
    assert synthesis.num_fp16_res == 0 and not any(getattr(synthesis, f"b{r}").use_fp16 for r in (4, 8, 16))
    assert synthesis.block0.use_fp16 and synthesis.block1.use_fp16
    for block in [synthesis.b4, synthesis.b8, synthesis.b16, synthesis.block0, synthesis.block1]:
        layers = [block.fc1, block.tores] + ([block.fc0] if hasattr(block, "fc0") else [])
        assert [layer.fc_clamp for layer in layers] == [256] * len(layers)
    # fc_clamp sets the line blocks only; the final blocks keep 256 and fp16_final_blocks only their precision.
    synthesis = tiny_G(fc_clamp=None, fp16_final_blocks=False).synthesis
    assert synthesis.b8.fc0.fc_clamp is None and synthesis.b16.tores.fc_clamp is None
    assert synthesis.block0.fc0.fc_clamp == 256 and synthesis.block1.tores.fc_clamp == 256
    assert not synthesis.block0.use_fp16 and not synthesis.block1.use_fp16
