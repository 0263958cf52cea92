"""Training speed with the CUDA kernels on and off: seconds per kimg and peak GPU memory over a few ticks.

Each run is real training through train.py (a subprocess, so GANFORGE_CUDA_OPS takes effect from the start) on
the demo:shapes dataset, made once at the requested resolution in a temporary folder. The figures are the
training loop's own tick statistics (stats.jsonl); the first tick, which includes start-up and kernel builds, is
left out.

Examples:

    # The issue's configurations on one GPU.
    python -m benchmarks.train_speed --cfg=stylegan3-t --resolution=256 --batch=32 --batch-gpu=16 --ticks=4

    # A smoke test on the CPU (the kernels need a GPU, so both rows run the reference ops).
    python -m benchmarks.train_speed --cfg=stylegan2 --resolution=32 --batch=4 --batch-gpu=4 --ticks=2 \
        --tick-kimg=0.008 --cbase=512 --cmax=32 --max-images=16
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import torch

from training.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def make_dataset(folder: Path, resolution: int, max_images: int) -> Path:
    """Render demo:shapes at resolution x resolution into a zip in `folder`."""
    dest = folder / f"shapes-{resolution}.zip"
    cmd = [sys.executable, "dataset_tool.py", "--source=demo:shapes", f"--dest={dest}"]
    cmd += [f"--resolution={resolution}x{resolution}", f"--max-images={max_images}"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return dest


def train(data: Path, outdir: Path, opts: dict, kernels: bool) -> list[dict]:
    """Train for opts['ticks'] ticks with the kernels on or off; return the stats of every tick."""
    env = dict(os.environ, GANFORGE_CUDA_OPS="1" if kernels else "0")
    kimg = opts["ticks"] * opts["tick_kimg"]
    cmd = [sys.executable, "train.py", f"--outdir={outdir}", f"--cfg={opts['cfg']}", f"--data={data}", "--gpus=1"]
    cmd += [f"--batch={opts['batch']}", f"--batch-gpu={opts['batch_gpu']}", f"--gamma={opts['gamma']}"]
    cmd += [f"--kimg={kimg}", f"--tick={opts['tick_kimg']}", "--snap=1000000", "--metrics=none", "--workers=1"]
    cmd += [f"--cbase={opts['cbase']}", f"--cmax={opts['cmax']}"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    (run_dir,) = [p for p in outdir.iterdir() if p.is_dir()]
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines() if line.strip()]


def summarize(ticks: list[dict]) -> tuple[float, float]:
    """Mean seconds per kimg over the ticks after the first, and the largest peak GPU memory (GB)."""
    timed = ticks[1:] or ticks
    sec_per_kimg = sum(t["Timing/sec_per_kimg"]["mean"] for t in timed) / len(timed)
    peak_gb = max(t.get("Resources/peak_gpu_mem_gb", {"mean": 0.0})["mean"] for t in ticks)
    return sec_per_kimg, peak_gb


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
    "--gamma", metavar="FLOAT", type=click.FloatRange(min=0), default=1.0, show_default=True, help="R1 weight."
)
@click.option(
    "--ticks",
    metavar="INT",
    type=click.IntRange(min=2),
    default=4,
    show_default=True,
    help="Ticks per run; the first is not timed.",
)
@click.option(
    "--tick-kimg",
    metavar="KIMG",
    type=click.FloatRange(min=0, min_open=True),
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
def main(**opts) -> None:
    """Time real training with the CUDA kernels off (reference ops) and on, and print a table."""
    if not torch.cuda.is_available():
        print("No CUDA GPU: both rows run the reference ops on the CPU (a smoke test, not a benchmark).")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp, opts["resolution"], opts["max_images"])
        rows = []
        for kernels in (False, True):
            outdir = tmp / f"runs-{int(kernels)}"
            outdir.mkdir()
            rows.append((kernels, *summarize(train(data, outdir, opts, kernels))))
    print(
        f"\n{opts['cfg']} {opts['resolution']}x{opts['resolution']}, batch {opts['batch']}, "
        f"batch-gpu {opts['batch_gpu']}, {opts['ticks']} ticks of {opts['tick_kimg']} kimg"
    )
    print(f"{'ops':<10} {'sec/kimg':>10} {'peak GPU GB':>12}")
    for kernels, sec_per_kimg, peak_gb in rows:
        print(f"{'cuda' if kernels else 'ref':<10} {sec_per_kimg:>10.2f} {peak_gb:>12.2f}")


if __name__ == "__main__":
    main()
