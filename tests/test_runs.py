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

from training import checkpoint, legacy, run_log, runs
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
    assert legacy.newest_snapshot(c.run_dir) is None


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
    state = checkpoint.state_path(run_dir, 0)
    with pytest.raises(
        ConfigError, match=f"is a training state: to continue its run exactly, pass .*--resume={run_dir} "
    ):
        runs.resolve_resume(config(tmp_path, resume=state))
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


def test_a_snapshot_never_replaces_another(tmp_path):
    run_dir = str(tmp_path)
    assert checkpoint.new_snapshot_path(run_dir, 84016) == str(tmp_path / "network-snapshot-000084.pkl")
    (tmp_path / "network-snapshot-000084.pkl").write_bytes(b"first")
    second = checkpoint.new_snapshot_path(run_dir, 84500)
    assert second == str(tmp_path / "network-snapshot-000084_500.pkl")
    (tmp_path / "network-snapshot-000084_500.pkl").write_bytes(b"second")
    (tmp_path / "network-snapshot-000009.pkl").write_bytes(b"older")
    # Names sort by kimg, and the newest is the one with the most images.
    assert legacy.newest_snapshot(run_dir) == second
    assert sorted(os.listdir(run_dir)) == [f"network-snapshot-{k}.pkl" for k in ("000009", "000084", "000084_500")]
    assert [run_log.snapshot_file_kimg(name) for name in sorted(os.listdir(run_dir))] == [9, 84, 84.5]
    assert run_log.snapshot_file_kimg("training-state-000084.pt") is None


def test_continuing_a_finished_run_is_refused_before_anything_is_written(tmp_path):
    run_dir = make_run(tmp_path, 0, total_kimg=0.02)
    checkpoint.save_state(checkpoint.state_path(run_dir, 0), {"progress": {"cur_nimg": 20, "cur_tick": 1}})
    with pytest.raises(runs.RunComplete, match=r"is complete: it has trained 0.02 kimg of --kimg=0.02 .*--kimg=2\)"):
        runs.resolve_resume(config(tmp_path, resume="latest", total_kimg=0.02))
    continued = runs.resolve_resume(config(tmp_path, resume="latest", total_kimg=0.04))
    assert continued.resume_state == checkpoint.state_path(run_dir, 0)


def test_resuming_drops_the_metrics_of_snapshots_after_the_state(tmp_path):
    lines = [{"snapshot_pkl": f"network-snapshot-{name}.pkl"} for name in ("000084", "000084_500", "000088")]
    (tmp_path / "metric-swd.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    notes = run_log.drop_entries_after(str(tmp_path), cur_tick=99, kimg=84.016)
    assert notes == [
        "metric-swd.jsonl: dropped 2 lines (snapshots after 84.016 kimg), logged after the state continued from"
    ]
    assert (tmp_path / "metric-swd.jsonl").read_text() == json.dumps(lines[0]) + "\n"
