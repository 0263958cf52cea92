"""Run directories and --resume (training/runs.py) without training: how runs are named, which run `latest` finds,
what each --resume value becomes, what continuing in place refuses, and the transfer report. Real resumed runs
are in test_training.py, test_preemption.py, test_transfer.py and test_faults.py."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from training import checkpoint, runs
from training.config import ConfigError, TrainingConfig


def config(outdir: Path, **changes) -> TrainingConfig:
    """A small run's config writing under `outdir`."""
    options = dict(
        outdir=str(outdir),
        cfg="stylegan2",
        data="datasets/shapes-8.zip",
        batch_size=4,
        batch_gpu=4,
        gamma=0.5,
        cbase=64,
        cmax=8,
    )
    return TrainingConfig(**{**options, **changes})


def make_run(outdir: Path, number: int, with_state: bool = True, **changes) -> str:
    """A run directory as training leaves it: training_options.json and, unless `with_state` is False, a state."""
    run_dir = str(outdir / f"{number:05d}-stylegan2-shapes-8-gpus1-batch4-gamma0.5")
    os.makedirs(run_dir)
    runs.write_training_options(config(outdir, run_dir=run_dir, **changes))
    if with_state:
        checkpoint.save_state(checkpoint.state_path(run_dir, 0), {"x": torch.zeros(1)})
    return run_dir


def test_a_new_run_is_numbered_after_the_existing_ones_and_gets_its_options(tmp_path):
    for name in ["00007-stylegan2-old", "3-other", "notes"]:
        (tmp_path / name).mkdir()
    expected = str(tmp_path / "00008-stylegan2-shapes-8-gpus1-batch4-gamma0.5-try")
    c = config(tmp_path, desc="try")
    assert runs.next_run_dir(c) == expected
    c = runs.prepare_run_dir(c)
    assert c.run_dir == expected and os.path.isdir(expected)
    with open(os.path.join(c.run_dir, "training_options.json")) as f:
        assert TrainingConfig.from_dict(json.load(f)) == c
    assert runs.newest_snapshot(c.run_dir) is None


def test_latest_is_the_highest_numbered_run_with_a_training_state(tmp_path):
    assert runs.latest_run_dir(str(tmp_path)) is None
    make_run(tmp_path, 2)
    tenth = make_run(tmp_path, 10)
    make_run(tmp_path, 11, with_state=False)  # Stopped before its first state: nothing to continue.
    assert runs.latest_run_dir(str(tmp_path)) == tenth


def test_what_each_resume_value_becomes(tmp_path, capsys):
    c = config(tmp_path)
    assert runs.resolve_resume(c) == c
    assert runs.resolve_resume(dataclasses.replace(c, resume="latest")).resume_state is None
    assert "no run under" in capsys.readouterr().out  # ...has a training state yet; starting one.

    run_dir = make_run(tmp_path, 0)
    for resume in ["latest", run_dir]:
        continued = runs.resolve_resume(dataclasses.replace(c, resume=resume))
        assert continued.run_dir == run_dir and continued.resume_pkl is None
        assert continued.resume_state == checkpoint.state_path(run_dir, 0)

    pkl = os.path.join(run_dir, "network-snapshot-000000.pkl")
    open(pkl, "wb").close()  # Its training state sits beside it: a note says how to continue that run instead.
    started = runs.resolve_resume(dataclasses.replace(c, resume=pkl, cmax=16))
    assert started.resume_pkl == pkl and started.resume_state is None and started.run_dir is None
    assert f"pass --resume={run_dir} with its options (cmax: 8 -> 16)" in capsys.readouterr().out


def test_continuing_refuses_changed_options_and_a_run_without_a_state(tmp_path):
    run_dir = make_run(tmp_path, 0)
    with pytest.raises(ConfigError, match=r"these options differ .* \(cmax: 8 -> 16, seed: 0 -> 1\)"):
        runs.resolve_resume(config(tmp_path, resume=run_dir, cmax=16, seed=1))
    empty = make_run(tmp_path, 1, with_state=False)
    with pytest.raises(ConfigError, match="has no training_options.json and training-state-"):
        runs.resolve_resume(config(tmp_path, resume=empty))


def test_a_batch_gpu_that_auto_chose_is_no_changed_option(tmp_path):
    run_dir = make_run(tmp_path, 0, batch_gpu=2, batch_gpu_auto=True)
    assert runs.changed_options(config(tmp_path, batch_gpu_auto=True), run_dir) == ""
    assert runs.changed_options(config(tmp_path), run_dir) == "batch_gpu: 2 -> 4, batch_gpu_auto: True -> False"


def test_an_outdir_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, so no folder can be made there"):
        runs.check_before_launch(config(tmp_path / "file" / "runs"), dataset_info={})


def test_the_transfer_report_goes_by_layer_block():
    names = [
        "mapping.fc0.weight",
        "synthesis.b4.conv1.weight",
        "synthesis.b4.torgb.weight",
        "synthesis.b8.conv0.weight",
        "synthesis.b8.conv1.weight",
        "synthesis.b16.conv0.weight",
    ]
    copied = names[:4]
    expected = "all of mapping, synthesis.b4; 1 of 2 of synthesis.b8; none of synthesis.b16"
    assert runs.describe_transfer(names, copied) == expected
