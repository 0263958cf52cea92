"""Images per second that ImageFolderDataset delivers through a DataLoader, with pyspng and with Pillow.

    python benchmarks/dataset_loading.py --data=datasets/shapes-64.zip --workers=0,2 --batch=32 --batches=50

Prints one row per (decoder, workers) pair. Build a dataset first with dataset_tool.py.
"""

from __future__ import annotations

import time

import click
import torch

import training.dataset as dataset_module
from torch_utils import misc
from training.dataset import ImageFolderDataset


def measure(path: str, workers: int, batch: int, batches: int) -> float:
    """Images per second over `batches` batches, after one warm-up batch."""
    dataset = ImageFolderDataset(path)
    loader = torch.utils.data.DataLoader(
        dataset, sampler=misc.InfiniteSampler(dataset, seed=0), batch_size=batch, num_workers=workers
    )
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch / (time.perf_counter() - start)


@click.command()
@click.option("--data", metavar="ZIP|DIR", required=True, help="Dataset made by dataset_tool.py.")
@click.option("--workers", metavar="LIST", default="0,2", show_default=True, help="Worker counts to try.")
@click.option("--batch", metavar="INT", type=click.IntRange(min=1), default=32, show_default=True, help="Batch size.")
@click.option("--batches", metavar="INT", type=click.IntRange(min=1), default=50, show_default=True, help="Batches.")
def main(data: str, workers: str, batch: int, batches: int) -> None:
    """Compare PNG decoding speed of pyspng and Pillow through the training data path."""
    decoders = ["pyspng", "pillow"] if dataset_module.pyspng is not None else ["pillow"]
    print(f"{'decoder':<8}  {'workers':>7}  {'images/s':>9}")
    saved = dataset_module.pyspng
    try:
        for decoder in decoders:
            dataset_module.pyspng = saved if decoder == "pyspng" else None
            for num_workers in [int(w) for w in workers.split(",")]:
                print(f"{decoder:<8}  {num_workers:>7}  {measure(data, num_workers, batch, batches):>9.0f}")
    finally:
        dataset_module.pyspng = saved


if __name__ == "__main__":
    main()
