"""Loading published network pickles safely: the persistence and TensorFlow formats, and refusing code."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import published_formats as pf
import pytest
import torch
from helpers import ROOT, run_script, tiny

from training import augment, checkpoint, legacy, networks_creps, networks_stylegan2, networks_stylegan3
from training.convert_published import ConversionError
from training.safe_pickle import SnapshotError, UnsafePickleError


@pytest.fixture
def marker(tmp_path) -> Path:
    """A file that the embedded sources of the written pickles would create if anything executed them."""
    path = tmp_path / "executed.txt"
    yield path
    assert not path.exists(), "code embedded in a pickle was executed"


def render(G: torch.nn.Module, seed: int = 1, psi: float = 0.7) -> torch.Tensor:
    """Images of a fixed batch of latents with constant noise, in float32."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(3, G.z_dim)).float()
    c = torch.zeros([3, G.c_dim])
    with torch.no_grad():
        return G(z, c, truncation_psi=psi, noise_mode="const", force_fp32=True)


def assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Every parameter and buffer of `a` equals `b`'s, bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


SG2_KWARGS = dict(pf.TINY_STYLEGAN2, fused_modconv_default="inference_only")
D_KWARGS = dict(
    c_dim=0,
    img_resolution=16,
    img_channels=3,
    channel_base=64,
    channel_max=8,
    block_kwargs=dict(freeze_layers=0),
    mapping_kwargs={},
    epilogue_kwargs=dict(mbstd_group_size=4),
)


def stylegan2_pickle(tmp_path: Path, marker: Path, **overrides) -> tuple[str, dict]:
    """A published (StyleGAN3-repository) StyleGAN2 snapshot of random networks, and those networks."""
    G, D = pf.tiny_stylegan2()
    G_ema = pf.tiny_stylegan2(seed=1)[0]
    pipe = augment.AugmentPipe(**augment.AUGMENT_PRESETS["bgc"])
    pipe.p.fill_(0.25)
    src = pf.source(pf.STYLEGAN2_SOURCE, marker)
    data = pf.published_snapshot(
        G, D, G_ema, pipe, src, src, pf.source(pf.AUGMENT_SOURCE, marker), {**SG2_KWARGS, **overrides}, D_KWARGS
    )
    return write(tmp_path / "published.pkl", data), dict(G=G, D=D, G_ema=G_ema, augment_pipe=pipe)


def test_published_stylegan2_snapshot_loads_every_tensor_and_renders_the_same(tmp_path, marker):
    path, ours = stylegan2_pickle(tmp_path, marker)
    snapshot = checkpoint.load_snapshot(path)
    assert snapshot["source"] == "published PyTorch (stylegan2)"
    for key in ("G", "D", "G_ema", "augment_pipe"):
        assert type(snapshot[key]) is type(ours[key])
        assert_same_tensors(snapshot[key], ours[key])
        assert not snapshot[key].training and not any(p.requires_grad for p in snapshot[key].parameters())
    assert torch.equal(render(snapshot["G_ema"]), render(ours["G_ema"]))
    img = render(ours["G"])
    assert torch.equal(snapshot["D"](img, torch.zeros([3, 0])), ours["D"](img, torch.zeros([3, 0])))
    # The published dataset options become ours: class_name goes, the rest stays.
    assert snapshot["training_set_kwargs"] == dict(
        path="/data/ffhq.zip", resolution=16, max_size=70000, use_labels=False, xflip=True, random_seed=0
    )


@pytest.mark.parametrize("kind", ["stylegan3-t", "stylegan3-r", "creps"])
def test_published_stylegan3_and_creps_generators_render_the_same(tmp_path, marker, kind):
    G, src, kwargs = {
        "stylegan3-t": (pf.stylegan3("t"), pf.STYLEGAN3_SOURCE, pf.TINY_STYLEGAN3),
        "stylegan3-r": (pf.stylegan3("r"), pf.STYLEGAN3_SOURCE, pf.TINY_STYLEGAN3_R),
        "creps": (pf.creps(), pf.CREPS_SOURCE, pf.TINY_CREPS),
    }[kind]
    _, D = pf.tiny_stylegan2()
    data = pf.published_snapshot(
        G, D, G, None, pf.source(src, marker), pf.source(pf.STYLEGAN2_SOURCE, marker), "", kwargs, D_KWARGS
    )
    snapshot = checkpoint.load_snapshot(write(tmp_path / "net.pkl", data))
    expected_class = networks_creps.Generator if kind == "creps" else networks_stylegan3.Generator
    assert type(snapshot["G_ema"]) is expected_class and snapshot["augment_pipe"] is None
    assert_same_tensors(snapshot["G_ema"], G)
    assert torch.equal(render(snapshot["G_ema"]), render(G))
    if kind == "creps":  # The published final blocks are float16 with clamp 256 whatever the options say.
        assert snapshot["G_ema"].synthesis.block0.use_fp16 and snapshot["G_ema"].synthesis.block0.fc0.fc_clamp == 256


def test_published_defaults_come_from_the_embedded_source(tmp_path, marker):
    """conv_clamp and num_fp16_res were not stored: the StyleGAN3 repository defaults to 256 and 4, StyleGAN2-ADA-
    PyTorch (which also nests synthesis_kwargs) to None and 0. The loader reads them from each file's source."""
    G, D = pf.tiny_stylegan2()
    kwargs = {key: value for key, value in SG2_KWARGS.items() if key not in ("channel_base", "channel_max")}
    kwargs["synthesis_kwargs"] = dict(channel_base=64, channel_max=8)
    for src, clamp, fp16 in [(pf.STYLEGAN2_SOURCE, 256, True), (pf.STYLEGAN2_ADA_SOURCE, None, False)]:
        theirs = networks_stylegan2.Generator(**pf.TINY_STYLEGAN2, conv_clamp=clamp, num_fp16_res=4 if fp16 else 0)
        theirs.load_state_dict(G.state_dict())
        text = pf.source(src, marker)
        D_kwargs = dict(D_KWARGS, num_fp16_res=4, conv_clamp=256)  # What our D was built with.
        data = pf.published_snapshot(theirs, D, theirs, None, text, text, "", kwargs, D_kwargs)
        loaded = legacy.load_network_pkl(write(tmp_path / "net.pkl", data))
        G_ema = loaded.snapshot["G_ema"]
        assert G_ema.synthesis.b16.conv1.conv_clamp == clamp and G_ema.synthesis.b16.use_fp16 == fp16
        assert f"conv_clamp={clamp!r}, the published SynthesisBlock's default" in "\n".join(loaded.notes)
        assert "ignored fused_modconv_default='inference_only'" in "\n".join(loaded.notes)


def test_positional_constructor_arguments_are_named_from_the_source(tmp_path, marker):
    G, D = pf.tiny_stylegan2()
    text = pf.source(pf.STYLEGAN2_SOURCE, marker)
    g = pf.persistent(G, text, "Generator", dict(channel_base=64, channel_max=8, mapping_kwargs=dict(num_layers=2)))
    g.meta["state"]["_init_args"] = (8, 0, 8, 16, 3)  # z_dim, c_dim, w_dim, img_resolution, img_channels
    data = pf.dumps(dict(G=g, D=pf.persistent(D, text, "Discriminator", D_KWARGS), G_ema=g))
    snapshot = checkpoint.load_snapshot(write(tmp_path / "net.pkl", data))
    assert torch.equal(render(snapshot["G_ema"]), render(G))


def test_a_tensor_or_setting_that_does_not_match_is_refused(tmp_path, marker):
    G, D = pf.tiny_stylegan2()
    text = pf.source(pf.STYLEGAN2_SOURCE, marker)
    # A missing tensor.
    g = pf.persistent(G, text, "Generator", SG2_KWARGS)
    del (
        g.meta["state"]["_modules"]["synthesis"]
        .meta["state"]["_modules"]["b8"]
        .meta["state"]["_modules"]["conv0"]
        .meta["state"]["_parameters"]["weight"]
    )
    with pytest.raises(
        ConversionError,
        match=r"G: its tensors do not match.*missing: synthesis\.b8\.conv0\."
        r"weight",
    ):
        checkpoint.load_snapshot(write(tmp_path / "a.pkl", pf.dumps(dict(G=g, D=None, G_ema=g))))
    # A layer setting that our rebuild would not reproduce.
    g = pf.persistent(G, text, "Generator", SG2_KWARGS)
    g.meta["state"]["_modules"]["synthesis"].meta["state"]["_modules"]["b8"].meta["state"]["_modules"]["conv0"].meta[
        "state"
    ]["conv_clamp"] = 128
    with pytest.raises(ConversionError, match=r"synthesis\.b8\.conv0\.conv_clamp is 128 in the published"):
        checkpoint.load_snapshot(write(tmp_path / "b.pkl", pf.dumps(dict(G=g, D=None, G_ema=g))))
    # A constructor argument we do not implement, and an architecture we do not implement.
    for kwargs, message in [
        (dict(SG2_KWARGS, fancy=1), "built with fancy=1"),
        (dict(SG2_KWARGS, architecture="resnet"), "architecture='resnet'; only 'skip'"),
    ]:
        g = pf.persistent(G, text, "Generator", kwargs)
        with pytest.raises(ConversionError, match=message):
            checkpoint.load_snapshot(write(tmp_path / "c.pkl", pf.dumps(dict(G=g, D=None, G_ema=g))))
    # A published class we have no counterpart for.
    g = pf.persistent(G, text, "SuperResolutionGenerator", SG2_KWARGS)
    with pytest.raises(ConversionError, match="SuperResolutionGenerator"):
        checkpoint.load_snapshot(write(tmp_path / "d.pkl", pf.dumps(dict(G=g, D=None, G_ema=g))))


class RunsCode:
    """Pickles as a call of os.system: what a malicious snapshot does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    G, D = pf.tiny_stylegan2()
    payloads = {
        "in a snapshot entry": dict(
            G=G, D=D, G_ema=G, augment_pipe=None, training_set_kwargs=RunsCode(f"touch {marker}")
        ),
        "as the whole file": RunsCode(f"touch {marker}"),
        "as an attribute of our network": dict(G=G, D=D, G_ema=G, augment_pipe=None, training_set_kwargs={}),
    }
    G.evil = RunsCode(f"touch {marker}")
    for name, payload in payloads.items():
        path = write(tmp_path / "evil.pkl", pickle.dumps(payload))
        with pytest.raises(UnsafePickleError, match=rf"evil\.pkl asks for the global {os.system.__module__}\.system"):
            checkpoint.load_snapshot(path)
        assert not marker.exists(), name
    # An unknown class, even a harmless one, is refused by name.
    import collections

    path = write(tmp_path / "counter.pkl", pickle.dumps(dict(G_ema=collections.Counter("ab"))))
    with pytest.raises(UnsafePickleError, match="asks for the global collections.Counter"):
        checkpoint.load_snapshot(path)


@pytest.mark.slow
def test_gen_images_refuses_a_code_running_pickle_with_a_message(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path / "evil.pkl", pickle.dumps(RunsCode(f"touch {marker}")))
    result = subprocess.run(
        [sys.executable, str(ROOT / "gen_images.py"), f"--network={path}", "--seeds=0", f"--outdir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1 and not marker.exists()
    assert f"--network={path}: {path} asks for the global" in result.stderr
    assert "Traceback" not in result.stderr


def test_our_snapshots_load_restricted_and_with_plain_pickle(tmp_path):
    G, D = pf.tiny_stylegan2()
    path = tmp_path / "ours.pkl"
    checkpoint.save_snapshot(str(path), G, D, G, None, dict(path="x.zip"))
    snapshot = checkpoint.load_snapshot(str(path))
    assert "source" not in snapshot and snapshot["training_set_kwargs"] == dict(path="x.zip")
    assert torch.equal(render(snapshot["G_ema"]), render(G))
    with open(path, "rb") as f:
        assert torch.equal(render(pickle.load(f)["G_ema"]), render(G))


def test_not_a_snapshot_gives_a_clear_error(tmp_path):
    for name, content, message in [
        ("truncated.pkl", pickle.dumps(dict(G_ema=1))[:-5], "not a readable network snapshot pickle"),
        ("list.pkl", pickle.dumps([1, 2]), "not a network snapshot: expected a dict with G, D and G_ema"),
        ("number.pkl", pickle.dumps(dict(G_ema=3)), "G_ema is a int, not a network"),
    ]:
        with pytest.raises(SnapshotError, match=message):
            checkpoint.load_snapshot(write(tmp_path / name, content))


G_STATIC = dict(pf.TINY_TF_G_STATIC, truncation_psi=0.5)  # A run-time setting, ignored.
D_STATIC = pf.TINY_TF_D_STATIC


def test_tensorflow_pickle_converts_into_our_stylegan2(tmp_path, marker):
    G, D = pf.tiny_stylegan2()
    Gs = pf.tiny_stylegan2(seed=1)[0]
    data = pf.tensorflow_snapshot(G, D, Gs, G_STATIC, D_STATIC, marker)
    loaded = legacy.load_network_pkl(write(tmp_path / "tf.pkl", data))
    assert loaded.source_format == "TensorFlow StyleGAN2" and loaded.notes == []
    snapshot = loaded.snapshot
    for key, ours in [("G", G), ("D", D), ("G_ema", Gs)]:
        assert_same_tensors(snapshot[key], ours)
    assert snapshot["G_ema"].mapping.w_avg_beta == 0.995  # TensorFlow's default, not ours.
    assert snapshot["D"].b4.mbstd.group_size == 4
    assert torch.equal(render(snapshot["G_ema"]), render(Gs))


def test_tensorflow_pickle_with_labels_and_explicit_settings(tmp_path, marker):
    G, D = pf.tiny_stylegan2(c_dim=3)
    static = dict(G_STATIC, label_size=3, conv_clamp=256, num_fp16_res=2, w_avg_beta=None)
    data = pf.tensorflow_snapshot(G, D, G, static, dict(D_STATIC, label_size=3, mapping_layers=1), marker)
    snapshot = checkpoint.load_snapshot(write(tmp_path / "tf.pkl", data))
    G_ema = snapshot["G_ema"]
    assert G_ema.c_dim == 3 and G_ema.mapping.w_avg_beta == 1 and G_ema.synthesis.b16.conv1.conv_clamp == 256
    assert G_ema.synthesis.b16.use_fp16 and G_ema.synthesis.b8.use_fp16 and not G_ema.synthesis.b4.use_fp16
    assert_same_tensors(snapshot["D"], D)


def test_tensorflow_pickles_we_cannot_reproduce_are_refused(tmp_path, marker):
    G, D = pf.tiny_stylegan2()
    cases = [
        (dict(G_STATIC, architecture="resnet"), D_STATIC, "architecture='resnet'; only 'skip'"),
        (dict(G_STATIC, fancy_option=1), D_STATIC, "unknown TensorFlow network argument.*fancy_option"),
        (G_STATIC, dict(D_STATIC, architecture="skip"), "architecture='skip'; only 'resnet'"),
    ]
    for G_static, D_static, message in cases:
        data = pf.tensorflow_snapshot(G, D, G, G_static, D_static, marker)
        with pytest.raises(ConversionError, match=message):
            checkpoint.load_snapshot(write(tmp_path / "tf.pkl", data))
    # A variable missing from the file.
    mapping, synthesis, own = pf.tf_generator_variables(G)
    del synthesis["8x8/Conv0_up/weight"]
    components = dict(
        mapping=pf.tf_network("m", "G_mapping", G_STATIC, mapping, marker),
        synthesis=pf.tf_network("s", "G_synthesis", G_STATIC, synthesis, marker),
    )
    broken = pf.tf_network("G", "G_main", G_STATIC, own, marker, components)
    D_net = pf.tf_network("D", "D_main", D_STATIC, pf.tf_discriminator_variables(D), marker)
    data = pf.dumps((broken, D_net, broken), protocol=3)
    with pytest.raises(ConversionError, match="no variable synthesis/8x8/Conv0_up/weight"):
        checkpoint.load_snapshot(write(tmp_path / "tf.pkl", data))


@pytest.mark.slow
def test_converter_writes_our_format_atomically_and_reports(tmp_path, marker):
    path, ours = stylegan2_pickle(tmp_path, marker)
    dest = tmp_path / "out" / "converted.pkl"
    command = [sys.executable, "-m", "training.legacy", f"--source={path}", f"--dest={dest}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "Format: published PyTorch (stylegan2)" in result.stdout
    assert "G_ema:        StyleGAN2 generator, 16x16, 3 channels, unconditional, z 8, w 8" in result.stdout
    assert "D:            StyleGAN2 discriminator, 16x16" in result.stdout
    assert "augment_pipe: ADA augment pipe, p=0.250" in result.stdout
    assert sorted(os.listdir(dest.parent)) == ["converted.pkl"]  # No temporary file left.
    # The result is our format: plain pickle.load in a fresh interpreter, outside the repository.
    check = (
        "import pickle, sys; s = pickle.load(open(sys.argv[1], 'rb')); "
        "print(type(s['G_ema']).__module__, sorted(k for k in s))"
    )
    loaded = subprocess.run([sys.executable, "-c", check, str(dest)], capture_output=True, text=True, cwd=tmp_path)
    assert loaded.stdout.split() == [
        "training.networks_stylegan2",
        "['D',",
        "'G',",
        "'G_ema',",
        "'augment_pipe',",
        "'training_set_kwargs']",
    ]
    assert torch.equal(render(checkpoint.load_snapshot(str(dest))["G_ema"]), render(ours["G_ema"]))
    # An existing destination is not replaced without --force.
    before = dest.read_bytes()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and "exists; pass --force" in result.stderr and dest.read_bytes() == before
    assert subprocess.run(command + ["--force"], capture_output=True, cwd=ROOT).returncode == 0
    # A destination that cannot be written is a message naming it, not a traceback.
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    command[-1] = f"--dest={blocked / 'converted.pkl'}"
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and f"--dest={blocked / 'converted.pkl'}: cannot write it" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_gen_images_renders_a_published_pickle_like_its_conversion(tmp_path, marker):
    path, _ = stylegan2_pickle(tmp_path, marker)
    converted = tmp_path / "converted.pkl"
    subprocess.run(
        [sys.executable, "-m", "training.legacy", f"--source={path}", f"--dest={converted}"],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    for network, outdir in [(path, tmp_path / "a"), (converted, tmp_path / "b")]:
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "gen_images.py"),
                f"--network={network}",
                "--seeds=3",
                f"--outdir={outdir}",
                "--device=cpu",
            ],
            check=True,
            capture_output=True,
            cwd=tmp_path,
        )
    assert (tmp_path / "a" / "seed0003.png").read_bytes() == (tmp_path / "b" / "seed0003.png").read_bytes()


@pytest.mark.slow
def test_train_resumes_from_a_published_pickle_across_resolutions(tmp_path, marker, demo_shapes):
    """--resume with a published 16px StyleGAN2 pickle onto 32px data: a new run that reports what it copied."""
    path, ours = stylegan2_pickle(tmp_path, marker)
    args = [f"--outdir={tmp_path / 'runs'}", f"--data={demo_shapes(32, 16)}", f"--resume={path}", *tiny(map_depth=2)]
    result = run_script(
        "train.py", *args, "--gpus=1", "--batch=4", "--kimg=0.004", "--tick=1", "--workers=0", cwd=tmp_path
    )
    assert f"Starting a new run from the weights of {path} (published PyTorch (stylegan2); kimg starts at 0)" in (
        result.stdout
    )
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines() if ": copied " in line}
    # Our run has z and w of 512, so the mapping network and the styles (affine layers) do not fit the published
    # 8-dimensional ones; the convolutions of the 4-16px blocks do, and the new 32px block starts fresh.
    assert "none of synthesis.b32" in lines["G"] and "of synthesis.b16" in lines["G"], lines["G"]
    assert lines["D"].endswith("all of b16, b8, b4; none of b32"), lines["D"]
    [run_dir] = (tmp_path / "runs").iterdir()
    started = checkpoint.load_snapshot(str(run_dir / "network-snapshot-000000.pkl"))
    copied = started["G_ema"].synthesis.b8.conv1.weight
    assert (copied - ours["G_ema"].synthesis.b8.conv1.weight).abs().max() < 0.05  # One step from the source.
