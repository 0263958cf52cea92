"""Every --cfg preset trains two ticks through the CLI and renders with gen_images.py and gen_video.py."""

import json
import os
import pickle
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner
from helpers import run_script, tiny

import gen_images

TINY = tiny(cfg=None, workers=0)  # Each test names its preset.

# Every test trains a preset in a subprocess and renders with the scripts.
pytestmark = pytest.mark.slow


def train_two_ticks(cfg: str, data: Path, outdir: Path) -> Path:
    """Train `cfg` for two ticks (the first step, then 16 more images) and return the final snapshot."""
    run_script(
        "train.py",
        f"--outdir={outdir}",
        f"--cfg={cfg}",
        f"--data={data}",
        *TINY,
        "--gpus=1",
        "--batch=4",
        "--kimg=0.016",
        "--tick=1",
        cwd=outdir.parent,
    )
    [run_dir] = [p for p in outdir.iterdir() if p.is_dir()]
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [s["Progress/tick"]["mean"] for s in stats] == [0, 1]
    return run_dir / "network-snapshot-000000.pkl"


def read_png(path: Path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path))


@pytest.mark.parametrize("cfg", ["stylegan3-t", "stylegan3-r"])
def test_stylegan3_presets_train_and_render(tmp_path, data, cfg):
    snapshot = train_two_ticks(cfg, data, tmp_path / "runs")
    options = json.loads(next((tmp_path / "runs").glob("*/training_options.json")).read_text())
    assert options["glr"] == 0.0025 and options["map_depth"] == 1 and options["G_reg_interval"] == 0
    assert options["G_kwargs"]["magnitude_ema_beta"] == pytest.approx(0.5 ** (4 / 20000))
    if cfg == "stylegan3-r":
        assert options["G_kwargs"]["conv_kernel"] == 1 and options["G_kwargs"]["use_radial_filters"]
        assert options["G_kwargs"]["channel_base"] == 128 and options["G_kwargs"]["channel_max"] == 16
        assert options["blur_init_sigma"] == 10 and options["blur_fade_kimg"] == 4 * 200 / 32

    with open(snapshot, "rb") as f:
        G = pickle.load(f)["G_ema"]
    layer = getattr(G.synthesis, G.synthesis.layer_names[0])
    assert layer.magnitude_ema_beta == pytest.approx(0.5 ** (4 / 20000))
    if cfg == "stylegan3-r":  # 1x1 convolutions, radial filters, doubled channels.
        assert layer.conv_kernel == 1 and layer.down_filter.ndim == 2 and layer.out_channels == 16
    else:
        assert layer.conv_kernel == 3 and layer.down_filter.ndim == 1 and layer.out_channels == 8

    out = tmp_path / "out"
    run_script("gen_images.py", f"--network={snapshot}", "--seeds=0", f"--outdir={out / 'plain'}", cwd=tmp_path)
    run_script(
        "gen_images.py",
        f"--network={snapshot}",
        "--seeds=0",
        "--translate=0.25,0",
        "--rotate=90",
        f"--outdir={out / 'moved'}",
        cwd=tmp_path,
    )
    plain, moved = read_png(out / "plain" / "seed0000.png"), read_png(out / "moved" / "seed0000.png")
    assert plain.shape == moved.shape == (8, 8, 3) and not np.array_equal(plain, moved)

    result = CliRunner().invoke(
        gen_images.main, [f"--network={snapshot}", "--seeds=0", "--scale=2", f"--outdir={out / 'x'}"]
    )
    assert result.exit_code != 0 and "--scale needs a network that renders at any resolution" in result.output


def test_translate_is_refused_for_stylegan2(tmp_path, data):
    snapshot = train_two_ticks("stylegan2", data, tmp_path / "runs")
    result = CliRunner().invoke(
        gen_images.main, [f"--network={snapshot}", "--seeds=0", "--rotate=5", f"--outdir={tmp_path / 'o'}"]
    )
    assert result.exit_code != 0 and "--translate and --rotate need a StyleGAN3 network" in result.output

    video = tmp_path / "video" / "lerp.mp4"
    run_script(
        "gen_video.py",
        f"--network={snapshot}",
        "--seeds=0-5",
        "--grid=3x1",
        "--w-frames=4",
        f"--output={video}",
        cwd=tmp_path,
    )
    frames = iio.imread(video)
    assert frames.shape[0] == 2 * 4  # 6 seeds over 3 cells: 2 keyframes, 4 frames each.
    assert frames.shape[3] == 3 and frames.std() > 0
    assert os.listdir(video.parent) == ["lerp.mp4"]  # No temporary file left behind.


def test_creps_preset_trains_and_renders_at_any_scale(tmp_path, data):
    snapshot = train_two_ticks("creps", data, tmp_path / "runs")
    options = json.loads(next((tmp_path / "runs").glob("*/training_options.json")).read_text())
    assert options["glr"] == 0.002 and options["pl_weight"] == 2 and options["G_reg_interval"] == 4
    assert options["G_kwargs"]["channel_base"] == 128 and options["G_kwargs"]["channel_max"] == 16

    out = tmp_path / "out"
    for scale, size in [("0.5", 4), ("1", 8), ("1.5", 12), ("2", 16)]:
        run_script(
            "gen_images.py",
            f"--network={snapshot}",
            "--seeds=3",
            f"--scale={scale}",
            f"--outdir={out / scale}",
            cwd=tmp_path,
        )
        assert read_png(out / scale / "seed0003.png").shape == (size, size, 3)
    runner = CliRunner()
    result = runner.invoke(gen_images.main, [f"--network={snapshot}", "--seeds=0", "--scale=1.3", f"--outdir={out}"])
    assert result.exit_code != 0 and "gives 10.4 pixels" in result.output
    result = runner.invoke(
        gen_images.main, [f"--network={snapshot}", "--seeds=0", "--translate=0.1,0", f"--outdir={out}"]
    )
    assert result.exit_code != 0 and "need a StyleGAN3 network" in result.output
