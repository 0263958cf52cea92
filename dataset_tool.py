"""Convert images into a training dataset: a zip (or folder) of same-size square PNGs plus dataset.json.

Reads a folder or zip of images, an LSUN LMDB folder, the CIFAR-10 python tarball, MNIST idx files, or the
built-in `demo:shapes` dataset. See docs/datasets.md. The steps: build and validate the config, open the
source, convert every image into a temporary sibling of --dest, move it into place.

This script is the command line only; the sources, transforms, parallel conversion and writer are in the
package training/dataset_tool/ (its __init__ lists the modules).
"""

from __future__ import annotations

import os
import sys

import click

from torch_utils import stop_signals
from training.dataset_tool.config import ResolutionParam, ToolConfig, validate_config
from training.dataset_tool.convert import DEFAULT_COMPRESS_LEVEL, available_cores, convert
from training.dataset_tool.info import print_dataset_info
from training.dataset_tool.transforms import TRANSFORMS


@click.command(context_settings={"show_default": True, "max_content_width": 110})
@click.option(
    "--source",
    metavar="PATH",
    required=True,
    help="Input: image folder, .zip, LSUN LMDB folder, cifar-10-python.tar.gz, MNIST "
    "train-images-idx3-ubyte.gz, or a drawn demo: demo:shapes (one centred shape) or demo:scenes (shapes anywhere); "
    "4096 images, 64x64 unless --resolution.",
)
@click.option(
    "--dest",
    metavar="PATH",
    default=None,
    help="Output .zip file (PNGs stored as they are) or folder. Required unless --info.",
)
@click.option(
    "--max-images",
    metavar="INT",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after writing this many images (with --info: compute the mean over this many).  [default: all]",
)
@click.option(
    "--transform",
    type=click.Choice(list(TRANSFORMS)),
    default=None,
    help="How to reach --resolution from another aspect ratio: center-crop the square, center-crop "
    "a W:H band and letterbox it (-wide), or pad with black.  [default: plain resize]",
)
@click.option(
    "--resolution",
    metavar="WxH",
    type=ResolutionParam(),
    default=None,
    help="Output size; a power of two, square unless --transform=center-crop-wide.  [default: the first image's size]",
)
@click.option(
    "--channels",
    type=click.Choice(["1", "3"]),
    default=None,
    help="Convert every image to grayscale (luminance) or RGB (gray repeated); alpha is composited over "
    "black.  [default: keep; all images must agree]",
)
@click.option(
    "--workers",
    metavar="INT",
    type=click.IntRange(min=1),
    default=None,
    help="Processes that decode, resize and encode images; the output is the same bytes for any number.  "
    f"[default: one per available core, {available_cores()} here]",
)
@click.option(
    "--compress-level",
    metavar="0-9",
    type=click.IntRange(0, 9),
    default=None,
    help="PNG (zlib) compression level of the output images: 0 stores the pixels uncompressed (largest files, "
    f"cheapest to decode), 9 is the smallest and slowest to write.  [default: {DEFAULT_COMPRESS_LEVEL}]",
)
@click.option("--force", is_flag=True, help="Replace an existing non-empty --dest (only once the new one is complete).")
@click.option("--strict", is_flag=True, help="Fail on an unreadable image instead of skipping and reporting it.")
@click.option("--info", is_flag=True, help="Print what training will see in the dataset at --source; convert nothing.")
def main(
    source: str,
    dest: str | None,
    max_images: int | None,
    transform: str | None,
    resolution: tuple[int, int] | None,
    channels: str | None,
    force: bool,
    strict: bool,
    info: bool,
    workers: int | None,
    compress_level: int | None,
) -> None:
    """Convert images into a training dataset: same-size square PNGs in a zip (or folder) plus dataset.json.

    \b
    Examples:
      # The built-in demo dataset, then what training will see in it:
      python dataset_tool.py --source=demo:shapes --dest=datasets/shapes-64.zip
      python dataset_tool.py --source=datasets/shapes-64.zip --info
    \b
      # Your photos, centre-cropped to 256x256 squares:
      python dataset_tool.py --source=~/photos --dest=datasets/photos-256.zip \\
          --transform=center-crop --resolution=256x256
    \b
      # CIFAR-10 with class labels; MNIST as 32x32 grayscale with labels:
      python dataset_tool.py --source=downloads/cifar-10-python.tar.gz --dest=datasets/cifar10-32.zip
      python dataset_tool.py --source=downloads/train-images-idx3-ubyte.gz --dest=datasets/mnist-32.zip
    \b
      # LSUN cars: a 512x384 centre band, letterboxed onto black 512x512 squares:
      python dataset_tool.py --source=downloads/lsun/car_lmdb --dest=datasets/lsun-car-512.zip \\
          --transform=center-crop-wide --resolution=512x384 --max-images=100000
    \b
      # Smallest files (slower to write), on 8 cores:
      python dataset_tool.py --source=~/photos --dest=datasets/photos-256.zip --resolution=256x256 \\
          --compress-level=9 --workers=8
    """
    cfg = ToolConfig(
        source=source,
        dest=dest,
        max_images=max_images,
        transform=transform,
        resolution=resolution,
        channels=None if channels is None else int(channels),
        force=force,
        strict=strict,
        info=info,
        workers=workers,
        compress_level=compress_level,
    )
    validate_config(cfg)
    if cfg.info:
        print_dataset_info(cfg.source, cfg.max_images)
        return
    # SIGTERM (SLURM, `timeout`, a container stop) and Ctrl-C, to this process or its whole group: the workers drop
    # them, and here they unwind the conversion, which removes its unfinished output.
    try:
        with stop_signals.StopOnSignal():
            convert(cfg)
    except stop_signals.Stopped as stopped:
        if stopped.complete:
            click.echo(f"Received {stopped} as {cfg.dest} was being completed; it is complete.", err=True)
        else:
            existed = os.path.lexists(os.path.expanduser(cfg.dest))
            dest = f"{cfg.dest} is unchanged" if existed else f"nothing was written to {cfg.dest}"
            click.echo(f"Stopped by {stopped}: removed the unfinished output; {dest}.", err=True)
        sys.exit(stopped.status)


if __name__ == "__main__":
    main()
