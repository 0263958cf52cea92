"""Stopping and watching real tiny runs: SIGTERM/SIGINT save a state and exit (one and two processes), a resumed
run ends bit-identical, extra training states by kimg, a stopped rank is named within the timeout, divergence
stops with the last finite snapshot, and `--resume=latest` starts a run when there is none."""

import contextlib
import io
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
from helpers import (
    ROOT,
    assert_identical,
    final_state,
    group_is_gone,
    quick_start_options,
    script_env,
    tiny,
    tiny_stylegan2,
)

import train
from training import checkpoint, preemption
from training.networks_stylegan2 import Discriminator

TINY = tiny(aug="ada")  # ADA on, so the bit-identical resumes cover its state too.


def start_training(*args: str, cwd: Path, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """train.py in a fresh interpreter and a process group of its own (its pid is the group's id), as a job
    scheduler starts it; its output (stdout and stderr together) readable line by line.

    Args:
        prefix: A command that runs train.py, such as ("timeout", "30").
    """
    cmd = [*prefix, sys.executable, str(ROOT / "train.py"), *args]
    env = script_env(PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


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


# ----------------------------------------------------------------------------
# Stop signals to the whole process group (SLURM without `B:`, `timeout`, `kill -- -PGID`, container stops): the
# DataLoader workers of training and of the metrics get the signal too, and must leave it to the training process.


def stop_group(proc: subprocess.Popen, signum: int = signal.SIGTERM) -> tuple[int, str]:
    """Send `signum` to every process of the run's group, as SLURM or `kill -- -PGID` do; its status and output."""
    os.killpg(proc.pid, signum)
    return finish(proc)


def assert_stopped_once(status: int, out: str, signum: int = signal.SIGTERM) -> None:
    """The run saved one state (or found it written), said so once and exited with the signal's status."""
    name = signal.Signals(signum).name
    assert status == preemption.exit_status(signum), out
    assert out.count(f"Received {name}") == 1 and out.count("Stopped by a signal") == 1, out
    assert "Error" not in out and "Traceback" not in out and "Terminating process" not in out, out


@pytest.fixture(scope="module")
def quick_data(demo_shapes) -> Path:
    """The README quick start's data at its resolution, 64 images."""
    return demo_shapes(32)


def quick_start(outdir: Path, data: Path, **changes: object) -> list[str]:
    """The README quick start's train.py options with two DataLoader workers and a short schedule."""
    options = {"workers": 2, "kimg": 0.32, "tick": 0.064, "snap": 16, **changes}
    return [f"--outdir={outdir}", f"--data={data}", *quick_start_options(**options)]


@pytest.mark.slow
def test_sigterm_to_the_group_with_dataloader_workers_saves_and_the_resumed_run_ends_bit_identical(
    tmp_path, quick_data
):
    split, straight = tmp_path / "split", tmp_path / "straight"
    proc = start_training(*quick_start(split, quick_data), cwd=tmp_path)
    out = read_until(proc, "tick 1 ")
    status, rest = stop_group(proc)
    out += rest
    assert_stopped_once(status, out)
    assert group_is_gone(proc.pid), "a DataLoader worker outlived the run"
    stopped_at = final_state(split)["progress"]["cur_nimg"]
    assert f"at kimg {stopped_at / 1000:g}." in out and 64 < stopped_at < 320, out

    status, out = finish(start_training(*quick_start(split, quick_data), "--resume=latest", cwd=tmp_path))
    assert status == 0 and f"from {stopped_at / 1000:g} kimg" in out, out
    assert finish(start_training(*quick_start(straight, quick_data), cwd=tmp_path))[0] == 0
    assert_identical(final_state(straight), final_state(split))


@pytest.mark.slow
def test_sigterm_to_the_group_while_a_snapshot_and_its_metric_are_written(tmp_path, quick_data):
    outdir = tmp_path / "runs"
    proc = start_training(*quick_start(outdir, quick_data, metrics="swd"), cwd=tmp_path)
    read_until(proc, "Saved network-snapshot-000000.pkl")  # Tick 0's snapshot; its metric, with workers, is next.
    status, out = stop_group(proc)
    assert_stopped_once(status, out)
    assert group_is_gone(proc.pid)
    [run_dir] = [p for p in outdir.iterdir() if p.is_dir()]
    assert (run_dir / "metric-swd.jsonl").is_file()  # The metric finished before the run stopped.
    assert checkpoint.list_states(str(run_dir))
    status, out = finish(
        start_training(*quick_start(outdir, quick_data, metrics="swd"), "--resume=latest", cwd=tmp_path)
    )
    assert status == 0 and "Continuing from" in out, out


def wait_for_descendants(proc: subprocess.Popen, count: int, timeout_sec: float = 120) -> None:
    """Wait until `proc` has at least `count` processes below it (its ranks, their DataLoader workers)."""
    deadline = time.time() + timeout_sec
    while time.time() < deadline and proc.poll() is None:
        if len(psutil.Process(proc.pid).children(recursive=True)) >= count:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"never had {count} processes below it:\n{proc.communicate()[0]}")


@pytest.mark.slow
@pytest.mark.parametrize("gpus, signum", [(1, signal.SIGTERM), (2, signal.SIGINT)])
def test_a_stop_signal_to_the_group_of_calc_metrics_ends_it_and_its_workers(tmp_path, demo_shapes, gpus, signum):
    """calc_metrics.py while its DataLoader workers read the dataset: it says it stopped, once, and exits 128 +
    signum with no traceback and nothing recorded; no worker outlives it."""
    data = demo_shapes(32, max_images=4096)  # Enough reals that the workers are still reading when the signal comes.
    pkl = tmp_path / "network.pkl"
    torch.manual_seed(0)
    G = tiny_stylegan2(resolution=32).eval()
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=64, channel_max=8)
    checkpoint.save_snapshot(str(pkl), G, D, G, None, dict(path=str(data), use_labels=False, xflip=False))
    command = [sys.executable, str(ROOT / "calc_metrics.py"), "--metrics=swd", f"--network={pkl}", f"--data={data}",
               f"--gpus={gpus}", "--workers=2", "--batch=16"]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    wait_for_descendants(proc, 2 if gpus == 1 else gpus * 3)
    status, out = stop_group(proc, signum)
    name = signal.Signals(signum).name
    assert status == 128 + signum, out
    assert out.count(f"Stopped by {name}: the metrics finished before it are recorded") == 1, out
    assert "Traceback" not in out and '"results"' not in out, out
    assert group_is_gone(proc.pid), "a worker outlived calc_metrics.py"


@pytest.mark.slow
def test_timeout_stops_the_run_with_a_state(tmp_path, quick_data):
    """`timeout` signals its whole process group; the run may still be starting up then: the state is written at
    the first step boundary."""
    outdir = tmp_path / "runs"
    proc = start_training(*quick_start(outdir, quick_data, kimg=1000), cwd=tmp_path, prefix=("timeout", "25"))
    status, out = finish(proc)
    assert status == 124, out  # timeout's own status for a command it stopped.
    assert out.count("Received SIGTERM") == 1 and "Stopped by a signal" in out, out
    assert "Error" not in out and "Traceback" not in out, out
    assert group_is_gone(proc.pid)
    [run_dir] = [p for p in outdir.iterdir() if p.is_dir()]
    assert checkpoint.list_states(str(run_dir))


@pytest.mark.slow
def test_sigterm_to_the_group_of_two_processes_and_the_resumed_run_ends_bit_identical(tmp_path, quick_data):
    split, straight = tmp_path / "split", tmp_path / "straight"
    proc = start_training(*quick_start(split, quick_data, gpus=2), cwd=tmp_path)
    out = read_until(proc, "tick 1 ")
    status, rest = stop_group(proc)
    out += rest
    assert_stopped_once(status, out)  # Once, though the launcher passes it on to ranks that got it already.
    assert group_is_gone(proc.pid)
    stopped_at = final_state(split)["progress"]["cur_nimg"]

    status, out = finish(start_training(*quick_start(split, quick_data, gpus=2), "--resume=latest", cwd=tmp_path))
    assert status == 0 and f"from {stopped_at / 1000:g} kimg" in out, out
    assert finish(start_training(*quick_start(straight, quick_data, gpus=2), cwd=tmp_path))[0] == 0
    assert_identical(final_state(straight), final_state(split))


LOADER_SCRIPT = """
import os, subprocess, time
import torch
from torch_utils import stop_signals
from training.preemption import StopRequest

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 40
    def __getitem__(self, index):
        time.sleep(0.05)
        return torch.tensor([index, os.getpid()])

loader = torch.utils.data.DataLoader(Slow(), batch_size=2, num_workers=2, worker_init_fn=stop_signals.worker_init_fn())
with StopRequest() as stop:
    seen = []
    for batch in stop_signals.loader_batches(loader):
        seen += batch[:, 0].tolist()
        if len(seen) == 4:
            print("workers", sorted(set(batch[:, 1].tolist()) | {0}), flush=True)
            # The whole group, workers included, mid-pass; sent from outside it, as SLURM or `timeout` send it.
            subprocess.run(["kill", "-TERM", "--", f"-{os.getpgid(0)}"], check=True, start_new_session=True)
    print("read", sorted(seen) == list(range(40)), "stop requested", stop.requested, flush=True)
"""


@pytest.mark.slow
def test_dataloader_workers_leave_a_group_signal_to_the_main_process():
    """What training's and the metrics' loaders rely on: a SIGTERM to the group does not end the workers (the pass
    completes), reaches the main process's handler once, and the workers end with the pass."""
    env = script_env(PYTHONPATH=str(ROOT))
    command = [sys.executable, "-c", LOADER_SCRIPT]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "read True stop requested True" in result.stdout, result.stdout + result.stderr
    assert result.stderr.count("Received SIGTERM") == 1, result.stderr


@pytest.mark.slow
def test_a_dataloader_worker_killed_by_another_cause_is_named_not_blamed_on_the_disk(tmp_path, quick_data):
    outdir = tmp_path / "runs"
    proc = start_training(*quick_start(outdir, quick_data, kimg=1000), cwd=tmp_path)
    read_until(proc, "tick 1 ")
    workers = [p for p in psutil.Process(proc.pid).children() if "train.py" in " ".join(p.cmdline())]
    assert len(workers) == 2
    workers[0].kill()  # As the kernel's out-of-memory killer would.
    status, out = finish(proc)
    assert status == 1, out
    assert "Error: a DataLoader worker process died" in out and "--workers" in out and "--resume=" in out, out
    assert "disk" not in out and "Traceback" not in out, out


class BusyStream(io.TextIOBase):
    """A console stream in the middle of a write when a stop signal arrives (as a BufferedWriter is while it
    writes a tick line to the console and log.txt); a write from inside that one fails as Python's does."""

    def __init__(self, signum: int):
        self.signum, self.busy, self.text = signum, False, ""

    def write(self, text: str) -> int:
        if self.busy:
            raise RuntimeError("reentrant call inside BusyStream")
        self.busy = True
        try:
            self.text += text
            os.kill(os.getpid(), self.signum)  # Python runs the handler at the next bytecode: inside this write.
            for _ in range(100):
                pass
        finally:
            self.busy = False
        return len(text)


def test_a_stop_signal_in_the_middle_of_a_write_is_noted_and_said_once(monkeypatch, capfd):
    stream = BusyStream(signal.SIGTERM)
    monkeypatch.setattr(sys, "stdout", stream)
    monkeypatch.setattr(sys, "stderr", stream)
    with preemption.StopRequest() as stop:
        print("tick 1     kimg 0.1 ...")  # The tick line being written when the signal arrives.
        print("tick 2     kimg 0.2 ...")  # Within 2 s: the same request again.
    assert stop.requested and stop.signum == signal.SIGTERM
    assert stream.text == "tick 1     kimg 0.1 ...\ntick 2     kimg 0.2 ...\n"
    assert capfd.readouterr().err.count("Received SIGTERM: saving a training state after this step") == 1
