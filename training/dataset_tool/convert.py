"""Converting in parallel: workers decode, transform and encode; the main process reads and writes, in order.

Conversion streams: the main process reads the source in order and hands each image to a pool of worker
processes that decode, transform and encode it; at most IN_FLIGHT_PER_WORKER images per worker are in flight,
and the results are written in source order, so the output is the same bytes whatever --workers is.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from torch_utils import stop_signals
from training.dataset import LABELS_FILE
from training.dataset_tool.config import ToolConfig, is_power_of_two
from training.dataset_tool.png import encode_png
from training.dataset_tool.sources import ImagePayload, Source, SourceItem, UnreadableImage, open_source
from training.dataset_tool.transforms import prepare_image
from training.dataset_tool.writer import DatasetWriter, atomic_dataset_writer

IMAGES_PER_FOLDER = 1000
MAX_SKIPPED_SHOWN = 5  # Unreadable files named in the final summary; each one is also reported as it is met.
# PNG compression of the output images; the measurements behind the choice are in docs/datasets.md.
DEFAULT_COMPRESS_LEVEL = 1
IN_FLIGHT_PER_WORKER = 2  # Images handed to each worker ahead of the writer: one being converted, one queued.
MIN_IMAGES_PER_WORKER = 32  # Fewer images than this per worker convert faster in this process than in a pool.


@dataclass(frozen=True)
class ConvertedImage:
    """One image as a worker returns it: the encoded PNG, or why the source could not be read."""

    png: bytes | None  # The output file; None when the source image was unreadable.
    size: tuple[int, int] | None  # (width, height) of the output image.
    channels: int | None  # 1 or 3.
    error: str | None = None  # The UnreadableImage message when `png` is None.


def convert_image(payload: ImagePayload, name: str, cfg: ToolConfig, compress_level: int) -> ConvertedImage:
    """Decode, transform and encode one image; runs in a worker process. An unreadable source is not an error."""
    try:
        image = payload.decode()
    except UnreadableImage as err:
        return ConvertedImage(None, None, None, str(err))
    image = prepare_image(image, name, cfg)
    return ConvertedImage(encode_png(image, compress_level), image.size, 1 if image.mode == "L" else 3)


def start_conversion(
    submit: Callable[..., concurrent.futures.Future], item: SourceItem, cfg: ToolConfig, compress_level: int
) -> concurrent.futures.Future:
    """Fetch `item` here, in source order, and hand it to the pool; a failed fetch is a finished, failed result."""
    try:
        payload = item.fetch()
    except UnreadableImage as err:
        return finished(ConvertedImage(None, None, None, str(err)))
    return submit(convert_image, payload, item.name, cfg, compress_level)


def finished(value: Any) -> concurrent.futures.Future:
    """A Future that already holds `value`."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(value)
    return future


def run_inline(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """Run `fn(*args)` now, in this process, and return its outcome as a finished Future: a pool of no workers."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(fn(*args))
    except Exception as err:  # Raised again, in order, when the writer takes the result.
        future.set_exception(err)
    return future


def in_order(
    items: Iterable[SourceItem], start: Callable[[SourceItem], concurrent.futures.Future], window: int
) -> Iterator[tuple[SourceItem, concurrent.futures.Future]]:
    """Start items ahead of the consumer and yield (item, future) in item order, never more than `window` started
    and not yet consumed: memory holds at most `window` images whatever the source's length."""
    pending: collections.deque[tuple[SourceItem, concurrent.futures.Future]] = collections.deque()
    try:
        for item in items:
            pending.append((item, start(item)))
            if len(pending) == window:
                yield pending.popleft()
        while pending:
            yield pending.popleft()
    finally:
        for _, future in pending:  # The consumer stopped early (--max-images, an error): drop queued work.
            future.cancel()


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one (containers, taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def image_pool(workers: int) -> Iterator[Callable[..., concurrent.futures.Future]]:
    """Yield `submit(fn, *args) -> Future` running in `workers` processes, or in this one when `workers` is 1."""
    if workers == 1:
        yield run_inline
        return
    # Workers start from a fresh forkserver (spawn where there is none), not a fork of this process: a fork could
    # copy a lock held by another thread (tqdm's monitor), and a worker needs only this package.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    # Ctrl-C and a SIGTERM to the whole group are the main process's to handle (it stops the pool and removes the
    # output): the workers drop them, and end only when the pool ends them.
    executor = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context(method), initializer=stop_signals.worker_init_fn()
    )

    def submit(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        # Workers start on demand: none may receive a signal before it can drop it, nor this process stop midway.
        with stop_signals.blocked(), stop_signals.deferred():
            return executor.submit(fn, *args)

    try:
        yield submit
    except concurrent.futures.process.BrokenProcessPool as err:
        raise click.ClickException(
            f"a worker process died ({err}), perhaps for lack of memory; try fewer --workers"
        ) from err
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def worker_count(cfg: ToolConfig, num_images: int) -> int:
    """--workers (default: one per available core), fewer when there are too few images to pay for a pool."""
    requested = cfg.workers if cfg.workers is not None else available_cores()
    return max(1, min(requested, num_images // MIN_IMAGES_PER_WORKER))


# ----------------------------------------------------------------------------------------------------------------
# The conversion loop.


@dataclass
class ConvertResult:
    """What a conversion wrote and skipped."""

    written: int = 0
    skipped: list[str] = field(default_factory=list)  # Names of unreadable images.
    size: tuple[int, int] | None = None  # (width, height) of every output image.
    channels: int | None = None
    first_name: str | None = None  # The image that fixed `size` and `channels`.


def check_image_shape(size: tuple[int, int], channels: int, name: str, result: ConvertResult) -> None:
    """The first image fixes the output size and channels; refuse any image that differs, or a bad size."""
    if result.size is None:
        width, height = size
        if width != height:
            raise click.ClickException(
                f"{name} is {width}x{height}, not square; training needs square images: pass --resolution=NxN "
                f"with --transform=center-crop (or pad, or center-crop-wide)"
            )
        if not is_power_of_two(width):
            lower = 2 ** int(math.log2(width))
            raise click.ClickException(
                f"{name} is {width}x{height}, not a power of two; pass --resolution (e.g. --resolution={lower}x{lower})"
            )
        result.size, result.channels, result.first_name = size, channels, name
        return
    if size != result.size:
        raise click.ClickException(
            f"{name} is {size[0]}x{size[1]} but {result.first_name} is "
            f"{result.size[0]}x{result.size[1]}; pass --resolution=WxH to bring every image to one size"
        )
    if channels != result.channels:
        raise click.ClickException(
            f"{name} has {channels} channel(s) but {result.first_name} has {result.channels}; "
            f"pass --channels=1 or --channels=3 to convert every image"
        )


def convert_images(source: Source, writer: DatasetWriter, cfg: ToolConfig, workers: int) -> ConvertResult:
    """Convert every source image with `workers` processes, write them in source order, then dataset.json."""
    result = ConvertResult()
    labels: list[list[Any]] = []
    total = source.num_images if cfg.max_images is None else min(source.num_images, cfg.max_images)
    level = DEFAULT_COMPRESS_LEVEL if cfg.compress_level is None else cfg.compress_level
    with image_pool(workers) as submit, tqdm(total=total, unit="img", desc="Converting", dynamic_ncols=True) as bar:
        start = functools.partial(start_conversion, submit, cfg=cfg, compress_level=level)
        for item, future in in_order(source.items, start, window=IN_FLIGHT_PER_WORKER * workers):
            converted = future.result()
            if converted.error is not None:
                if cfg.strict:
                    raise click.ClickException(
                        f"cannot read {converted.error}; fix or remove it (or drop --strict to skip it)"
                    )
                result.skipped.append(item.name)
                bar.write(f"Skipping unreadable image {converted.error}")
                continue
            check_image_shape(converted.size, converted.channels, item.name, result)
            archive_name = f"{result.written // IMAGES_PER_FOLDER:05d}/img{result.written:08d}.png"
            writer.add(archive_name, converted.png)
            labels.append([archive_name, item.label])
            result.written += 1
            bar.update(1)
            if cfg.max_images is not None and result.written >= cfg.max_images:
                break
    if result.written == 0:
        raise click.ClickException(f"--source {cfg.source}: no readable images, nothing written")
    writer.add(LABELS_FILE, json.dumps({"labels": labels if source.has_labels else None}).encode("utf-8"))
    return result


def summary_line(result: ConvertResult, cfg: ToolConfig, has_labels: bool) -> str:
    """One line saying what was written and what was skipped."""
    width, height = result.size
    line = (
        f"Wrote {result.written} images to {cfg.dest}: {width}x{height}, {result.channels} channel(s), "
        f"labels: {'yes' if has_labels else 'no'}; skipped {len(result.skipped)} unreadable"
    )
    if result.skipped:
        shown = ", ".join(result.skipped[:MAX_SKIPPED_SHOWN])
        more = len(result.skipped) - MAX_SKIPPED_SHOWN
        line += f": {shown}" + (f" and {more} more" if more > 0 else "")
    return line


def convert(cfg: ToolConfig) -> None:
    """Convert --source into --dest atomically and print a summary."""
    with open_source(cfg) as source:
        total = source.num_images if cfg.max_images is None else min(source.num_images, cfg.max_images)
        workers = worker_count(cfg, total)
        click.echo(
            f"Reading {source.description}: {source.num_images} images, labels: "
            f"{'yes' if source.has_labels else 'no'}; converting in {workers} process(es)"
        )
        with atomic_dataset_writer(Path(cfg.dest).expanduser(), cfg.force) as writer:
            result = convert_images(source, writer, cfg, workers)
    click.echo(summary_line(result, cfg, source.has_labels))
