"""Packing speed and memory: our dataset_tool.py against the published StyleGAN3 one on the same work.

Makes a deterministic folder of synthetic photo-like PNGs (a smooth random colour field plus sensor-like noise,
so PNG compresses them about as well as photographs), then packs it into a zip at --resolution with each tool,
alternating ours and theirs, --runs times each, every run a fresh process. Prints the median and every run's
wall time, peak memory and output size. The published tool runs as its own program from .peer/stylegan3 with
PYTHONPATH pointing there, so that our installed `training` package cannot stand in for theirs; without that
folder only ours runs.

Memory and CPU time are sampled every 50 ms over the whole process tree (the tool and its worker processes):
"tree" is the largest sum of their proportional set sizes (PSS: a page shared by n processes counts 1/n in
each, so the sum is the memory the tree really holds; resident size where PSS is unavailable), "largest" the
largest resident size of one process, and "CPU" the user plus system time of all of them (the last 50 ms of
each process may be missed). CPU time hardly depends on what else the machine runs; wall time does.

--encoders times only the PNG encoding of the output images (one process, CPU time), at each level with our
encoder and with Pillow's, on the same images resized to --resolution.

Examples:

    # The issue's figures: 400 PNGs of 512x512 to 256x256, 3 runs each.
    python -m benchmarks.dataset_pack --runs=3

    # Ours at another compression level and worker count, against a checkout of an older version.
    python -m benchmarks.dataset_pack --ours-args="--compress-level=0 --workers=1" --ours=/tmp/ganforge-old --no-peer

    # PNG encoding alone: milliseconds and KiB per image at each level.
    python -m benchmarks.dataset_pack --encoders
"""

from __future__ import annotations

import io
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import PIL.Image
import psutil

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / ".peer" / "stylegan3"
SAMPLE_INTERVAL_S = 0.05  # Memory sampling period; streaming tools hold steady memory, so short spikes are rare.
MIB = 1 << 20


def synthetic_photo(index: int, size: int) -> np.ndarray:
    """Image `index`: uint8 [size, size, 3], a smooth colour field from an 8x8 random grid plus noise of sigma 6."""
    rng = np.random.default_rng(index)
    coarse = PIL.Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((size, size), PIL.Image.Resampling.BICUBIC), dtype=np.float64)
    return np.clip(smooth + rng.normal(0, 6, size=smooth.shape), 0, 255).astype(np.uint8)


def make_source(folder: Path, count: int, size: int) -> Path:
    """Write `count` synthetic PNGs of size x size into `folder`/src-COUNTxSIZE once; reuse it afterwards."""
    source = folder / f"src-{count}x{size}"
    if source.is_dir():
        return source
    folder.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{source.name}.tmp-", dir=folder))  # Renamed into place when complete.
    try:
        for index in range(count):
            PIL.Image.fromarray(synthetic_photo(index, size)).save(partial / f"{index:06d}.png")
        partial.rename(source)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return source


@dataclass(frozen=True)
class Run:
    """What one run of a tool took."""

    wall_s: float  # From start to exit of the tool's process.
    cpu_s: float  # User plus system time of the tool and its child processes.
    tree_mib: float  # Largest sum of proportional set sizes (PSS) over the tool and its child processes.
    largest_rss_mib: float  # Largest resident memory of any one of those processes.
    output_bytes: int  # Size of the zip it wrote.


def sample_tree(process: psutil.Process, cpu_by_pid: dict[int, float]) -> tuple[int, int]:
    """(sum of PSS, largest RSS) in bytes over `process` and its descendants; record each one's CPU seconds."""
    total, largest = 0, 0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
            cpu_by_pid[member.pid] = times.user + times.system
            memory = member.memory_full_info()  # Reads /proc/PID/smaps_rollup on Linux.
        except psutil.Error:  # It exited between the listing and the reading.
            continue
        total += getattr(memory, "pss", memory.rss)
        largest = max(largest, memory.rss)
    return total, largest


def measure(cmd: list[str], cwd: Path, env: dict[str, str], dest: Path) -> Run:
    """Run `cmd` (which writes `dest`) in a fresh process tree and measure it; raise with its output if it fails."""
    dest.unlink(missing_ok=True)
    cpu_by_pid: dict[int, float] = {}
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        process = psutil.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak_sum = peak_one = 0
        while process.poll() is None:
            total, largest = sample_tree(process, cpu_by_pid)
            peak_sum, peak_one = max(peak_sum, total), max(peak_one, largest)
            time.sleep(SAMPLE_INTERVAL_S)
        wall = time.perf_counter() - start
        if process.returncode != 0:
            log.seek(0)
            tail = log.read().decode("utf-8", "replace")[-3000:]
            raise click.ClickException(f"{shlex.join(cmd)} (in {cwd}) failed with code {process.returncode}:\n{tail}")
    return Run(wall, sum(cpu_by_pid.values()), peak_sum / MIB, peak_one / MIB, dest.stat().st_size)


def describe(name: str, runs: list[Run]) -> str:
    """One table row: medians, then every run's wall time."""
    each = ", ".join(f"{run.wall_s:.1f}" for run in runs)
    return (
        f"{name:<10} {statistics.median(r.wall_s for r in runs):>7.1f} "
        f"{statistics.median(r.cpu_s for r in runs):>6.1f} "
        f"{statistics.median(r.tree_mib for r in runs):>9.0f} "
        f"{statistics.median(r.largest_rss_mib for r in runs):>12.0f} "
        f"{runs[0].output_bytes / MIB:>8.1f}   {each}"
    )


def time_encoders(source: Path, resolution: int, count: int = 100) -> None:
    """Print CPU milliseconds and KiB per image for our encode_png and Pillow's encoder at levels 0, 1, 6 and 9."""
    from training.dataset_tool.png import encode_png  # Imported here: only --encoders needs it.

    images = []
    for path in sorted(source.iterdir())[:count]:
        with PIL.Image.open(path) as image:
            images.append(image.resize((resolution, resolution), PIL.Image.Resampling.LANCZOS))

    def pillow(image: PIL.Image.Image, level: int) -> bytes:
        """Pillow's PNG encoder, as dataset_tool.py used at every level before."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()

    print(f"PNG encoding of {len(images)} images of {resolution}x{resolution}, CPU time per image:")
    print(f"  {'encoder':<10} {'level':>5} {'ms':>6} {'KiB':>7}")
    for name, encode in [("ours", encode_png), ("pillow", pillow)]:
        for level in (0, 1, 6, 9):
            start = time.process_time()
            sizes = [len(encode(image, level)) for image in images]
            elapsed = (time.process_time() - start) / len(images)
            print(f"  {name:<10} {level:>5} {elapsed * 1000:>6.2f} {statistics.mean(sizes) / 1024:>7.1f}")


@click.command(context_settings={"show_default": True, "max_content_width": 110})
@click.option("--runs", metavar="INT", type=click.IntRange(min=1), default=3, help="Runs of each tool.")
@click.option("--images", metavar="INT", type=click.IntRange(min=1), default=400, help="Source images.")
@click.option("--source-size", metavar="INT", type=click.IntRange(min=8), default=512, help="Source side, pixels.")
@click.option("--resolution", metavar="INT", type=click.IntRange(min=4), default=256, help="Output side, pixels.")
@click.option(
    "--workdir",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=ROOT / "datasets" / "pack-benchmark",
    help="Where the source folder is kept between runs and the zips are written.",
)
@click.option(
    "--ours",
    metavar="DIR",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=ROOT,
    help="Root of the checkout whose dataset_tool.py runs as 'ours' (an older one, to measure a change).",
)
@click.option("--ours-args", metavar="TEXT", default="", help="Extra options for our tool, e.g. '--workers=1'.")
@click.option("--no-peer", is_flag=True, help="Run only ours, even where .peer/stylegan3 exists.")
@click.option("--encoders", is_flag=True, help="Time only the PNG encoders at each level, then stop.")
def main(
    runs: int,
    images: int,
    source_size: int,
    resolution: int,
    workdir: Path,
    ours: Path,
    ours_args: str,
    no_peer: bool,
    encoders: bool,
) -> None:
    """Time and measure our dataset packing against the published tool's, alternating runs."""
    print(f"Making (or reusing) {images} synthetic {source_size}x{source_size} PNGs in {workdir} ...")
    source = make_source(workdir, images, source_size).resolve()
    if encoders:
        time_encoders(source, resolution)
        return
    size_arg = f"--resolution={resolution}x{resolution}"
    ours = ours.resolve()
    tools = {
        "ours": (
            [sys.executable, "dataset_tool.py", f"--source={source}", size_arg, *shlex.split(ours_args)],
            ours,
            dict(os.environ, PYTHONPATH=str(ours)),
        )
    }
    if no_peer:
        print("Running ours only (--no-peer).")
    elif (PEER / "dataset_tool.py").is_file():
        tools["published"] = (
            [sys.executable, "dataset_tool.py", f"--source={source}", size_arg],
            PEER,
            dict(os.environ, PYTHONPATH=str(PEER)),
        )
    else:
        print(f"The published tool is absent ({PEER / 'dataset_tool.py'} does not exist): running ours only.")

    results: dict[str, list[Run]] = {name: [] for name in tools}
    for run_index in range(runs):
        for name, (cmd, cwd, env) in tools.items():  # Alternating, so drifting machine load hits both alike.
            dest = workdir.resolve() / f"{name}.zip"
            run = measure([*cmd, f"--dest={dest}"], cwd, env, dest)
            results[name].append(run)
            print(
                f"  run {run_index + 1}/{runs} {name}: {run.wall_s:.1f} s, CPU {run.cpu_s:.1f} s, "
                f"tree {run.tree_mib:.0f} MiB, largest {run.largest_rss_mib:.0f} MiB, "
                f"zip {run.output_bytes / MIB:.1f} MiB, load {os.getloadavg()[0]:.1f}"
            )

    print(
        f"\n{images} PNGs {source_size}x{source_size} -> {resolution}x{resolution} zip, {os.cpu_count()} CPUs, "
        f"median of {runs} runs"
    )
    header = f"{'tool':<10} {'wall s':>7} {'CPU s':>6} {'tree MiB':>9} {'largest MiB':>12} {'zip MiB':>8}"
    print(f"{header}   each run's wall s")
    for name, tool_runs in results.items():
        print(describe(name, tool_runs))
    if len(results) == 2:
        ratio = statistics.median(r.wall_s for r in results["published"]) / statistics.median(
            r.wall_s for r in results["ours"]
        )
        print(f"ours is {ratio:.2f}x as fast as the published tool")


if __name__ == "__main__":
    main()
