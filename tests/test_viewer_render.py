"""The visualizer's rendering (viewer/render.py) on tiny networks of every family: the same pixels as gen_images.py,
the latent blend and style mixing computed independently, the layer view and its spectrum, and a clear error for
every control the network cannot honour."""

from __future__ import annotations

import pickle

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from helpers import tiny_stylegan2, tiny_stylegan3

import gen_images
from training import networks_creps
from viewer.render import NUM_SEEDS, SEED_ROW, Renderer, View, ViewError, spectrum_db_image

CPU = torch.device("cpu")


def with_w_avg(G: torch.nn.Module) -> torch.nn.Module:
    """G with a tracked average w away from zero, so that truncation changes the image, in eval mode."""
    torch.manual_seed(0)
    G.mapping.w_avg.copy_(torch.randn_like(G.mapping.w_avg))
    return G.eval()


def tiny_creps() -> torch.nn.Module:
    torch.manual_seed(0)
    return networks_creps.Generator(
        z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
        channel_base=128, channel_max=16, biline_channels=8,
    )  # fmt: skip


NETWORKS = {
    "stylegan2": lambda: with_w_avg(tiny_stylegan2(16)),
    "stylegan2-conditional": lambda: with_w_avg(tiny_stylegan2(16, c_dim=3)),
    "stylegan3-t": lambda: with_w_avg(tiny_stylegan3(16)),
    "creps": lambda: with_w_avg(tiny_creps()),
}


def gen_images_png(G: torch.nn.Module, tmp_path, seed: int, *options: str) -> np.ndarray:
    """The pixels gen_images.py writes for `seed` with `options`, from a snapshot of G."""
    snapshot = tmp_path / "network-snapshot-000000.pkl"
    with open(snapshot, "wb") as f:
        pickle.dump({"G": G, "D": None, "G_ema": G, "augment_pipe": None, "training_set_kwargs": {}}, f)
    args = [f"--network={snapshot}", f"--seeds={seed}", f"--outdir={tmp_path / 'out'}", "--device=cpu", *options]
    result = CliRunner().invoke(gen_images.main, args)
    assert result.exit_code == 0, result.output
    with PIL.Image.open(tmp_path / "out" / f"seed{seed:04d}.png") as image:
        return np.array(image)


@pytest.mark.parametrize(
    "kind, seed, view, options",
    [
        ("stylegan2", 5, dict(psi=0.7), ["--trunc=0.7"]),
        ("stylegan2", 5, dict(noise_mode="none"), ["--noise-mode=none"]),
        ("stylegan2-conditional", 3, dict(class_idx=2), ["--class=2"]),
        ("stylegan3-t", 7, dict(translate=(0.25, -0.1), rotate_deg=10), ["--translate=0.25,-0.1", "--rotate=10"]),
        ("stylegan3-t", 7, dict(), []),
        ("creps", 2, dict(scale=1.5), ["--scale=1.5"]),
    ],
)
def test_a_whole_number_position_gives_the_pixels_of_gen_images(tmp_path, kind, seed, view, options):
    G = NETWORKS[kind]()
    expected = gen_images_png(G, tmp_path, seed, *options)
    x, y = seed % SEED_ROW, seed // SEED_ROW
    image = Renderer(G, CPU).render(View(x=x, y=y, **view)).image
    assert image.shape == expected.shape and np.array_equal(image, expected)


def test_a_position_between_seeds_blends_their_w_bilinearly():
    G = NETWORKS["stylegan2"]()
    renderer = Renderer(G, CPU)

    def seed_ws(seed: int) -> torch.Tensor:  # gen_images.py's z for the seed, mapped with psi 0.5.
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim))
        return G.mapping(z, torch.zeros([1, 0]), truncation_psi=0.5)

    view = View(x=3.25, y=1.5, psi=0.5)
    assert view.seeds() == [(103, 0.375), (104, 0.125), (203, 0.375), (204, 0.125)]
    expected = 0.375 * seed_ws(103) + 0.125 * seed_ws(104) + 0.375 * seed_ws(203) + 0.125 * seed_ws(204)
    torch.testing.assert_close(renderer.ws(view), expected, rtol=1e-6, atol=1e-6)
    # Positions off the seed range wrap around; a negative one too.
    assert View(x=-1, y=0).seeds() == [(NUM_SEEDS - 1, 1.0)]


def test_psi_zero_gives_the_average_w_image_for_every_seed():
    G = NETWORKS["stylegan3-t"]()
    renderer = Renderer(G, CPU)
    first, second = (renderer.render(View(x=seed, psi=0)).image for seed in (0, 41))
    assert np.array_equal(first, second)
    assert not np.array_equal(first, renderer.render(View(x=0)).image)
    ws = renderer.ws(View(x=41, psi=0))
    torch.testing.assert_close(ws, G.mapping.w_avg.expand_as(ws), rtol=0, atol=1e-6)


def test_style_mixing_takes_the_chosen_ws_from_the_mix_seed():
    G = NETWORKS["stylegan2"]()
    renderer = Renderer(G, CPU)
    base, other = renderer.ws(View(x=1)), renderer.ws(View(x=9))
    mixed = renderer.ws(View(x=1, mix_seed=9, mix_layers=(0, 2)))
    for i in range(G.num_ws):
        assert torch.equal(mixed[:, i], (other if i in (0, 2) else base)[:, i]), i
    assert not np.array_equal(
        renderer.render(View(x=1)).image, renderer.render(View(x=1, mix_seed=9, mix_layers=(0, 2))).image
    )


def test_conditional_networks_draw_a_class_from_each_seed_unless_one_is_chosen():
    G = NETWORKS["stylegan2-conditional"]()
    renderer = Renderer(G, CPU)
    rnd = np.random.RandomState(11)
    z = torch.from_numpy(rnd.randn(1, G.z_dim))
    drawn = rnd.randint(G.c_dim)  # The draw after z, as the published visualizer makes it.
    c = torch.nn.functional.one_hot(torch.tensor([drawn]), G.c_dim).float()
    assert torch.equal(renderer.ws(View(x=11)), G.mapping(z, c))
    assert torch.equal(renderer.ws(View(x=11, class_idx=drawn)), G.mapping(z, c))


def test_random_noise_follows_the_noise_seed_and_leaves_torch_alone():
    G = NETWORKS["stylegan2"]()
    for name, param in G.named_parameters():
        if name.endswith("noise_strength"):  # Zero at initialization: no noise would show.
            param.data.fill_(0.5)
    renderer = Renderer(G, CPU)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    one, again, other = (renderer.render(View(noise_mode="random", noise_seed=s)).image for s in (1, 1, 2))
    assert np.array_equal(one, again) and not np.array_equal(one, other)
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("kind", NETWORKS)
def test_every_synthesis_layer_is_listed_and_shown(kind):
    G = NETWORKS[kind]()
    renderer = Renderer(G, CPU)
    layers = renderer.render(View()).layers
    assert len(layers) >= 4 and len({layer.name for layer in layers}) == len(layers)
    assert all(len(layer.shape) == 3 and layer.dtype == "float32" for layer in layers)
    for layer in (layers[1], layers[-1]):
        channels = (0,) if layer.shape[0] < 3 else (0, 1, 2)
        shown = renderer.render(View(layer=layer.name, channels=channels, normalize=False))
        height, width = layer.shape[1:]
        assert shown.layer_image.shape == (height, width, len(channels))
        assert shown.spectrum_image.shape == (height, width, 1)
        assert shown.stats["max"] >= shown.stats["shown_max"] > 0


def test_the_layer_view_maps_values_as_images_are_mapped():
    G = NETWORKS["stylegan2"]()
    renderer = Renderer(G, CPU)
    captured = {}

    def keep(_module, _inputs, output) -> None:
        captured["x"] = output[0, 2].clone()

    G.synthesis.b8.conv1.register_forward_hook(keep)
    shown = renderer.render(View(layer="b8.conv1", channels=(2,), normalize=True, gain_db=-6))
    x = captured["x"]
    expected = ((x / x.abs().max() * 10 ** (-6 / 20)) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    assert np.array_equal(shown.layer_image[:, :, 0], expected.numpy())
    assert shown.stats["shown_max"] == pytest.approx(float(x.abs().max()))
    assert shown.stats["shown_mean"] == pytest.approx(float(x.mean()), abs=1e-6)


def test_the_spectrum_of_a_cosine_peaks_at_its_frequency():
    size, cycles = 32, 5
    grid = torch.arange(size, dtype=torch.float32)
    wave = torch.cos(2 * np.pi * cycles * grid / size)[None, None, :].expand(1, size, size) + 3  # Along x.
    image = spectrum_db_image(wave, beta=8, range_db=60)[:, :, 0]
    centre = size // 2
    peaks = set(zip(*np.nonzero(image == image.max()), strict=True))
    assert peaks == {(centre, centre - cycles), (centre, centre + cycles)}
    assert image[centre, centre] < 30  # The constant 3 was removed first; only the window's leakage is left.
    assert image[centre + 8, centre] == 0  # Nothing along y: below the 60 dB range.


@pytest.mark.parametrize(
    "kind, view, words",
    [
        ("stylegan2", dict(psi=2.5), "psi: 2.5 is outside -1..2"),
        ("stylegan2", dict(psi=float("nan")), "psi: nan is not a finite number"),
        ("stylegan2", dict(cutoff=99), "cutoff: 99 is outside 0.."),
        ("stylegan2", dict(class_idx=0), "class: 0, but the network is unconditional"),
        ("stylegan2-conditional", dict(class_idx=3), "class: 3 is outside the network's classes 0..2"),
        ("stylegan2", dict(noise_mode="loud"), "noise mode: 'loud' is not one of const, random, none"),
        ("stylegan2", dict(mix_layers=(0, 99)), "style mixing: ws indices [0, 99]"),
        ("stylegan2", dict(translate=(0.1, 0)), "translate and rotate need a StyleGAN3 network"),
        ("stylegan3-t", dict(scale=2), "scale: needs a network that renders at any resolution"),
        ("creps", dict(scale=0.03), "scale: 0.03 gives 0.48 pixels"),
        ("stylegan2", dict(layer="b99.conv"), "layer: 'b99.conv' is not a synthesis layer"),
        ("stylegan2", dict(layer="b8.conv1", channels=(0, 1)), "channels: show one channel or three"),
        ("stylegan2", dict(layer="b8.conv1", channels=(64,)), "channels: [64], but b8.conv1 has channels 0..7"),
        ("stylegan2", dict(mix_seed=NUM_SEEDS), "mix seed: 4294967296 is outside"),
    ],
)
def test_a_value_the_network_cannot_honour_is_named(kind, view, words):
    with pytest.raises(ViewError, match=None) as error:
        Renderer(NETWORKS[kind](), CPU).render(View(**view))
    assert words in str(error.value)
