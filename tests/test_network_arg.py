"""What --network (and the converter's --source) accepts: a snapshot pickle, a URL, or a run directory meaning its
newest snapshot; and the one-sentence errors for what it does not (a directory without snapshots, a training state, a
file that is no pickle), plus --class refused for an unconditional network (issue 28, items 3 and 4)."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import helpers
import pytest
import torch
from click.testing import CliRunner

import calc_metrics
import gen_images
import gen_video
from training import checkpoint, legacy

# Each tool's command line around the network option, with the other options it requires; {out} is a fresh folder.
TOOLS = {
    "gen_images": (gen_images.main, "--network", ["--seeds=0", "--device=cpu", "--outdir={out}"]),
    "gen_video": (gen_video.main, "--network", ["--seeds=0", "--w-frames=2", "--device=cpu", "--output={out}/v.mp4"]),
    "calc_metrics": (calc_metrics.main, "--network", ["--metrics=is50k"]),
    "legacy": (legacy.main, "--source", []),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A run directory with two snapshots and a training state, a run with a training state only, an empty folder,
    the state under another name, a text file and a dataset-like zip."""
    root = tmp_path_factory.mktemp("networks")
    torch.manual_seed(0)
    G = helpers.tiny_stylegan2().eval()
    run = root / "00001-stylegan2-tiny-gpus1-batch4-gamma1"
    run.mkdir()
    (run / "training_options.json").write_text(json.dumps({"data": "none.zip"}))
    for kimg in (4, 12):
        checkpoint.save_snapshot(checkpoint.snapshot_path(str(run), kimg), G, None, G, None, None)
    state = {  # The keys of Trainer.state_dict, with a real optimizer state.
        "G": G.state_dict(),
        "D": {},
        "G_ema": G.state_dict(),
        "G_opt": torch.optim.Adam(G.parameters()).state_dict(),
        "loss": {},
        "progress": {"cur_nimg": 12_000},
        "batch_gpu": 4,
    }
    checkpoint.save_state(checkpoint.state_path(str(run), 12), state)
    states_only = root / "00002-stylegan2-tiny-gpus1-batch4-gamma1"
    states_only.mkdir()
    checkpoint.save_state(checkpoint.state_path(str(states_only), 2), state)
    (root / "empty").mkdir()
    shutil.copyfile(run / "training-state-000012.pt", root / "weights.bin")  # Known by content alone.
    (root / "notes.txt").write_text("Networks to try:\n" + "runs/00001/network-snapshot-000012.pkl\n" * 20)
    with zipfile.ZipFile(root / "images.zip", "w") as archive:
        archive.writestr("00000/img00000000.png", b"\x89PNG")
    return dict(
        run=run,
        states_only=states_only,
        empty=root / "empty",
        state=run / "training-state-000012.pt",
        renamed_state=root / "weights.bin",
        text=root / "notes.txt",
        zip=root / "images.zip",
    )


def invoke(tool: str, network: Path | str, tmp_path: Path, *extra: str):
    """Run a tool's `main` in this process with `network` as its network option; click's Result."""
    main, option, args = TOOLS[tool]
    argv = [f"{option}={network}", *(arg.format(out=tmp_path / "out") for arg in args), *extra]
    return CliRunner().invoke(main, argv)


def error_of(result) -> str:
    """The one error line a tool printed; fails the test on a traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and "Unpickling" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("tool", TOOLS)
def test_a_directory_without_snapshots_is_named_with_what_it_lacks(tool, files, tmp_path):
    option = TOOLS[tool][1]
    line = error_of(invoke(tool, files["empty"], tmp_path))
    assert line.startswith(f"Error: {option}={files['empty']}: {files['empty']} is a directory without a ")
    assert "network-snapshot-*.pkl; pass a snapshot pickle, or a run directory once train.py has written one" in line
    line = error_of(invoke(tool, files["states_only"], tmp_path))
    assert "without a network-snapshot-*.pkl (it holds training states only, which train.py --resume=DIR" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tool", TOOLS)
def test_a_training_state_is_refused_naming_the_snapshot_beside_it(tool, files, tmp_path):
    option, state = TOOLS[tool][1], files["state"]
    line = error_of(invoke(tool, state, tmp_path))
    assert line == (
        f"Error: {option}={state}: {state} is a training state (what --resume continues), not a network snapshot; "
        f"pass a network-snapshot-*.pkl, such as {files['run'] / 'network-snapshot-000012.pkl'} next to it"
    )
    # Known by its content: under another name it is still a training state (with no snapshot to name).
    line = error_of(invoke(tool, files["renamed_state"], tmp_path))
    assert line.endswith(
        f"{files['renamed_state']} is a training state (what --resume continues), not a network snapshot; pass a "
        f"network-snapshot-*.pkl"
    )


@pytest.mark.parametrize("tool", TOOLS)
def test_a_file_that_is_no_pickle_says_so_without_the_unpicklers_internals(tool, files, tmp_path):
    option = TOOLS[tool][1]
    accepted = (
        "the tools read network snapshot pickles: ours (network-snapshot-*.pkl) and the published StyleGAN2, "
        "StyleGAN3, CREPS and TensorFlow StyleGAN2 ones"
    )
    line = error_of(invoke(tool, files["text"], tmp_path))
    text = files["text"]
    assert line == f"Error: {option}={text}: {text} is not a readable network snapshot: it is a text file, not a " + (
        f"pickle; {accepted}"
    )
    line = error_of(invoke(tool, files["zip"], tmp_path))
    assert line.endswith(f"it is a zip archive (such as a dataset), not a pickle; {accepted}")


def test_the_newest_snapshot_is_the_highest_kimg_not_the_last_name(tmp_path):
    for name in ("network-snapshot-999999.pkl", "network-snapshot-1000000.pkl", "best-fid50k_full.pkl"):
        (tmp_path / name).write_bytes(b"")
    assert legacy.newest_snapshot(str(tmp_path)) == str(tmp_path / "network-snapshot-1000000.pkl")
    assert legacy.resolve_network("https://example.com/net.pkl") == ("https://example.com/net.pkl", None)


def test_gen_images_and_gen_video_take_a_run_directory_as_its_newest_snapshot(files, tmp_path):
    note = f"--network={files['run']}: using its newest snapshot, network-snapshot-000012.pkl"
    result = invoke("gen_images", files["run"], tmp_path)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == note
    assert os.listdir(tmp_path / "out") == ["seed0000.png"]
    pytest.importorskip("imageio_ffmpeg")
    result = invoke("gen_video", files["run"], tmp_path)
    assert result.exit_code == 0, result.output
    assert note in result.output.splitlines() and (tmp_path / "out" / "v.mp4").is_file()


def test_calc_metrics_takes_a_run_directory_and_records_into_it(files, tmp_path, monkeypatch):
    launched = []
    monkeypatch.setattr(calc_metrics.metrics, "check_metrics_available", lambda *args, **kwargs: None)
    monkeypatch.setattr(calc_metrics.distributed, "launch", lambda fn, args, num_processes: launched.append(args[0]))
    result = invoke("calc_metrics", files["run"], tmp_path)
    assert result.exit_code == 0, result.output
    assert f"--network={files['run']}: using its newest snapshot, network-snapshot-000012.pkl" in result.output
    (config,) = launched
    assert config.network_pkl == str(files["run"] / "network-snapshot-000012.pkl")
    assert config.run_dir == str(files["run"])  # metric-<name>.jsonl goes into the run, as for its snapshots.


def test_the_converter_without_dest_only_reports(files, tmp_path):
    before = sorted(os.listdir(files["run"]))
    result = CliRunner().invoke(legacy.main, [f"--source={files['run']}"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"--source={files['run']}: using its newest snapshot, network-snapshot-000012.pkl",
        "Format: ganforge",
        "G:            StyleGAN2 generator, 8x8, 3 channels, unconditional, z 8, w 8, "
        + f"{sum(p.numel() for p in helpers.tiny_stylegan2().parameters()):,} parameters",
        "D:            none",
        "G_ema:        StyleGAN2 generator, 8x8, 3 channels, unconditional, z 8, w 8, "
        + f"{sum(p.numel() for p in helpers.tiny_stylegan2().parameters()):,} parameters",
        "augment_pipe: none",
    ]
    assert sorted(os.listdir(files["run"])) == before
    result = CliRunner().invoke(legacy.main, [f"--source={files['run']}", "--force"])
    assert error_of(result) == "Error: --force replaces --dest, and there is no --dest"


@pytest.mark.parametrize("tool", ["gen_images", "gen_video"])
def test_class_is_refused_for_an_unconditional_network(tool, files, tmp_path):
    snapshot = files["run"] / "network-snapshot-000004.pkl"
    line = error_of(invoke(tool, snapshot, tmp_path, "--class=1"))
    assert line == "Error: --class=1: the network is unconditional (it has no classes); leave --class out"
    assert not (tmp_path / "out").exists()
