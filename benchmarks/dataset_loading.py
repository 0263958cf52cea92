"""Does the data loader keep a GPU fed? Images per second needed by training against those the loader delivers.

Needed: the published H100 training rates at 256x256, batch 32 (seconds per 1000 images), turned into images
per second per GPU, and twice that for our target of training twice as fast. Delivered: images per second from
training/dataset.py's ImageFolderDataset (x-flips on, as --mirror=1) through a DataLoader built the way
training/training_loop.py builds it (InfiniteSampler, batch_gpu per batch, persistent workers, prefetch 2), with
each --workers count. Only the loader runs here: in training the main process also drives the GPU.

Without --data, synthetic photo-like 256x256 datasets are packed with dataset_tool.py at each --compress-levels
level (kept in --workdir), which also shows what the PNG compression level costs at training time. For each
dataset the CPU time to read and decode one image in this process (no DataLoader, so the figure hardly depends
on what else the machine runs) and the size per image on disk are printed first.

Examples:

    # The figures in docs/performance.md: levels 0, 1 and 6, workers 1, 2 and 3.
    python -m benchmarks.dataset_loading

    # Your own dataset, and Pillow instead of pyspng.
    python -m benchmarks.dataset_loading --data=datasets/ffhq-256.zip --decoders=pyspng,pillow --workers=2,4,8
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import click
import torch

import training.dataset as dataset_module
from benchmarks.dataset_pack import make_source
from torch_utils import misc
from training.dataset import ImageFolderDataset

ROOT = Path(__file__).resolve().parents[1]
# Published seconds per kimg on one H100 at 256x256, batch 32 (the reference figures).
PUBLISHED_S_PER_KIMG = {"stylegan2": 16.4, "stylegan3-t": 23.4, "stylegan3-r": 31.0, "creps": 25.9}
TARGET_SPEEDUP = 2  # Our goal: train twice as fast as the published code, so the loader must deliver twice as much.


def needed_rate(s_per_kimg: float, speedup: float = 1) -> float:
    """Images per second one GPU consumes when training runs at `s_per_kimg`, sped up `speedup` times."""
    return speedup * 1000 / s_per_kimg


def pack_synthetic(workdir: Path, images: int, level: int) -> Path:
    """A 256x256 dataset of synthetic photos at PNG level `level`, packed with dataset_tool.py once and reused."""
    dest = workdir / f"synthetic-{images}x256-level{level}.zip"
    if not dest.exists():
        source = make_source(workdir, images, 256)
        cmd = [sys.executable, "dataset_tool.py", f"--source={source}", f"--dest={dest}", f"--compress-level={level}"]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return dest


def decode_cost(path: Path) -> tuple[float, float]:
    """(CPU milliseconds to read and decode one image in this process, KiB per image on disk)."""
    dataset = ImageFolderDataset(str(path), xflip=True)
    start = time.process_time()
    for idx in range(len(dataset)):
        dataset[idx]  # noqa: B018 - the read is what is timed
    cpu_ms = (time.process_time() - start) / len(dataset) * 1000
    return cpu_ms, os.path.getsize(path) / len(dataset.image_fnames) / 1024


def measure(path: Path, workers: int, batch: int, batches: int) -> float:
    """Images per second over `batches` batches, after the first (which includes starting the workers)."""
    dataset = ImageFolderDataset(str(path), xflip=True)
    sampler = misc.InfiniteSampler(dataset, rank=0, num_replicas=1, seed=0, block_size=batch)
    loader = torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch,
        num_workers=workers,
        pin_memory=False,  # Training pins only with CUDA; there is no GPU here to copy to.
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=workers > 0,
    )
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches * batch / (time.perf_counter() - start)
    del iterator  # Stops the worker processes before the next measurement starts its own.
    return rate


def print_needed() -> float:
    """Print the needed rates per published configuration; return the largest at the target speed-up."""
    print("Needed per GPU (published H100 s/kimg at 256x256, batch 32):")
    print(f"  {'config':<12} {'s/kimg':>7} {'img/s':>7} {f'at {TARGET_SPEEDUP}x':>7}")
    for name, s_per_kimg in PUBLISHED_S_PER_KIMG.items():
        now, target = needed_rate(s_per_kimg), needed_rate(s_per_kimg, TARGET_SPEEDUP)
        print(f"  {name:<12} {s_per_kimg:>7.1f} {now:>7.1f} {target:>7.1f}")
    return max(needed_rate(s, TARGET_SPEEDUP) for s in PUBLISHED_S_PER_KIMG.values())


@click.command(context_settings={"show_default": True, "max_content_width": 110})
@click.option(
    "--data",
    metavar="ZIP|DIR",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    help="Dataset made by dataset_tool.py; repeat for several.  [default: synthetic sets per --compress-levels]",
)
@click.option("--compress-levels", metavar="LIST", default="0,1,6", help="PNG levels of the synthetic datasets.")
@click.option("--images", metavar="INT", type=click.IntRange(min=1), default=1000, help="Images per synthetic set.")
@click.option(
    "--workdir",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    default=ROOT / "datasets" / "loading-benchmark",
    help="Where the synthetic datasets are kept between runs.",
)
@click.option("--workers", metavar="LIST", default="1,2,3", help="DataLoader worker counts (train.py --workers).")
@click.option("--decoders", metavar="LIST", default="pyspng", help="PNG decoders to try: pyspng, pillow.")
@click.option("--batch", metavar="INT", type=click.IntRange(min=1), default=32, help="Images per batch (batch_gpu).")
@click.option("--batches", metavar="INT", type=click.IntRange(min=1), default=100, help="Batches timed per row.")
def main(
    data: tuple[Path, ...],
    compress_levels: str,
    images: int,
    workdir: Path,
    workers: str,
    decoders: str,
    batch: int,
    batches: int,
) -> None:
    """Print images/s needed per GPU against images/s delivered by the training data loader."""
    worker_counts = [int(w) for w in workers.split(",")]
    decoder_names = [d.strip() for d in decoders.split(",")]
    if "pyspng" in decoder_names and dataset_module.pyspng is None:
        raise click.BadParameter('pyspng is not installed (pip install -e ".[fast]")', param_hint="--decoders")
    if not data:
        data = tuple(pack_synthetic(workdir, images, int(level)) for level in compress_levels.split(","))
    most_needed = print_needed()

    print("\nRead and decode in one process (ImageFolderDataset[i], x-flips), CPU time:")
    print(f"  {'data':<36} {'decoder':<8} {'ms/img':>7} {'KiB/img':>8}")
    saved = dataset_module.pyspng
    try:
        for path in data:
            for decoder in decoder_names:
                dataset_module.pyspng = saved if decoder == "pyspng" else None
                cpu_ms, kib = decode_cost(path)
                print(f"  {path.name:<36} {decoder:<8} {cpu_ms:>7.2f} {kib:>8.1f}")
    finally:
        dataset_module.pyspng = saved

    print(f"\nDelivered (x-flips, batch {batch}, {batches} batches per row, {torch.get_num_threads()} torch threads):")
    print(f"  {'data':<36} {'decoder':<8} {'workers':>7} {'img/s':>7} {'GPUs fed':>15}")
    # torch warns when the workers outnumber the cores; more workers than cores is part of what is measured here.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    enough: dict[tuple[str, str], int | None] = {}  # (data, decoder) -> fewest workers that feed one GPU.
    try:
        for path in data:
            for decoder in decoder_names:
                dataset_module.pyspng = saved if decoder == "pyspng" else None
                enough[path.name, decoder] = None
                for num_workers in worker_counts:
                    rate = measure(path, num_workers, batch, batches)
                    print(f"  {path.name:<36} {decoder:<8} {num_workers:>7} {rate:>7.0f} {rate / most_needed:>15.2f}")
                    if rate >= most_needed and enough[path.name, decoder] is None:
                        enough[path.name, decoder] = num_workers
    finally:
        dataset_module.pyspng = saved

    print(f"\nWorkers per GPU for the most demanding configuration at {TARGET_SPEEDUP}x ({most_needed:.0f} img/s):")
    for (name, decoder), count in enough.items():
        verdict = f"{count}" if count is not None else f"more than {max(worker_counts)}"
        print(f"  {name} with {decoder}: {verdict}")


if __name__ == "__main__":
    main()
