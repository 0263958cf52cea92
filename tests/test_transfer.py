"""Transfer learning: --freezed keeps D's first layers fixed; --resume across resolutions copies what fits."""

import pickle
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import TINY, run_script

import train
from training import checkpoint, networks_stylegan2
from training.config import TrainingConfig, construct_networks


@pytest.fixture(scope="module")
def datasets(demo_shapes) -> dict[int, Path]:
    """The demo dataset at 8x8 and 16x16 (conftest.py)."""
    return {res: demo_shapes(res) for res in (8, 16)}


def train_run(outdir: Path, data: Path, *extra: str) -> tuple[Path, subprocess.CompletedProcess]:
    result = run_script(
        "train.py",
        f"--outdir={outdir}",
        f"--data={data}",
        *TINY,
        "--gpus=1",
        "--batch=4",
        "--kimg=0.016",
        "--tick=1",
        "--workers=0",
        *extra,
        cwd=outdir.parent,
    )
    run_dir = max(p for p in outdir.iterdir() if p.is_dir())
    return run_dir, result


@pytest.mark.slow
def test_freezed_layers_keep_their_initial_values(tmp_path, datasets):
    run_dir, _ = train_run(tmp_path / "runs", datasets[16], "--freezed=2")
    final = checkpoint.load_state(checkpoint.list_states(str(run_dir))[-1])["D"]
    # Rebuild the initial D exactly as the run did (same seed, same construction order).
    c = TrainingConfig.load(str(run_dir))
    torch.manual_seed(c.seed)
    _, initial = construct_networks(c, 16, 3, 0)
    assert initial.layer_names()[:3] == ["b16.fromrgb", "b16.conv0", "b16.conv1"]  # --freezed=2: the first two.
    initial = initial.state_dict()
    for name in ["b16.fromrgb.weight", "b16.fromrgb.bias", "b16.conv0.weight", "b16.conv0.bias"]:
        assert torch.equal(final[name], initial[name]), f"{name} changed although frozen"
    for name in ["b16.conv1.weight", "b8.conv0.weight", "b4.out.weight"]:
        assert not torch.equal(final[name], initial[name]), f"{name} did not train"


@pytest.mark.slow
def test_resume_across_resolutions_copies_matching_tensors(tmp_path, datasets):
    small_dir, _ = train_run(tmp_path / "small", datasets[8])
    lone = tmp_path / "small-8px.pkl"  # Without its training state: weights only.
    lone.write_bytes((small_dir / "network-snapshot-000000.pkl").read_bytes())
    big_dir, result = train_run(tmp_path / "big", datasets[16], f"--resume={lone}")

    # The report lists, per layer block, what was copied: everything up to 8px, nothing of the new 16px blocks.
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines() if ": copied " in line}
    assert lines["G"].endswith("all of synthesis.b4, synthesis.b8, mapping; none of synthesis.b16"), lines["G"]
    # The 8px D's first block (b8 with fromrgb) has the 16px D's b8 shapes; only the new b16 block is not copied.
    assert lines["D"].endswith("all of b8, b4; none of b16"), lines["D"]
    with open(lone, "rb") as f:
        source = pickle.load(f)
    with open(big_dir / "network-snapshot-000000.pkl", "rb") as f:
        started = pickle.load(f)
    # After one step at lr 0.002 the copied weights are still near the source, the new ones are not.
    src_w = source["G_ema"].synthesis.b4.conv1.weight
    new_w = started["G_ema"].synthesis.b4.conv1.weight
    assert (src_w - new_w).abs().max() < 0.05
    assert started["G_ema"].img_resolution == 16


def test_resume_with_nothing_matching_is_refused(tmp_path, datasets):
    foreign = tmp_path / "foreign.pkl"
    # A readable snapshot (our own layer class) whose tensors, `weight` and `bias`, exist in no G or D.
    modules = {name: networks_stylegan2.FullyConnectedLayer(3, 3) for name in ["G", "D", "G_ema"]}
    with open(foreign, "wb") as f:
        pickle.dump({**modules, "augment_pipe": None, "training_set_kwargs": {}}, f)
    args = [f"--outdir={tmp_path / 'runs'}", f"--data={datasets[8]}", *TINY, "--gpus=1", "--batch=4"]
    result = CliRunner().invoke(train.main, [*args, f"--resume={foreign}", "--dry-run"])
    assert result.exit_code != 0
    assert "no tensor of its G or D has the name and shape" in result.output
    assert not (tmp_path / "runs").exists()


def test_freezed_beyond_the_layer_count_is_refused(tmp_path, datasets):
    args = [f"--outdir={tmp_path / 'runs'}", f"--data={datasets[8]}", *TINY, "--gpus=1", "--batch=4", "--dry-run"]
    result = CliRunner().invoke(train.main, [*args, "--freezed=5"])
    assert result.exit_code != 0 and "--freezed=5, but D has only 4 layers" in result.output
