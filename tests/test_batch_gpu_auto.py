"""--batch-gpu=auto (issue 14): the candidates, the memory probe and the halving after an out-of-memory error, on the
CPU with errors injected through GANFORGE_INJECT_OOM (training/batch_memory.py).

The claim under test: a phase that runs out of memory is undone without a trace and redone with half the rounds'
size, so the run equals, bit for bit, a run that used the lower --batch-gpu from that phase on; and the probe changes
nothing, so the run after it equals a run started with the chosen --batch-gpu. A tiny stylegan2 network at 8x8 with
ADA (so the pending signs of D, the augment pipe and w_avg are covered) runs in this process; the two-process test
is the slowest part.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import final_state

import dnnlib
import train
from torch_utils import training_stats
from training import batch_memory
from training.config import ConfigError, TrainingConfig, batch_gpu_candidates, validate
from training.dataset import ImageFolderDataset
from training.loss import Phase
from training.training_loop import (
    TrainingStopped,
    build_trainer,
    make_data_iterator,
    run_phase,
    train_step,
    training_set_kwargs,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--cfg=stylegan2",
    "--gamma=1",
    "--aug=ada",
    "--metrics=none",
    "--cbase=64",
    "--cmax=8",
    "--map-depth=1",
    "--workers=0",
]
INJECT = batch_memory.INJECT_OOM_VARIABLE


@pytest.fixture(autouse=True)
def no_injection(monkeypatch):
    """Every test starts without injected errors."""
    monkeypatch.delenv(INJECT, raising=False)


def make_config(outdir: Path, data: Path, *args: str) -> TrainingConfig:
    """The config train.py builds from these options (one process)."""
    argv = [f"--outdir={outdir}", f"--data={data}", *TINY, "--gpus=1", *args]
    with train.main.make_context("train.py", argv) as ctx:
        return train.build_config(dnnlib.EasyDict(ctx.params))


class Run:
    """A trainer and the step batches it is fed, driven through train_step as the training loop drives it."""

    def __init__(self, c: TrainingConfig, steps: int):
        self.c = c
        dataset = ImageFolderDataset(**training_set_kwargs(c))
        self.labels = torch.stack([torch.from_numpy(dataset.get_label(i)) for i in range(len(dataset))])
        self.t = build_trainer(c, dataset, torch.device("cpu"))
        data = make_data_iterator(dataclasses.replace(c, batch_gpu=c.batch_size), dataset, 0, torch.device("cpu"))
        self.batches = [next(data) for _ in range(steps)]  # Each step's images [batch, C, H, W] and labels.
        self.collector = training_stats.Collector(regex=".*")

    def rounds(self, step: int, batch_gpu: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The step's images in rounds of `batch_gpu`: for one process what the loader gives at that batch_gpu."""
        images, labels = self.batches[step]
        return list(zip(images.split(batch_gpu), labels.split(batch_gpu), strict=True))

    def steps(self, count: int) -> None:
        """`count` training steps at the trainer's batch_gpu, which train_step may lower."""
        for _ in range(count):
            train_step(self.t, self.c, self.rounds(self.t.progress.step, self.t.batch_gpu), self.labels)

    def state(self) -> dict:
        """A copy of the training state, with the statistics reported since the start (count, mean and std of each);
        take it before another run reports."""
        self.collector.update()
        return copy.deepcopy({**self.t.state_dict(), "stats": self.collector.as_dict()})


def state_lowered_at(c: TrainingConfig, steps: int, at_step: int, batch_gpu: int) -> dict:
    """The state after `steps` steps whose batch_gpu is lowered to `batch_gpu` from step `at_step` on."""
    reference = Run(c, steps=steps)
    reference.steps(at_step)
    reference.t.batch_gpu = batch_gpu
    reference.steps(steps - at_step)
    return reference.state()


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts and lists as {path: leaf}."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}/{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}/{i}").items()}
    return {prefix: value}


def assert_identical(a: dict, b: dict, skip: tuple[str, ...] = ()) -> None:
    """Every tensor bit-identical (torch.equal) and every other value equal, except paths starting with `skip`.

    The statistics' means and standard deviations are compared to 1e-12: the shared recorder's running sums, from
    which a collector takes its interval's difference, differ between runs in the last bits.
    """
    a, b = flatten(a), flatten(b)
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith(skip):
            continue
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif key.startswith("/stats/") and not key.endswith("/num"):
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12, nan_ok=True), key
        else:
            assert a[key] == b[key], key


def reference_step(run: Run, batch_gpu_of: dict[Phase, int]) -> None:
    """train_step with each phase's rounds of the size `batch_gpu_of` gives: the comparison for an error in a phase
    other than the step's first, built from run_phase directly rather than through the halving code."""
    t, c = run.t, run.c
    for index, runner in enumerate(t.phases):
        if t.progress.step % runner.interval == 0:
            rounds = run.rounds(t.progress.step, batch_gpu_of[runner.phase])
            assert run_phase(runner, index, t.loss, rounds, run.labels, t.G.z_dim, c, t.progress)
    if t.ada is not None:
        t.ada.after_step(t.progress.step, c.batch_size)
    t.ema.update(t.G, t.progress.cur_nimg, c.batch_size)
    t.progress.cur_nimg += c.batch_size
    t.progress.step += 1


# ----------------------------------------------------------------------------
# Candidates and options.


def test_candidates_and_the_next_smaller_batch_gpu():
    assert batch_gpu_candidates(32, 4) == [32, 16, 8, 4]
    assert batch_gpu_candidates(24, 4) == [24, 12, 8, 4]
    assert batch_gpu_candidates(12, 8) == []
    assert batch_memory.smaller_batch_gpu(16, 4) == 8
    assert batch_memory.smaller_batch_gpu(12, 4) == 4  # 6 is not a multiple of the group.
    assert batch_memory.smaller_batch_gpu(60, 4) == 20  # Divides 60 (24 would not).
    assert batch_memory.smaller_batch_gpu(4, 4) is None
    assert batch_memory.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert batch_memory.is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublas"))
    assert not batch_memory.is_out_of_memory(RuntimeError("shape mismatch"))


def test_the_option_accepts_auto_and_refuses_what_cannot_work(tmp_path, shapes8):
    c = make_config(tmp_path, shapes8, "--batch=32", "--batch-gpu=auto")
    assert c.batch_gpu_auto and c.batch_gpu == 32 and make_config(tmp_path, shapes8, "--batch=32").batch_gpu == 32
    assert not make_config(tmp_path, shapes8, "--batch=32", "--batch-gpu=8").batch_gpu_auto
    with pytest.raises(ConfigError, match="--batch-gpu=auto chooses a divisor of --batch / --gpus = 12"):
        validate(dataclasses.replace(c, batch_size=24, gpus=2, batch_gpu=12, mbstd_group=8))
    args = [f"--outdir={tmp_path}", f"--data={shapes8}", *TINY, "--gpus=1", "--batch=32", "--dry-run"]
    result = CliRunner().invoke(train.main, [*args, "--batch-gpu=auto"])
    assert result.exit_code == 0 and "--batch-gpu=auto: at most 32 per GPU" in result.output, result.output
    result = CliRunner().invoke(train.main, [*args, "--batch-gpu=some"])
    assert result.exit_code == 2 and "Invalid value for '--batch-gpu'" in result.output


# ----------------------------------------------------------------------------
# Halving during training.


@pytest.mark.parametrize("where", ["start", "end"])
def test_halving_in_the_first_phase_equals_the_lower_batch_gpu_from_that_step(tmp_path, shapes8, monkeypatch, where):
    c = make_config(tmp_path, shapes8, "--batch=16", "--batch-gpu=auto")
    expected = state_lowered_at(c, steps=6, at_step=2, batch_gpu=8)

    monkeypatch.setenv(INJECT, f"2:Gmain:8:{where}")
    run = Run(c, steps=6)
    run.steps(6)
    assert run.t.batch_gpu == 8 and run.t.progress.step == 6 and run.t.progress.cur_nimg == 6 * 16  # No step lost.
    assert_identical(run.state(), expected)


@pytest.mark.parametrize("phase, step", [(Phase.Greg, 4), (Phase.Dmain, 5)])
def test_halving_in_a_later_phase_undoes_its_effects(tmp_path, shapes8, monkeypatch, phase, step):
    # The error comes after the phase's whole accumulation ("end"): its gradients, the path length mean (Greg), the
    # pending signs for ADA (Dmain; the last ADA update was at step 4, so step 5's are still pending at the end),
    # w_avg (Dmain) and the reported statistics must all be undone before the phase is redone.
    c = make_config(tmp_path, shapes8, "--batch=16", "--batch-gpu=auto")
    order = [Phase.Gmain, Phase.Greg, Phase.Dmain, Phase.Dreg]  # The stylegan2 preset's phases.
    reference = Run(c, steps=6)
    reference.steps(step)
    reference_step(reference, {p: 16 if order.index(p) < order.index(phase) else 8 for p in order})
    reference.t.batch_gpu = 8
    reference.steps(5 - step)
    expected = reference.state()

    monkeypatch.setenv(INJECT, f"{step}:{phase.value}:8:end")
    run = Run(c, steps=6)
    run.steps(6)
    assert run.t.batch_gpu == 8 and run.t.progress.step == 6
    state = run.state()
    assert state["stats"]["Loss/D/loss"]["num"] == 6 * 16  # Every image's loss counted once.
    assert float(state["ada"]["real_signs"][1]) == 16  # Step 5's, pending since the ADA update ending step 4.
    assert_identical(state, expected)


def test_halving_twice_in_one_step_and_refusing_when_it_cannot(tmp_path, shapes8, monkeypatch):
    c = make_config(tmp_path, shapes8, "--batch=16", "--batch-gpu=auto")
    expected = state_lowered_at(c, steps=2, at_step=0, batch_gpu=4)
    monkeypatch.setenv(INJECT, "0:Gmain:4:start")  # 16 and 8 fail: split into 2, then into 4 rounds.
    run = Run(c, steps=2)
    run.steps(2)
    assert run.t.batch_gpu == 4
    assert_identical(run.state(), expected)

    monkeypatch.setenv(INJECT, "0:Gmain:2:start")
    run = Run(c, steps=1)
    with pytest.raises(TrainingStopped, match=r"4 per GPU, the least that --mbstd-group=4 allows\. Lower --mbstd"):
        run.steps(1)


# ----------------------------------------------------------------------------
# The probe.


class FakeGauge:
    """Stands in for CudaMemory: 1 GB available, and the peaks given, one per candidate that ran."""

    def __init__(self, peaks: list[float]):
        self.peaks = list(peaks)

    def reset(self) -> None:
        pass

    def peak_bytes(self) -> int:
        return int(self.peaks.pop(0) * 1e9)

    def available_bytes(self) -> int:
        return int(1e9)


def test_probe_chooses_the_largest_that_fits_and_changes_nothing(tmp_path, shapes8, monkeypatch):
    c = make_config(tmp_path, shapes8, "--batch=16", "--batch-gpu=auto")
    expected = state_lowered_at(c, steps=3, at_step=0, batch_gpu=4)

    # 16 runs out of memory in its last phase (after the others changed the loss, buffers and statistics); 8 runs
    # but needs 90 % with Adam's state (under 1 % here); 4 fits.
    monkeypatch.setenv(INJECT, "0:Dreg:8:end")
    run = Run(c, steps=3)
    recorder = training_stats.default_recorder
    before, rng = copy.deepcopy(run.t.state_dict()), torch.get_rng_state()
    stats_before = {name: recorder.cumulative(name) for name in recorder.names()}
    image_shape = tuple(run.batches[0][0].shape[1:])
    result = batch_memory.probe_batch_gpu(run.t, c, run.labels, image_shape, FakeGauge([0.9, 0.5]))
    assert result.batch_gpu == 4 and result.tried == ["16 out of memory", "8 needs 90%", "4 needs 50%"]
    assert_identical(run.t.state_dict(), before)
    assert torch.equal(torch.get_rng_state(), rng)
    assert recorder.names() == list(stats_before)
    for name, moments in stats_before.items():
        assert torch.equal(recorder.cumulative(name), moments), name
    assert all(p.grad is None and not p.requires_grad for p in [*run.t.G.parameters(), *run.t.D.parameters()])

    run.t.batch_gpu = result.batch_gpu
    run.steps(3)
    assert_identical(run.state(), expected)


def test_probe_reports_when_nothing_fits(tmp_path, shapes8, monkeypatch):
    c = make_config(tmp_path, shapes8, "--batch=16", "--batch-gpu=auto")
    monkeypatch.setenv(INJECT, "0:any:0:start")
    run = Run(c, steps=1)
    result = batch_memory.probe_batch_gpu(run.t, c, run.labels, (3, 8, 8), FakeGauge([]))
    assert result.batch_gpu is None and result.tried == ["16 out of memory", "8 out of memory", "4 out of memory"]


# ----------------------------------------------------------------------------
# Whole runs through train.py: the training loop, the files, continuing, two processes.


def invoke_train(outdir: Path, data: Path, *args: str) -> str:
    """Run train.py in this process; returns its output."""
    argv = [f"--outdir={outdir}", f"--data={data}", *TINY, "--gpus=1", "--batch=16", "--tick=0.032", *args]
    result = CliRunner().invoke(train.main, argv)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_a_run_halved_at_its_first_step_equals_the_lower_batch_gpu_and_continues(tmp_path, shapes8, monkeypatch):
    invoke_train(tmp_path / "eight", shapes8, "--kimg=0.08", "--batch-gpu=8")
    monkeypatch.setenv(INJECT, "0:Gmain:8:end")
    output = invoke_train(tmp_path / "auto", shapes8, "--kimg=0.08", "--batch-gpu=auto")
    assert "out of memory in Gmain at kimg 0 with 16 per GPU; 8 per GPU x 2 rounds from now on" in output
    skip = ("/progress/elapsed_sec",)
    assert_identical(final_state(tmp_path / "auto"), final_state(tmp_path / "eight"), skip)
    [run_dir] = (tmp_path / "auto").iterdir()
    options = json.loads((run_dir / "training_options.json").read_text())
    assert options["batch_gpu"] == 8 and options["batch_gpu_auto"] is True
    log = (run_dir / "log.txt").read_text()
    assert "--batch-gpu=auto: 16 per GPU x 1 rounds (batch/gpus: on the CPU there is no out-of-memory" in log
    assert "8 per GPU x 2 rounds from now on" in log
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [s["Progress/batch_gpu"]["mean"] for s in stats] == [8, 8, 8]

    # Continued without the injected errors, the run keeps 8 from its training state (16 would fit now) and ends as
    # the uninterrupted one: the same command, --batch-gpu=auto included, is accepted.
    invoke_train(tmp_path / "split", shapes8, "--kimg=0.048", "--batch-gpu=auto")
    monkeypatch.delenv(INJECT)
    output = invoke_train(tmp_path / "split", shapes8, "--kimg=0.08", "--batch-gpu=auto", "--resume=latest")
    assert "--batch-gpu=auto: 8 per GPU x 2 rounds (kept from the training state)" in output
    assert_identical(final_state(tmp_path / "split"), final_state(tmp_path / "auto"), skip)


def run_script(*args: str, cwd: Path, inject: str) -> str:
    """Run train.py in a fresh interpreter with these injected errors; returns what it printed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **{INJECT: inject})
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_two_processes_agree_when_one_runs_out_of_memory(tmp_path, shapes8):
    # Rank 1 alone fails at the start of Greg, before the path length all-reduce that rank 0 is already waiting in:
    # it joins that collective, both agree, and both redo Greg at 4 per GPU. One process halving the same phases
    # (Gmain 16 -> 8, Greg 8 -> 4) pairs every seed with the same images; only the order of float additions differs.
    # Augmentation at a fixed p = 0.5 draws from each chunk's seed for its reals: a seed paired with other images
    # would show.
    common = [
        f"--data={shapes8}",
        *TINY,
        "--aug=fixed",
        "--p=0.5",
        "--batch=16",
        "--batch-gpu=auto",
        "--kimg=0.064",
        "--tick=1",
        "--timeout-min=1",
    ]
    two = run_script(f"--outdir={tmp_path / 'two'}", *common, "--gpus=2", cwd=tmp_path, inject="0:Greg:4:start:1")
    assert two.count("--batch-gpu=auto: out of memory in Greg at kimg 0 with 8 per GPU; 4 per GPU") == 1, two
    run_script(
        f"--outdir={tmp_path / 'one'}", *common, "--gpus=1", cwd=tmp_path, inject="0:Gmain:8:start,0:Greg:4:start"
    )
    a, b = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    assert a["batch_gpu"] == b["batch_gpu"] == 4 and a["progress"]["step"] == b["progress"]["step"] == 4
    for net in ["G", "D", "G_ema"]:
        for name in a[net]:
            torch.testing.assert_close(a[net][name], b[net][name], atol=1e-6, rtol=1e-5, msg=f"{net}.{name}")
