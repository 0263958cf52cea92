"""Stopping and watching real tiny runs: SIGTERM/SIGINT save a state and exit (one and two processes), a resumed
run ends bit-identical, extra training states by kimg, a stopped rank is named within the timeout, divergence
stops with the last finite snapshot, and `--resume=latest` starts a run when there is none."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from click.testing import CliRunner
from helpers import ROOT, script_env, tiny

import train
from training import checkpoint, preemption

TINY = tiny(aug="ada")  # ADA on, so the bit-identical resumes cover its state too.


def start_training(*args: str, cwd: Path) -> subprocess.Popen:
    """train.py in a fresh interpreter, its output (stdout and stderr together) readable line by line."""
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    env = script_env(PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until(proc: subprocess.Popen, marker: str, timeout_sec: float = 300) -> str:
    """Read the process's output until a line contains `marker`; return everything read."""
    lines, deadline = [], time.time() + timeout_sec
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    proc.kill()
    raise AssertionError(f"no line with {marker!r} in:\n{''.join(lines)}")


def finish(proc: subprocess.Popen, timeout_sec: float = 300) -> tuple[int, str]:
    """Wait for the process; its exit status and the rest of its output."""
    try:
        rest, _ = proc.communicate(timeout=timeout_sec)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, rest


def final_state(outdir: Path) -> dict:
    [run_dir] = [p for p in outdir.iterdir() if p.is_dir()]
    return checkpoint.load_state(checkpoint.list_states(str(run_dir))[-1])


def assert_identical(a: dict, b: dict) -> None:
    assert a["progress"]["cur_nimg"] == b["progress"]["cur_nimg"]
    for net in ("G", "D", "G_ema"):
        for name in a[net]:
            assert torch.equal(a[net][name], b[net][name]), f"{net}.{name} differs"
    for opt in ("G_opt", "D_opt"):
        for index, slot in a[opt]["state"].items():
            for key, value in slot.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[opt]["state"][index][key])), (opt, key)


@pytest.mark.slow
def test_sigterm_saves_a_state_and_the_resumed_run_ends_bit_identical(tmp_path, data):
    common = [f"--data={data}", *TINY, "--gpus=1", "--batch=4", "--kimg=0.2", "--tick=0.04", "--workers=0"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    proc = start_training(f"--outdir={split}", *common, cwd=tmp_path)
    out = read_until(proc, "tick 1 ")  # Past start-up: the handlers are installed.
    proc.send_signal(signal.SIGTERM)
    status, rest = finish(proc)
    out += rest
    assert status == preemption.exit_status(signal.SIGTERM) == 143, out
    assert "Received SIGTERM" in out and "Saved training-state-000000.pt at kimg" in out and "--resume=" in out
    stopped_at = final_state(split)["progress"]["cur_nimg"]
    assert 0 < stopped_at < 200

    # The same command with --resume=latest continues it; the end equals an uninterrupted run bit for bit.
    proc = start_training(f"--outdir={split}", *common, "--resume=latest", cwd=tmp_path)
    status, out = finish(proc)
    assert status == 0 and f"from {stopped_at / 1000:g} kimg" in out, out
    proc = start_training(f"--outdir={straight}", *common, cwd=tmp_path)
    assert finish(proc)[0] == 0
    assert_identical(final_state(straight), final_state(split))


@pytest.mark.slow
def test_sigint_to_the_launcher_of_two_processes_stops_both_and_the_resumed_run_ends_bit_identical(tmp_path, data):
    common = [f"--data={data}", *TINY, "--gpus=2", "--batch=8", "--kimg=0.16", "--tick=0.04", "--workers=0"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    proc = start_training(f"--outdir={split}", *common, cwd=tmp_path)
    read_until(proc, "tick 1 ")
    proc.send_signal(signal.SIGINT)  # The launcher passes it on to both training processes.
    status, out = finish(proc)
    assert status == preemption.exit_status(signal.SIGINT) == 130, out
    assert out.count("Received SIGINT") == 1 and out.count("Stopped by a signal") == 1, out
    stopped_at = final_state(split)["progress"]["cur_nimg"]
    assert stopped_at % 8 == 0 and 40 <= stopped_at < 160

    status, out = finish(start_training(f"--outdir={split}", *common, "--resume=latest", cwd=tmp_path))
    assert status == 0 and f"from {stopped_at / 1000:g} kimg" in out, out
    assert finish(start_training(f"--outdir={straight}", *common, cwd=tmp_path))[0] == 0
    assert_identical(final_state(straight), final_state(split))


@pytest.mark.slow
def test_training_states_between_snapshots_by_kimg(tmp_path, data):
    outdir = tmp_path / "runs"
    args = [f"--outdir={outdir}", f"--data={data}", *TINY, "--gpus=1", "--batch=4", "--kimg=0.06", "--tick=1"]
    proc = start_training(*args, "--state-kimg=0.02", "--state-min=0", "--workers=0", cwd=tmp_path)
    status, out = finish(proc)
    assert status == 0, out
    # Counted from the last state written: tick 0's snapshot, after the first step of 4 images.
    assert "Saved training-state-000000.pt at kimg 0.024." in out and "at kimg 0.044." in out, out
    assert final_state(outdir)["progress"]["cur_nimg"] == 60


def spawned_ranks(launcher: psutil.Process) -> list[psutil.Process]:
    """The training processes the --gpus=N launcher spawned, in rank order (started one after another)."""
    children = [p for p in launcher.children() if "spawn_main" in " ".join(p.cmdline())]
    children = [p for p in children if "resource_tracker" not in " ".join(p.cmdline())]
    return sorted(children, key=lambda p: p.create_time())


@pytest.mark.slow
def test_a_stopped_rank_is_named_within_the_timeout(tmp_path, data):
    outdir = tmp_path / "runs"
    args = [f"--outdir={outdir}", f"--data={data}", *TINY, "--gpus=2", "--batch=8", "--kimg=10", "--tick=0.04"]
    proc = start_training(*args, "--workers=0", "--timeout-min=0.1", cwd=tmp_path)  # 6 s.
    read_until(proc, "tick 1 ")
    ranks = spawned_ranks(psutil.Process(proc.pid))
    assert len(ranks) == 2
    ranks[1].send_signal(signal.SIGSTOP)
    stopped_at = time.time()
    try:
        status, out = finish(proc, timeout_sec=120)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):  # The launcher may have ended it already.
            ranks[1].kill()
    assert status != 0
    assert "rank 1 stopped answering" in out and "--timeout-min" in out, out
    assert time.time() - stopped_at < 60  # 6 s, plus the time to notice and tear down; not gloo's 30 minutes.


@pytest.mark.slow
def test_divergence_stops_naming_the_last_finite_snapshot(tmp_path, data):
    outdir = tmp_path / "runs"
    args = [f"--outdir={outdir}", f"--data={data}", *TINY, "--aug=noaug", "--gpus=1", "--batch=4", "--kimg=1"]
    proc = start_training(*args, "--tick=0.02", "--snap=50", "--dlr=1e30", "--workers=0", cwd=tmp_path)
    status, out = finish(proc)
    assert status == 1, out
    assert "nonfinite-grads" in out  # The tick line says so before the run stops.
    [run_dir] = [p for p in outdir.iterdir() if p.is_dir()]
    snapshot = run_dir / "network-snapshot-000000.pkl"
    assert "Error: training diverged at kimg" in out and f"--resume={snapshot}" in out, out
    assert sorted(p.name for p in run_dir.glob("network-snapshot-*")) == [snapshot.name]
    assert "Traceback" not in out


def test_resume_latest_starts_a_run_when_there_is_none(tmp_path, data):
    args = [f"--outdir={tmp_path / 'runs'}", f"--data={data}", *TINY, "--gpus=1", "--batch=4", "--resume=latest"]
    result = CliRunner().invoke(train.main, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "no run under" in result.output and "starting one" in result.output
    assert "Output directory:" in result.output


STOP_SCRIPT = """
import os, signal, sys, time
from training.preemption import StopRequest
with StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # The same request twice (a launcher passing it on): still running.
    time.sleep(0.1)
    print("requested", stop.requested, stop.signum == signal.SIGTERM, flush=True)
    time.sleep(2.5)
    os.kill(os.getpid(), signal.SIGTERM)  # A second request: exit at once.
    time.sleep(5)
    print("still alive", flush=True)
"""


@pytest.mark.slow
def test_a_second_signal_exits_at_once():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", STOP_SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "requested True True", result.stdout + result.stderr
    assert result.returncode == -signal.SIGTERM
    assert "exiting without saving" in result.stderr
