"""Tests for the shared layers and the generator contract: `modulate` against a direct computation, the common
Generator and SynthesisNetwork bases and their capabilities, and snapshots that name the layers' old paths."""

import io
import pickle

import click
import published_formats as pf
import pytest
import torch

from metrics.registry import has_input_transform
from training import checkpoint, generator, inference, layers, networks_creps, networks_stylegan2, networks_stylegan3
from training.safe_pickle import SnapshotUnpickler, UnsafePickleError


def reference_modulation(weight, styles, demodulate, input_gain=None):
    """Per-sample weights written out directly: w[n, o, i, ...] = weight[o, i, ...] * styles[n, i], each output
    channel divided by its L2 norm (StyleGAN2 paper, Eq. 1 and 3), then the input gain."""
    w = torch.einsum("oi...,ni->noi...", weight, styles)
    if demodulate:
        norms = w.flatten(2).square().sum(dim=2).add(1e-8).sqrt()  # [N, O]
        w = torch.einsum("noi...,no->noi...", w, 1 / norms)
    if input_gain is not None:
        w = torch.einsum("noi...,ni->noi...", w, input_gain.expand(styles.shape))
    return w


@pytest.mark.parametrize("kernel", [(3, 3), ()], ids=["conv", "dense"])
@pytest.mark.parametrize("prescale", [None, "max", "rms"])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulate_matches_a_direct_computation(kernel, prescale, demodulate):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn([4, 5, *kernel], generator=gen, dtype=torch.float64)
    styles = torch.randn([3, 5], generator=gen, dtype=torch.float64) + 1
    gain = torch.rand([3, 5], generator=gen, dtype=torch.float64)
    for input_gain in (None, torch.tensor(0.7, dtype=torch.float64), gain):
        result = layers.modulate(weight, styles, demodulate=demodulate, prescale=prescale, input_gain=input_gain)
        expected = reference_modulation(weight, styles, demodulate, input_gain)
        # Demodulation divides any prescaling out, up to its 1e-8 epsilon, which then acts on other magnitudes;
        # without demodulation prescaling is off.
        rtol = 1e-6 if prescale and demodulate else 1e-12
        torch.testing.assert_close(result.w, expected, rtol=rtol, atol=1e-15)
    # The factors for the unfused path: prescaled weights and styles, and the coefficients of the direct norms.
    factors = layers.modulate(weight, styles, demodulate=demodulate, prescale=prescale, per_sample_weights=False)
    assert factors.w is None
    rebuilt = reference_modulation(factors.weight, factors.styles, demodulate=False)
    if demodulate:
        rebuilt = rebuilt * factors.dcoefs.reshape(3, 4, *[1] * (1 + len(kernel)))
    torch.testing.assert_close(rebuilt, reference_modulation(weight, styles, demodulate), rtol=rtol, atol=1e-15)
    # StyleGAN2's flat coefficients are the same numbers.
    flat = layers.modulate(weight, styles, demodulate=demodulate, prescale=prescale, flat_dcoefs=True)
    assert torch.equal(flat.w, layers.modulate(weight, styles, demodulate=demodulate, prescale=prescale).w)


def test_modulate_prescaling_keeps_float16_finite():
    weight = torch.full([2, 4, 1, 1], 300.0)
    styles = torch.full([1, 4], 300.0)
    # 300 * 300 overflows float16 (max 65504); prescaled, the demodulated weights are 1/2 each.
    plain = layers.modulate(weight.half(), styles.half()).w
    prescaled = layers.modulate(weight.half(), styles.half(), prescale="max").w
    assert not plain.isfinite().all()
    assert torch.equal(prescaled, torch.full([1, 2, 4, 1, 1], 0.5, dtype=torch.float16))


TINY = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2))
GENERATORS = {
    "stylegan2": (networks_stylegan2.Generator, dict(TINY, channel_base=64, channel_max=8)),
    "stylegan3": (networks_stylegan3.Generator, dict(TINY, channel_base=256, channel_max=16)),
    "creps": (networks_creps.Generator, dict(TINY, channel_base=128, channel_max=16, biline_channels=8)),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_generators_share_the_base_class_and_state_their_capabilities(name):
    cls, kwargs = GENERATORS[name]
    G = cls(**kwargs)
    assert isinstance(G, generator.Generator) and type(G).forward is generator.Generator.forward
    assert type(G.synthesis) is cls.synthesis_class and isinstance(G.synthesis, generator.SynthesisNetwork)
    assert isinstance(G.mapping, layers.MappingNetwork) and G.num_ws == G.synthesis.num_ws == G.mapping.num_ws
    assert G.synthesis.supports_any_scale == (name == "creps")
    assert has_input_transform(G) == (name == "stylegan3")
    if name == "creps":
        inference.check_scale(G, 2)
    else:
        with pytest.raises(click.ClickException, match="--scale needs a network that renders at any resolution"):
            inference.check_scale(G, 2)
    # toRGB and toResidual are one layer: StyleGAN2's as a 1x1 convolution, CREPS's as a dense layer.
    skip_layers = [m for m in G.modules() if isinstance(m, layers.SkipOutputLayer)]
    assert len(skip_layers) == {"stylegan2": 3, "stylegan3": 0, "creps": 5}[name]


def test_skip_output_layers_keep_their_published_settings():
    torgb = networks_stylegan2.ToRGBLayer(8, 3, w_dim=4, conv_clamp=256)
    tores = networks_creps.ToResidual(8, 3, w_dim=4, fc_clamp=128)
    assert list(torgb.weight.shape) == [3, 8, 1, 1] and list(tores.weight.shape) == [3, 8]
    assert torgb.weight_gain == tores.weight_gain == 1 / 8**0.5
    assert (torgb.conv_clamp, torgb.clamp, tores.fc_clamp, tores.clamp) == (256, 256, 128, 128)
    assert not hasattr(tores, "w_dim")  # The published toResidual has none; our attributes match theirs.


# Classes as the snapshots written before training.layers existed name them.
OLD_PATHS = (
    [
        ("training.networks_stylegan2", name)
        for name in (
            "FullyConnectedLayer",
            "Conv2dLayer",
            "MappingNetwork",
            "SynthesisLayer",
            "ToRGBLayer",
            "SynthesisBlock",
            "SynthesisNetwork",
            "Generator",
            "Discriminator",
        )
    ]
    + [("training.networks_stylegan3", name) for name in ("SynthesisInput", "SynthesisLayer", "SynthesisNetwork")]
    + [
        ("training.networks_stylegan3", "Generator"),
        ("training.networks_creps", "ToResidual"),
        ("training.networks_creps", "Generator"),
    ]
)


@pytest.mark.parametrize(("module", "name"), OLD_PATHS)
def test_old_class_paths_still_resolve(module, name):
    modules = dict(
        zip(
            ("training.networks_stylegan2", "training.networks_stylegan3", "training.networks_creps"),
            (networks_stylegan2, networks_stylegan3, networks_creps),
            strict=True,
        )
    )
    cls = SnapshotUnpickler(io.BytesIO(), "old.pkl").find_class(module, name)
    assert cls is getattr(modules[module], name)
    assert cls.__module__ in ("training.layers", module)


def test_moved_classes_resolve_only_as_our_classes():
    unpickler = SnapshotUnpickler(io.BytesIO(), "x.pkl")
    assert unpickler.find_class("training.layers", "FullyConnectedLayer") is layers.FullyConnectedLayer
    for module, name in [("training.networks_stylegan2", "torch"), ("training.layers", "Literal")]:
        with pytest.raises(UnsafePickleError, match=f"asks for the global {module}.{name}"):
            unpickler.find_class(module, name)


def test_a_snapshot_naming_the_old_paths_loads_and_renders_the_same(tmp_path, monkeypatch):
    G, D = pf.tiny_stylegan2()
    G3 = pf.stylegan3()
    # Pickle the shared layers under their old module, as snapshots written before the move do.
    for cls in (layers.FullyConnectedLayer, layers.Conv2dLayer, layers.MappingNetwork):
        monkeypatch.setattr(cls, "__module__", "training.networks_stylegan2")
    data = pickle.dumps(dict(G=G, D=D, G_ema=G3, augment_pipe=None, training_set_kwargs=None))
    monkeypatch.undo()
    assert b"training.networks_stylegan2" in data and b"training.layers" not in data
    path = tmp_path / "old.pkl"
    path.write_bytes(data)
    snapshot = checkpoint.load_snapshot(str(path))
    z = torch.randn([2, 8], generator=torch.Generator().manual_seed(1))
    c = torch.zeros([2, 0])
    assert torch.equal(snapshot["G"](z, c, noise_mode="const"), G(z, c, noise_mode="const"))
    assert torch.equal(snapshot["G_ema"](z, c), G3(z, c))
    assert type(snapshot["G"].mapping) is layers.MappingNetwork
