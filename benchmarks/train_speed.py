"""Training speed with the CUDA kernels on and off: seconds per kimg and peak GPU memory over a few ticks.

Each run is real training through train.py (a subprocess, so GANFORGE_CUDA_OPS takes effect from the start) on
the demo:shapes dataset, made once at the requested resolution in a temporary folder. The figures are the
training loop's own tick statistics (stats.jsonl). The first two ticks are the warm-up and are not timed: tick 0 is
a single step (start-up, kernel builds), tick 1 holds the first run of every phase (cuDNN autotuning for the
regularization passes). Their peak memory is reported separately as the start-up peak.

Examples:

    # The issue's configurations on one GPU.
    python -m benchmarks.train_speed --cfg=stylegan3-t --resolution=256 --batch=32 --batch-gpu=16 --ticks=4

    # A smoke test on the CPU (the kernels need a GPU, so both rows run the reference ops).
    python -m benchmarks.train_speed --cfg=stylegan2 --resolution=32 --batch=4 --batch-gpu=4 --ticks=2 \
        --tick-kimg=0.008 --cbase=512 --cmax=32 --max-images=16
"""

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import torch

from dnnlib.util import FiniteFloatRange
from training.config import PRESETS
from training.run_log import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
WARMUP_TICKS = 2  # Tick 0 is one step; tick 1 holds the first run of every phase (cuDNN autotuning, builds).


@dataclasses.dataclass(frozen=True)
class SpeedRun:
    """One timed training run: the train.py options both trainers share."""

    cfg: str
    resolution: int = 256
    batch: int = 32  # Total batch size.
    batch_gpu: int = 16  # Images per forward pass.
    gamma: float = 1.0  # R1 weight.
    kimg: float = 2.0  # Training length, in kimg.
    tick_kimg: float = 1.0  # Tick length, in kimg.
    cbase: int = 32768
    cmax: int = 512
    workers: int = 3  # DataLoader worker processes.
    fp32: bool = False

    def train_args(self, data: Path, outdir: Path) -> list[str]:
        """train.py arguments, accepted by ours and by the published trainers alike."""
        return [
            f"--outdir={outdir}",
            f"--cfg={self.cfg}",
            f"--data={data}",
            "--gpus=1",
            f"--batch={self.batch}",
            f"--batch-gpu={self.batch_gpu}",
            f"--gamma={self.gamma:g}",
            f"--kimg={self.kimg:g}",
            f"--tick={self.tick_kimg:g}",
            "--snap=1000",
            "--metrics=none",
            f"--workers={self.workers}",
            f"--cbase={self.cbase}",
            f"--cmax={self.cmax}",
            f"--fp32={self.fp32}",
        ]


@dataclasses.dataclass(frozen=True)
class SpeedResult:
    """What one run's stats.jsonl says about speed and memory."""

    sec_per_kimg: float  # Mean over the steady ticks.
    steady_gb: float  # Largest peak GPU memory of a steady tick.
    startup_gb: float  # Largest peak GPU memory of the warm-up ticks.
    steady_ticks: int  # How many ticks the figures average (0: the run never got past warm-up).


def make_dataset(folder: Path, resolution: int, max_images: int) -> Path:
    """Render demo:shapes at resolution x resolution into a zip in `folder`."""
    dest = folder / f"shapes-{resolution}.zip"
    cmd = [sys.executable, "dataset_tool.py", "--source=demo:shapes", f"--dest={dest}"]
    cmd += [f"--resolution={resolution}x{resolution}", f"--max-images={max_images}"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return dest


def read_ticks(outdir: Path) -> list[dict]:
    """Every tick's statistics from the one run directory under `outdir` (empty if there is none yet)."""
    paths = sorted(outdir.glob("*/stats.jsonl"))
    if not paths:
        return []
    return read_jsonl(str(paths[-1]))


def summarize(ticks: list[dict]) -> SpeedResult:
    """Seconds per kimg and peak memory, leaving out the warm-up ticks (see WARMUP_TICKS).

    With no tick past the warm-up, the last tick stands in for the steady state and steady_ticks is 0.
    """
    if not ticks:
        raise ValueError("the run reported no tick")
    steady = ticks[WARMUP_TICKS:]
    timed = steady or ticks[-1:]

    def mean(tick: dict, key: str) -> float:
        return tick.get(key, {"mean": 0.0})["mean"]

    return SpeedResult(
        sec_per_kimg=sum(mean(t, "Timing/sec_per_kimg") for t in timed) / len(timed),
        steady_gb=max(mean(t, "Resources/peak_gpu_mem_gb") for t in timed),
        startup_gb=max(mean(t, "Resources/peak_gpu_mem_gb") for t in ticks[:WARMUP_TICKS]),
        steady_ticks=len(steady),
    )


def train(data: Path, outdir: Path, run: SpeedRun, kernels: bool) -> SpeedResult:
    """Train ours per `run` with the kernels on or off and summarize its ticks."""
    env = dict(os.environ, GANFORGE_CUDA_OPS="1" if kernels else "0")
    cmd = [sys.executable, "train.py", *run.train_args(data, outdir)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return summarize(read_ticks(outdir))


@click.command(context_settings=dict(max_content_width=120))
@click.option(
    "--cfg",
    metavar="STR",
    type=click.Choice(list(PRESETS)),
    default="stylegan3-t",
    show_default=True,
    help="Configuration.",
)
@click.option(
    "--resolution",
    metavar="INT",
    type=click.IntRange(min=4),
    default=256,
    show_default=True,
    help="Image resolution (a power of two).",
)
@click.option(
    "--batch", metavar="INT", type=click.IntRange(min=1), default=32, show_default=True, help="Total batch size."
)
@click.option(
    "--batch-gpu",
    metavar="INT",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Batch size per forward pass.",
)
@click.option(
    "--gamma", metavar="FLOAT", type=FiniteFloatRange(min=0), default=1.0, show_default=True, help="R1 weight."
)
@click.option(
    "--ticks",
    metavar="INT",
    type=click.IntRange(min=2),
    default=4,
    show_default=True,
    help="Ticks per run after tick 0; the first is warm-up, not timed.",
)
@click.option(
    "--tick-kimg",
    metavar="KIMG",
    type=FiniteFloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Tick length.",
)
@click.option(
    "--cbase",
    metavar="INT",
    type=click.IntRange(min=1),
    default=32768,
    show_default=True,
    help="Capacity multiplier (train.py --cbase); small values make a CPU smoke test quick.",
)
@click.option(
    "--cmax",
    metavar="INT",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Max. feature maps (train.py --cmax).",
)
@click.option(
    "--max-images",
    metavar="INT",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Images in the synthetic dataset.",
)
def main(ticks: int, max_images: int, **opts) -> None:
    """Time real training with the CUDA kernels off (reference ops) and on, and print a table."""
    if not torch.cuda.is_available():
        print("No CUDA GPU: both rows run the reference ops on the CPU (a smoke test, not a benchmark).")
    run = SpeedRun(kimg=ticks * opts["tick_kimg"], **opts)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp, run.resolution, max_images)
        rows = []
        for kernels in (False, True):
            outdir = tmp / f"runs-{int(kernels)}"
            outdir.mkdir()
            rows.append((kernels, train(data, outdir, run, kernels)))
    print(
        f"\n{run.cfg} {run.resolution}x{run.resolution}, batch {run.batch}, batch-gpu {run.batch_gpu}, "
        f"ticks 0-{ticks} of {run.tick_kimg:g} kimg, ticks 0-{WARMUP_TICKS - 1} not timed"
    )
    print(f"{'ops':<10} {'sec/kimg':>10} {'steady GB':>10} {'start-up GB':>12}")
    for kernels, r in rows:
        print(f"{'cuda' if kernels else 'ref':<10} {r.sec_per_kimg:>10.2f} {r.steady_gb:>10.2f} {r.startup_gb:>12.2f}")


if __name__ == "__main__":
    main()
