"""Faults (issue 13): every bad value refused with a usage error, failed writes and bad resumes explained in a
sentence, atomic writes that honour the umask and reach the disk, clean-up after killed writers, and logs that
read as one run after a resume.

Training runs in this process (CliRunner, one process) on a tiny network at 8x8, so the file takes well under a
minute on two cores.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import time
import zipfile
from pathlib import Path

import click
import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner
from helpers import run_dirs, run_script, tiny

import calc_metrics
import dataset_tool
import dnnlib
import gen_images
import gen_video
import train
from training import checkpoint, run_log, runs
from training.config import ConfigError, TrainingConfig, validate

TINY = tiny(gpus=1, workers=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A 16-image 8x8 RGB zip in dataset_tool.py's format, written directly (independent of dataset_tool.py)."""
    path = tmp_path_factory.mktemp("data") / "blobs8.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(16):
            buffer = io.BytesIO()
            PIL.Image.fromarray(rng.integers(0, 256, [8, 8, 3], dtype=np.uint8)).save(buffer, format="PNG")
            archive.writestr(f"00000/img{i:08d}.png", buffer.getvalue())
        archive.writestr("dataset.json", json.dumps({"labels": None}))
    return path


def invoke(command: click.Command, args: list[str]) -> click.testing.Result:
    """Run a command line in this process; exceptions become the result's exit code, as for a user."""
    return CliRunner().invoke(command, [str(arg) for arg in args])


# ----------------------------------------------------------------------------
# Item 4: NaN and infinity are refused for every float option, at the command line and in the config.


@pytest.mark.parametrize(
    "option, value",
    [
        ("--gamma", "nan"),
        ("--kimg", "nan"),
        ("--tick", "nan"),
        ("--glr", "nan"),
        ("--dlr", "inf"),
        ("--p", "nan"),
        ("--target", "-inf"),
        ("--kimg", "inf"),
        ("--gamma", "+inf"),
    ],
)
def test_train_refuses_non_finite_values(tmp_path, option, value):
    args = [f"--outdir={tmp_path / 'runs'}", "--data=unused.zip", *TINY, "--batch=4", "--aug=fixed"]
    result = invoke(train.main, [*args, f"{option}={value}"])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output and "is not a finite number" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, option",
    [
        (["--trunc=nan"], "--trunc"),
        (["--trunc=inf"], "--trunc"),
        (["--rotate=nan"], "--rotate"),
        (["--scale=inf"], "--scale"),
        (["--translate=nan,0"], "--translate"),
        (["--translate=0,-inf"], "--translate"),
    ],
)
def test_gen_images_refuses_non_finite_values(tmp_path, args, option):
    # The measured failure: --trunc=nan wrote all-black images and exited with 0.
    result = invoke(gen_images.main, ["--network=missing.pkl", "--seeds=0", f"--outdir={tmp_path / 'out'}", *args])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_gen_video_refuses_non_finite_values(tmp_path):
    result = invoke(
        gen_video.main, ["--network=missing.pkl", "--seeds=0", f"--output={tmp_path / 'v.mp4'}", "--trunc=nan"]
    )
    assert result.exit_code == 2 and "Invalid value for '--trunc'" in result.output, result.output
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", [train.main, gen_images.main, gen_video.main, calc_metrics.main, dataset_tool.main])
def test_every_float_option_of_the_root_scripts_is_finite(command):
    # A new float option must use FiniteFloatRange (or parse_vec2), or NaN would slip through again.
    for param in command.params:
        if isinstance(param.type, click.types.FloatParamType):
            assert isinstance(param.type, dnnlib.util.FiniteFloatRange), f"{command.name} {param.opts}"
            with pytest.raises(click.BadParameter, match="not a finite number"):
                param.type.convert("nan", param, None)


def test_finite_float_range_keeps_its_bounds():
    finite = dnnlib.util.FiniteFloatRange(min=0, max=1)
    assert finite.convert("0.5", None, None) == 0.5
    for bad, message in [("nan", "not a finite number"), ("-inf", "not a finite number"), ("2", "range")]:
        with pytest.raises(click.BadParameter, match=message):
            finite.convert(bad, None, None)


def test_config_built_from_python_refuses_non_finite_values():
    c = TrainingConfig(outdir="runs", cfg="stylegan2", data="data.zip", gpus=1, batch_size=32, batch_gpu=32)
    validate(c)
    for change, message in [
        (dict(gamma=float("nan")), "--gamma=nan"),
        (dict(total_kimg=float("inf")), "--kimg=inf"),
        (dict(betas=(0.0, float("nan"))), "betas=(0.0, nan)"),
        (dict(G_kwargs=dict(magnitude_ema_beta=float("nan"))), "G_kwargs['magnitude_ema_beta']=nan"),
    ]:
        with pytest.raises(ConfigError, match="must be finite") as error:
            validate(TrainingConfig(**{**c.__dict__, **change}))
        assert message in str(error.value)


# ----------------------------------------------------------------------------
# Item 6: sentences instead of tracebacks.


def test_outdir_under_a_file_is_refused_before_launch(tmp_path, data):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke(train.main, [f"--outdir={blocker / 'runs'}", f"--data={data}", *TINY, "--batch=4"])
    assert result.exit_code == 1 and f"--outdir={blocker / 'runs'}" in result.output, result.output
    assert "is a file" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_outdir_is_refused_before_launch(tmp_path, data):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        result = invoke(train.main, [f"--outdir={read_only / 'runs'}", f"--data={data}", *TINY, "--batch=4"])
    finally:
        read_only.chmod(0o755)
    assert result.exit_code == 1 and f"cannot write in {read_only}" in result.output, result.output
    assert os.listdir(read_only) == []


def test_unwritable_outdir_probe_failure_names_the_folder(tmp_path, data, monkeypatch):
    # What a read-only mount answers, for machines where the test runs as root.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(runs.tempfile, "TemporaryFile", read_only)
    result = invoke(train.main, [f"--outdir={tmp_path / 'runs'}", f"--data={data}", *TINY, "--batch=4"])
    assert result.exit_code == 1 and "Read-only file system" in result.output, result.output
    assert f"--outdir={tmp_path / 'runs'}: cannot write in {tmp_path}" in result.output
    assert not (tmp_path / "runs").exists()


def test_disk_full_while_saving_a_state_is_a_sentence_and_leaves_nothing(tmp_path, data, monkeypatch):
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and "version" in obj):  # Only training states hit the full disk.
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", disk_full)
    outdir = tmp_path / "runs"
    result = invoke(train.main, [f"--outdir={outdir}", f"--data={data}", *TINY, "--batch=4", "--kimg=0.004"])
    [run_dir] = run_dirs(outdir)
    state = run_dir / "training-state-000000.pt"
    assert result.exit_code == 1, result.output
    assert f"Error: Could not write {state}" in result.output and "The disk may be full" in result.output
    assert "inline_container" in result.output and "Traceback" not in result.output
    assert not state.exists() and not list(run_dir.glob(".tmp-*"))
    assert (run_dir / "network-snapshot-000000.pkl").is_file()  # What was written before stays complete.


def test_a_spawned_process_that_stopped_is_one_line(monkeypatch):
    def stopped(fn, args, num_processes, timeout_sec):
        raise torch.multiprocessing.ProcessExitedException("process 1 terminated", 1, 4242, 1)

    monkeypatch.setattr(train.distributed, "launch", stopped)
    with pytest.raises(click.ClickException, match="training process 1 stopped with exit code 1; see its message"):
        train.launch(TrainingConfig(outdir="runs", cfg="stylegan2", data="data.zip", gpus=2))


def test_save_state_out_of_space_names_the_file_and_keeps_the_old_states(tmp_path, monkeypatch):
    for kimg in range(2):
        checkpoint.save_state(checkpoint.state_path(str(tmp_path), kimg), {"x": torch.zeros(2)})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dnnlib.util.os, "fsync", no_space)
    path = checkpoint.state_path(str(tmp_path), 2)
    with pytest.raises(dnnlib.util.WriteError, match="No space left on device") as error:
        checkpoint.save_state(path, {"x": torch.ones(2)})
    assert path in str(error.value) and "disk may be full" in str(error.value)
    assert isinstance(error.value, OSError)  # Callers that handled OSError still do.
    assert sorted(os.listdir(tmp_path)) == ["training-state-000000.pt", "training-state-000001.pt"]


@pytest.mark.slow
def test_resume_from_a_state_that_does_not_fit_is_refused_before_anything_is_made(tmp_path, data):
    common = [f"--data={data}", *TINY, "--batch=4", "--kimg=0.004"]
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    assert invoke(train.main, [f"--outdir={run_a}", *common]).exit_code == 0
    assert invoke(train.main, [f"--outdir={run_b}", *common, "--cmax=16"]).exit_code == 0
    [dir_a], [dir_b] = run_dirs(run_a), run_dirs(run_b)

    # --resume=PKL is a transfer of weights; the note about its state names what continuing it would need.
    pkl = dir_a / "network-snapshot-000000.pkl"
    result = invoke(train.main, [f"--outdir={run_a}", *common, "--cmax=16", f"--resume={pkl}", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"pass --resume={dir_a} with its options (cmax: 8 -> 16)" in result.output

    # A state from another run (other --cmax) put in place of this run's: refused, naming it, nothing made.
    state = dir_a / "training-state-000000.pt"
    state.write_bytes((dir_b / "training-state-000000.pt").read_bytes())
    before = sorted(os.listdir(dir_a))
    result = invoke(train.main, [f"--outdir={run_a}", *common, f"--resume={dir_a}", "--kimg=0.008"])
    assert result.exit_code == 1, result.output
    assert f"{state} does not fit the networks of these options" in result.output
    assert "in the file, [" in result.output and "--cmax=8" in result.output and "Traceback" not in result.output
    assert run_dirs(run_a) == [dir_a] and sorted(os.listdir(dir_a)) == before

    # A damaged state: the same, with the way out.
    state.write_bytes(b"PK\x03\x04 damaged")
    result = invoke(train.main, [f"--outdir={run_a}", *common, f"--resume={dir_a}", "--kimg=0.008"])
    assert result.exit_code == 1 and f"cannot read {state}" in result.output and "move it away" in result.output


# ----------------------------------------------------------------------------
# Item 7: atomic writes, permissions, fsync, stale temporary files, logs after a resume.


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    G = torch.nn.Linear(2, 2)
    old = os.umask(umask)
    try:
        dnnlib.util.atomic_write(str(tmp_path / "a.bin"), lambda f: f.write(b"x"))
        checkpoint.save_snapshot(str(tmp_path / "network-snapshot-000000.pkl"), G, G, G, None, None)
        checkpoint.save_state(str(tmp_path / "training-state-000000.pt"), {"x": torch.zeros(1)})
        with dnnlib.util.atomic_path(str(tmp_path / "video.mp4")) as tmp:
            Path(tmp).write_bytes(b"frames")
    finally:
        os.umask(old)
    for name in ["a.bin", "network-snapshot-000000.pkl", "training-state-000000.pt", "video.mp4"]:
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    calls = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        calls.append(("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(dnnlib.util.os, "fsync", recording_fsync)
    dnnlib.util.atomic_write(str(target), lambda f: f.write(b"data"))
    assert calls == [("file", False), ("folder", True)]
    calls.clear()
    with dnnlib.util.atomic_path(str(tmp_path / "v.mp4")) as tmp:
        Path(tmp).write_bytes(b"frames")
    assert [kind for kind, _ in calls] == ["file", "folder"]


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    (tmp_path / "kept.txt").write_text("old")

    def fail(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(dnnlib.util.WriteError, match="kept.txt"):
        dnnlib.util.atomic_write(str(tmp_path / "kept.txt"), fail)
    assert os.listdir(tmp_path) == ["kept.txt"] and (tmp_path / "kept.txt").read_text() == "old"
    with pytest.raises(KeyboardInterrupt):  # Not an OSError: propagates unchanged, still no temporary file.
        with dnnlib.util.atomic_path(str(tmp_path / "new.txt")):
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["kept.txt"]


def test_stale_temporary_files_of_killed_writers_are_removed(tmp_path):
    old = time.time() - dnnlib.util.STALE_TEMP_AGE_S - 60
    stale = [".tmp-a1b2c3d4-network-snapshot-000004.pkl", ".tmp-x_9yz0ab.npz"]  # Ours, and an older version's.
    kept = [".tmp-0123abcd-training-state-000004.pt", ".tmp-notours", ".tmpfile", "network-snapshot-000000.pkl"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"")
    for name in stale + kept[1:]:
        os.utime(tmp_path / name, (old, old))  # All old except one of ours, which a live writer is still writing.
    dnnlib.util.atomic_write(str(tmp_path / "training_options.json"), lambda f: f.write(b"{}"))
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["training_options.json"])


def test_drop_entries_after_cuts_the_logs_back_to_the_state(tmp_path):
    stats = [json.dumps({"Progress/tick": {"num": 1, "mean": tick, "std": 0}}) for tick in range(5)]
    (tmp_path / "stats.jsonl").write_text("\n".join(stats) + '\n{"Progress/tick": {"me')  # A torn last line.
    records = [json.dumps({"snapshot_pkl": f"network-snapshot-{kimg:06d}.pkl"}) for kimg in range(3)]
    (tmp_path / "metric-fid50k_full.jsonl").write_text("\n".join(records) + "\n")
    (tmp_path / "metric-swd.jsonl").write_text(records[0] + "\n")
    notes = run_log.drop_entries_after(str(tmp_path), cur_tick=3, kimg=1)
    assert (tmp_path / "stats.jsonl").read_text() == "\n".join(stats[:3]) + "\n"
    assert (tmp_path / "metric-fid50k_full.jsonl").read_text() == "\n".join(records[:2]) + "\n"
    assert (tmp_path / "metric-swd.jsonl").read_text() == records[0] + "\n"  # Untouched.
    assert len(notes) == 2 and "stats.jsonl: dropped 2 lines (ticks >= 3) and a line cut short" in notes[0]


@pytest.mark.slow
def test_a_resumed_run_logs_every_tick_once_and_removes_stale_temporaries(tmp_path, data):
    outdir = tmp_path / "runs"
    common = [f"--outdir={outdir}", f"--data={data}", *TINY, "--batch=32", "--tick=0.5", "--snap=2"]
    result = invoke(train.main, [*common, "--kimg=2"])
    assert result.exit_code == 0, result.output
    [run_dir] = run_dirs(outdir)
    straight = [json.loads(line)["Progress/tick"]["mean"] for line in (run_dir / "stats.jsonl").open()]
    assert straight == [0, 1, 2, 3, 4]

    # As if killed just before the last state: its snapshot and stats lines exist, the state does not, and a
    # killed write left its temporary file.
    (run_dir / "training-state-000002.pt").unlink()
    stale = run_dir / ".tmp-deadbeef-training-state-000002.pt"
    stale.write_bytes(b"partial")
    old = time.time() - dnnlib.util.STALE_TEMP_AGE_S - 60
    os.utime(stale, (old, old))
    result = invoke(train.main, [*common, "--kimg=2", f"--resume={run_dir}"])
    assert result.exit_code == 0, result.output
    assert "stats.jsonl: dropped 2 lines (ticks >= 3)" in result.output
    lines = [json.loads(line) for line in (run_dir / "stats.jsonl").open()]
    assert [line["Progress/tick"]["mean"] for line in lines] == [0, 1, 2, 3, 4]
    assert not stale.exists() and not list(run_dir.glob(".tmp-*"))


def test_a_malformed_dataset_json_stops_only_conditional_training(tmp_path, data):
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(data) as source, zipfile.ZipFile(broken, "w") as archive:
        for name in source.namelist():
            archive.writestr(name, source.read(name) if name != "dataset.json" else b"{not json")
    common = [f"--outdir={tmp_path / 'runs'}", f"--data={broken}", "--cfg=stylegan2", "--gpus=1", "--batch=4"]
    common += ["--gamma=1", "--metrics=none", "--dry-run"]
    result = CliRunner().invoke(train.main, common)
    assert result.exit_code == 0, result.output  # Labels are not read without --cond.
    result = CliRunner().invoke(train.main, [*common, "--cond=1"])
    assert result.exit_code != 0 and "dataset.json" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_damaged_image_found_in_training_is_skipped_and_counted(tmp_path):
    path = tmp_path / "damaged.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(40):
            buffer = io.BytesIO()
            PIL.Image.fromarray(rng.integers(0, 256, [8, 8, 3], dtype=np.uint8)).save(buffer, format="PNG")
            data = buffer.getvalue()
            if i == 1:  # Not among the images decoded at the start, and its header is intact: found by training.
                data = data[:33] + b"garbage" * 10
            archive.writestr(f"00000/img{i:08d}.png", data)
    args = [f"--outdir={tmp_path / 'runs'}", f"--data={path}", *TINY, "--batch=40", "--kimg=0.08", "--tick=0.04"]
    result = run_script("train.py", *args, cwd=tmp_path)
    assert "damaged-images 1" in result.stdout  # Each tick shows 40 images: the damaged one once.
    assert "skipped a damaged image" in result.stderr and "img00000001.png" in result.stderr


def test_a_metric_result_that_cannot_be_written_is_a_sentence_and_keeps_the_file(tmp_path, monkeypatch):
    from metrics import api

    result = dict(metric="fid50k_full", results={"fid50k_full": 1.5}, total_time_str="1s")
    api.report_metric(result, run_dir=str(tmp_path))
    path = tmp_path / "metric-fid50k_full.jsonl"
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dnnlib.util.os, "fsync", no_space)
    with pytest.raises(dnnlib.util.WriteError, match="No space left on device"):
        api.report_metric(dict(result, results={"fid50k_full": 1.2}), run_dir=str(tmp_path))
    assert path.read_bytes() == before and json.loads(before)["results"] == {"fid50k_full": 1.5}
    assert sorted(os.listdir(tmp_path)) == ["metric-fid50k_full.jsonl"]


def test_dry_run_never_downloads_detectors(tmp_path, data, monkeypatch):
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "cache"))

    def no_download(*args, **kwargs):
        raise AssertionError("--dry-run tried to download")

    monkeypatch.setattr(dnnlib.util, "open_url", no_download)
    monkeypatch.setattr(dnnlib.util, "_download", no_download)
    args = [f"--outdir={tmp_path / 'runs'}", f"--data={data}", *TINY, "--batch=4", "--metrics=fid50k_full"]
    result = invoke(train.main, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "needs detector files a real run would download" in result.output and "Dry run" in result.output
