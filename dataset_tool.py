"""Convert images into a training dataset: a zip (or folder) of same-size square PNGs plus dataset.json.

Reads a folder or zip of images, an LSUN LMDB folder, the CIFAR-10 python tarball, MNIST idx files, or the
built-in `demo:shapes` dataset. See docs/datasets.md. The steps: build and validate the config, open the
source, convert every image into a temporary sibling of --dest, move it into place.

Conversion streams: the main process reads the source in order and hands each image to a pool of worker
processes that decode, transform and encode it; at most IN_FLIGHT_PER_WORKER images per worker are in flight,
and the results are written in source order, so the output is the same bytes whatever --workers is.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import gzip
import importlib
import io
import json
import math
import multiprocessing
import os
import pickle
import random
import re
import secrets
import shutil
import signal
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import click
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps
from tqdm import tqdm

from training.dataset import (
    IMAGE_EXTENSIONS,
    LABELS_FILE,
    DatasetError,
    ImageFolderDataset,
    has_zip_signature,
    is_hidden,
)

IMAGES_PER_FOLDER = 1000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GRAY, PNG_RGB = 0, 2  # PNG colour types.
PNG_FILTER_NONE, PNG_FILTER_AVERAGE = 0, 3  # PNG row filter types.
EXIF_ORIENTATION = 0x0112  # EXIF tag of the rotation and mirroring that viewers apply.
MAX_SKIPPED_SHOWN = 5  # Unreadable files named in the final summary; each one is also reported as it is met.
# Largest source image file read; a bigger one (or a zip member whose header claims more) is refused unread.
# 256 MiB holds a 30-megapixel 16-bit RGBA TIFF; photos and dataset images are a small fraction of it.
MAX_SOURCE_IMAGE_BYTES = 256 << 20
# PNG compression of the output images; the measurements behind the choice are in docs/datasets.md.
DEFAULT_COMPRESS_LEVEL = 1
IN_FLIGHT_PER_WORKER = 2  # Images handed to each worker ahead of the writer: one being converted, one queued.
MIN_IMAGES_PER_WORKER = 32  # Fewer images than this per worker convert faster in this process than in a pool.

Label = int | list[float] | None  # As stored in dataset.json: a class index or a vector.


class UnreadableImage(Exception):
    """An image file the decoder rejected; skipped unless --strict."""


# ----------------------------------------------------------------------------------------------------------------
# Options and their validation.


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return n > 0 and n & (n - 1) == 0


def parse_resolution(text: str) -> tuple[int, int]:
    """Parse 'WxH' (or 'N', meaning NxN) into (width, height); raise ValueError on bad syntax."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if match is None:
        raise ValueError(f"expected WIDTHxHEIGHT such as 256x256, got {text!r}")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if width == 0 or height == 0:
        raise ValueError(f"width and height must be positive, got {text!r}")
    return width, height


class ResolutionParam(click.ParamType):
    """Click type for --resolution: 'WxH' -> (width, height)."""

    name = "WxH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        """Turn the option text into (width, height), failing with click's usual message."""
        if isinstance(value, tuple):
            return value
        try:
            return parse_resolution(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


@dataclass(frozen=True)
class ToolConfig:
    """Everything one run of the tool does, built from the command line."""

    source: str  # Input path, or a demo name such as 'demo:shapes'.
    dest: str | None  # Output .zip file or folder; None only with `info`.
    max_images: int | None  # Stop after writing this many images; None writes all.
    transform: str | None  # Key of TRANSFORMS; None resizes straight to `resolution`.
    resolution: tuple[int, int] | None  # Output (width, height) in pixels; None keeps the source size.
    channels: int | None  # 1 or 3 to convert every image; None keeps the source's (which must agree).
    force: bool  # Replace an existing non-empty dest.
    strict: bool  # Fail on an unreadable image instead of skipping it.
    info: bool  # Describe the dataset at `source` instead of converting.
    workers: int | None = None  # Processes converting images; None: one per available core (available_cores()).
    compress_level: int | None = None  # zlib level 0-9 of the output PNGs; None: DEFAULT_COMPRESS_LEVEL.


def is_nonempty(path: Path) -> bool:
    """True if `path` is a folder with entries or a non-empty file."""
    if path.is_dir():
        with os.scandir(path) as entries:
            return any(True for _ in entries)
    return path.exists() and path.stat().st_size > 0


def validate_config(cfg: ToolConfig) -> None:
    """Refuse bad option combinations before any work is done."""
    if cfg.info:
        extra = [
            name
            for name, given in [
                ("--dest", cfg.dest is not None),
                ("--transform", cfg.transform is not None),
                ("--resolution", cfg.resolution is not None),
                ("--channels", cfg.channels is not None),
                ("--force", cfg.force),
                ("--strict", cfg.strict),
                ("--workers", cfg.workers is not None),
                ("--compress-level", cfg.compress_level is not None),
            ]
            if given
        ]
        if extra:
            raise click.UsageError(f"--info only reads --source (and --max-images); drop {', '.join(extra)}")
        return

    if cfg.dest is None:
        raise click.UsageError("--dest is required: the output .zip file or folder (or pass --info to inspect)")
    if cfg.transform is not None and cfg.resolution is None:
        raise click.UsageError(f"--transform={cfg.transform} needs an output size: add --resolution=WxH")
    if cfg.resolution is not None:
        width, height = cfg.resolution
        if cfg.transform == "center-crop-wide":
            if height > width:
                raise click.BadParameter(
                    f"{width}x{height}: center-crop-wide letterboxes a wide image, so height must not exceed width",
                    param_hint="--resolution",
                )
        elif width != height:
            raise click.BadParameter(
                f"{width}x{height} is not square; training needs square images "
                f"(or use --transform=center-crop-wide to letterbox a {width}x{height} crop)",
                param_hint="--resolution",
            )
        if not is_power_of_two(width):
            lower = 2 ** int(math.log2(width))
            raise click.BadParameter(
                f"width {width} is not a power of two; training needs one, e.g. {lower}x{lower * height // width}",
                param_hint="--resolution",
            )

    dest = Path(cfg.dest).expanduser()
    if is_nonempty(dest) and not cfg.force:
        raise click.ClickException(f"--dest {dest} already exists and is not empty; pass --force to replace it")
    source = Path(cfg.source).expanduser()
    if source.is_dir() and dest.resolve().is_relative_to(source.resolve()):
        raise click.UsageError(f"--dest {dest} is inside --source {source}; write the dataset somewhere else")


# ----------------------------------------------------------------------------------------------------------------
# Sources: each opener yields a Source whose items are fetched in order by the main process (file reads, zip
# and database lookups) and decoded by a worker, so an unreadable file is reported by name, in order.


class ImagePayload(Protocol):
    """What a worker process receives for one image: picklable, and decoded by `decode()` in the worker."""

    def decode(self) -> PIL.Image.Image:
        """The decoded image; raises UnreadableImage naming the source file if it cannot be decoded."""


@dataclass(frozen=True)
class EncodedImage:
    """The bytes of an image file, read by the main process (a zip member, an LMDB value)."""

    name: str  # Where the image comes from, as shown in messages.
    data: bytes

    def decode(self) -> PIL.Image.Image:
        """Decode the bytes."""
        return decode_image_bytes(self.data, self.name)


@dataclass(frozen=True)
class ImageFile:
    """An image file in a folder, read by the worker that decodes it (which spreads the reads over the pool)."""

    name: str
    path: str

    def decode(self) -> PIL.Image.Image:
        """Read the file (at most MAX_SOURCE_IMAGE_BYTES of it) and decode it."""
        try:
            with open(self.path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size > MAX_SOURCE_IMAGE_BYTES:
                    raise UnreadableImage(too_big_message(self.name, size))
                data = file.read(MAX_SOURCE_IMAGE_BYTES + 1)  # Bounded even if the file grows meanwhile.
        except OSError as err:
            raise UnreadableImage(f"{self.name}: {err}") from err
        if len(data) > MAX_SOURCE_IMAGE_BYTES:
            raise UnreadableImage(too_big_message(self.name, len(data)))
        return decode_image_bytes(data, self.name)


@dataclass(frozen=True)
class Pixels:
    """Decoded pixels (CIFAR-10, MNIST): uint8 [H, W] or [H, W, C]."""

    array: np.ndarray

    def decode(self) -> PIL.Image.Image:
        """Wrap the pixels as an image."""
        return PIL.Image.fromarray(self.array)


@dataclass(frozen=True)
class ShapesScene:
    """Demo image `index` of demo:shapes, drawn at `size` x `size` by the worker."""

    index: int
    size: int

    def decode(self) -> PIL.Image.Image:
        """Draw the scene."""
        return render_shapes_scene(self.index, self.size)[0]


@dataclass(frozen=True)
class SourceItem:
    """One input image; `fetch()` runs in the main process, in source order, and may raise UnreadableImage."""

    name: str  # Where the image comes from, as shown in messages.
    label: Label  # Carried into the output dataset.json.
    fetch: Callable[[], ImagePayload]  # Reads what the main process must (the bytes of a zip member, ...).


@dataclass
class Source:
    """An opened --source."""

    description: str  # What was detected, e.g. 'zip file x.zip'.
    num_images: int  # Images the source holds (before skipping and --max-images).
    has_labels: bool  # Whether items carry labels.
    items: Iterator[SourceItem]


def too_big_message(name: str, size: int) -> str:
    """Why a source file over MAX_SOURCE_IMAGE_BYTES is refused."""
    return (
        f"{name}: {size / 2**20:,.0f} MiB, more than the {MAX_SOURCE_IMAGE_BYTES >> 20} MiB one image file may "
        f"hold (a damaged archive, or an image to shrink before converting)"
    )


def decode_image_bytes(data: bytes, name: str) -> PIL.Image.Image:
    """Fully decode one encoded image; any failure becomes UnreadableImage naming `name`."""
    try:
        try:
            image = PIL.Image.open(io.BytesIO(data))
        except PIL.UnidentifiedImageError as err:  # Its own message names a BytesIO object, not the file.
            raise UnreadableImage(f"{name}: not an image file Pillow can decode") from err
        image.load()  # PIL decodes lazily; force it here so truncated files fail now, not later.
        # Phone photos store their rotation in EXIF; apply it so images look the way viewers show them. Without
        # one, exif_transpose would only copy the image (3% of the conversion time at 512x512).
        if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
            return image
        return PIL.ImageOps.exif_transpose(image)
    except UnreadableImage:
        raise
    except Exception as err:  # Decoders raise OSError, SyntaxError, ValueError, ... depending on the format.
        raise UnreadableImage(f"{name}: {err}") from err


def parse_source_labels(data: bytes, where: str) -> dict[str, Label] | None:
    """Parse a source's dataset.json into {relative path: label}, or None for `"labels": null`."""
    try:
        labels = json.loads(data)["labels"]
        if labels is None:
            return None
        return {str(name).replace("\\", "/"): label for name, label in labels}
    except (ValueError, KeyError, TypeError) as err:
        raise click.ClickException(
            f'{where}: expected {{"labels": [["file name", label], ...]}} or {{"labels": null}} ({err})'
        ) from err


def labelled_items(
    names: list[str],
    labels: dict[str, Label] | None,
    where: str,
    make_fetch: Callable[[str], Callable[[], ImagePayload]],
) -> Iterator[SourceItem]:
    """Check every image has a label (when there are labels) and yield the items in `names` order.

    `where` is the folder or zip; items are named `where/name` in messages.
    """
    if labels is not None:
        missing = [name for name in names if name not in labels]
        if missing:
            raise click.ClickException(
                f"{where}/{LABELS_FILE} has no label for {missing[0]} ({len(missing)} images without one); "
                f"add the missing labels or remove {LABELS_FILE}"
            )
    return (SourceItem(f"{where}/{name}", None if labels is None else labels[name], make_fetch(name)) for name in names)


def is_image_name(relpath: str) -> bool:
    """True for image files, skipping dot files and macOS archive metadata (`__MACOSX/`)."""
    return relpath.lower().endswith(IMAGE_EXTENSIONS) and not is_hidden(relpath)


@contextlib.contextmanager
def open_folder_source(path: Path) -> Iterator[Source]:
    """Images anywhere under a folder, sorted by relative path; labels from its dataset.json."""
    names = sorted(
        rel
        for root, _dirs, files in os.walk(path)
        for fname in files
        if is_image_name(rel := Path(root, fname).relative_to(path).as_posix())
    )
    labels_path = path / LABELS_FILE
    labels = parse_source_labels(labels_path.read_bytes(), str(labels_path)) if labels_path.is_file() else None

    def make_fetch(name: str) -> Callable[[], ImagePayload]:
        """The file's path; the worker reads it."""
        return functools.partial(ImageFile, f"{path}/{name}", str(path / name))

    items = labelled_items(names, labels, str(path), make_fetch)
    yield Source(f"folder {path}", len(names), labels is not None, items)


def read_zip_member(archive: zipfile.ZipFile, member: str, name: str) -> EncodedImage:
    """The bytes of one zip member, refused unread if its header claims more than MAX_SOURCE_IMAGE_BYTES."""
    info = archive.getinfo(member)
    claimed = max(info.file_size, info.compress_size)
    if claimed > MAX_SOURCE_IMAGE_BYTES:
        raise UnreadableImage(too_big_message(name, claimed) + "; its zip header says so, so it was not read")
    try:
        with archive.open(info) as file:
            data = file.read(MAX_SOURCE_IMAGE_BYTES + 1)  # Bounded even if the header lies.
    except Exception as err:  # zipfile raises BadZipFile, zlib.error, EOFError, ... for a damaged member.
        raise UnreadableImage(f"{name}: damaged zip entry ({err})") from err
    if len(data) > MAX_SOURCE_IMAGE_BYTES:
        raise UnreadableImage(too_big_message(name, len(data)))
    return EncodedImage(name, data)


@contextlib.contextmanager
def open_zip_source(path: Path) -> Iterator[Source]:
    """Images in a zip file, sorted by path; labels from dataset.json at its root."""
    try:
        archive = zipfile.ZipFile(path)
    except OSError as err:
        raise click.ClickException(f"--source {path}: cannot read the file: {err}") from err
    except (zipfile.BadZipFile, EOFError, ValueError) as err:  # What the zip reader raises on bad data.
        raise click.ClickException(
            f"--source {path}: the zip file is damaged ({err}), perhaps a truncated download or copy; "
            f"download or copy it again"
        ) from err
    with archive:
        names = sorted(name for name in archive.namelist() if is_image_name(name))
        labels = None
        if LABELS_FILE in archive.namelist():
            try:
                labels_data = read_zip_member(archive, LABELS_FILE, f"{path}/{LABELS_FILE}").data
            except UnreadableImage as err:
                raise click.ClickException(f"cannot read {err}") from err
            labels = parse_source_labels(labels_data, f"{path}/{LABELS_FILE}")

        def make_fetch(name: str) -> Callable[[], ImagePayload]:
            """A reader of one zip member."""
            return functools.partial(read_zip_member, archive, name, f"{path}/{name}")

        items = labelled_items(names, labels, str(path), make_fetch)
        yield Source(f"zip file {path}", len(names), labels is not None, items)


def lmdb_payload(name: str, value: bytes) -> EncodedImage:
    """One LMDB value as an encoded image, refused if over MAX_SOURCE_IMAGE_BYTES."""
    if len(value) > MAX_SOURCE_IMAGE_BYTES:
        raise UnreadableImage(too_big_message(name, len(value)))
    return EncodedImage(name, value)


@contextlib.contextmanager
def open_lmdb_source(path: Path) -> Iterator[Source]:
    """Every value of an LMDB database (the LSUN format) decoded as an image, in key order; no labels."""
    try:
        import lmdb
    except ImportError as err:
        raise click.ClickException(
            f"--source {path} is an LMDB database (LSUN); reading it needs the lmdb package: "
            f'pip install lmdb (or pip install -e ".[lsun]")'
        ) from err
    try:
        # lock=False: the database is only read, and its folder is often on a read-only mount.
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True)
    except lmdb.Error as err:
        raise click.ClickException(f"--source {path}: cannot open the LMDB database: {err}") from err

    def items() -> Iterator[SourceItem]:
        """Walk the database in key order inside one read transaction."""
        with env.begin(write=False) as txn:
            for key, value in txn.cursor():
                name = f"{path}:{key.decode('utf-8', 'replace')}"
                yield SourceItem(name, None, functools.partial(lmdb_payload, name, value))

    item_iter = items()
    try:
        yield Source(f"LSUN LMDB database {path}", env.stat()["entries"], False, item_iter)
    finally:
        item_iter.close()  # End the read transaction before closing the environment it belongs to.
        env.close()


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain Python data, and refuses any other class.

    A tarball from the internet should not be able to run code: plain pickle.load would let it.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # Python 3 pickles of bytes at protocol 2.
    }

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed numpy constructors; raise UnpicklingError for anything else."""
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")
        if module.startswith("numpy.core."):
            # The real CIFAR-10 pickles name numpy.core, which numpy 2 renamed to numpy._core.
            with contextlib.suppress(ImportError):
                return getattr(importlib.import_module("numpy._core." + module.split(".", 2)[2]), name)
        return super().find_class(module, name)


CIFAR10_BATCHES = [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]


@contextlib.contextmanager
def open_cifar10_source(path: Path) -> Iterator[Source]:
    """The 50,000 training images of the CIFAR-10 python tarball, with their class labels."""
    images, labels = [], []
    try:
        with tarfile.open(path) as tar:
            for member in CIFAR10_BATCHES:
                try:
                    file = tar.extractfile(member)
                except KeyError as err:
                    raise click.ClickException(
                        f"--source {path} has no {member}; expected the CIFAR-10 python tarball cifar-10-python.tar.gz"
                    ) from err
                batch = NumpyOnlyUnpickler(file, encoding="latin1").load()
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # Planar RGB rows.
                if len(batch["labels"]) != len(data):
                    raise click.ClickException(
                        f"--source {path}: {member} has {len(data)} images but {len(batch['labels'])} labels"
                    )
                images.append(data.transpose(0, 2, 3, 1))  # [N, C, H, W] -> [N, H, W, C]
                labels.extend(int(label) for label in batch["labels"])
    except (tarfile.TarError, OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
        raise click.ClickException(f"--source {path}: cannot read the CIFAR-10 tarball: {err}") from err
    pixels = np.concatenate(images)
    items = (SourceItem(f"{path}[{i}]", labels[i], functools.partial(Pixels, pixels[i])) for i in range(len(pixels)))
    yield Source(f"CIFAR-10 tarball {path}", len(pixels), True, items)


def read_idx_file(path: Path, magic: int, num_dims: int) -> np.ndarray:
    """Read an MNIST idx file (optionally gzipped) as uint8 with `num_dims` dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
        header = struct.unpack(f">{1 + num_dims}I", data[: 4 * (1 + num_dims)])
    except (OSError, EOFError, struct.error) as err:
        raise click.ClickException(f"{path}: cannot read the MNIST idx file: {err}") from err
    if header[0] != magic:
        raise click.ClickException(f"{path}: not an MNIST idx file (magic number {header[0]}, expected {magic})")
    shape = header[1:]
    pixels = np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + num_dims))
    if pixels.size != math.prod(shape):
        raise click.ClickException(f"{path}: header says {shape} but the file holds {pixels.size} bytes of data")
    return pixels.reshape(shape)


@contextlib.contextmanager
def open_mnist_source(path: Path) -> Iterator[Source]:
    """MNIST digits padded from 28x28 to 32x32, with labels from the sibling labels file when present."""
    digits = read_idx_file(path, magic=2051, num_dims=3)
    # Zero-pad 2 pixels a side, as the StyleGAN research tool did, so 28x28 becomes the power of two 32x32.
    digits = np.pad(digits, [(0, 0), (2, 2), (2, 2)])
    labels_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    labels = None
    if labels_path != path and labels_path.is_file():
        labels = read_idx_file(labels_path, magic=2049, num_dims=1)
        if len(labels) != len(digits):
            raise click.ClickException(f"{labels_path} has {len(labels)} labels but {path} has {len(digits)} images")
    items = (
        SourceItem(
            f"{path}[{i}]",
            None if labels is None else int(labels[i]),
            functools.partial(Pixels, digits[i]),
        )
        for i in range(len(digits))
    )
    yield Source(f"MNIST file {path}", len(digits), labels is not None, items)


# ----------------------------------------------------------------------------------------------------------------
# demo:shapes, a dataset drawn on the fly so that a fresh machine can train without a download.

SHAPE_CLASSES = ("circle", "square", "triangle")  # Label = index of the main shape's class.
DEMO_SHAPES_COUNT = 4096
DEMO_SHAPES_RESOLUTION = 64  # Used when --resolution is not given.
DEMO_SHAPES_SEED = 20240601  # Mixed with the image index: image i is the same on every machine and at every size.
SUPERSAMPLE = 4  # Drawn at 4x the size and box-filtered down, for antialiased edges.


@dataclass(frozen=True)
class Shape:
    """A filled shape in normalized coordinates (0..1 across the image)."""

    kind: int  # Index into SHAPE_CLASSES.
    center: tuple[float, float]
    radius: float  # Circumradius, as a fraction of the image side.
    angle: float  # Rotation in radians.
    color: tuple[int, int, int]


class SceneRandom:
    """Random numbers for one demo image, built only on random.Random.random().

    Python guarantees random() repeats its sequence for a given integer seed across versions (numpy's
    Generator methods make no such promise), so demo image i stays the same after upgrades.
    """

    def __init__(self, index: int) -> None:
        self._random = random.Random((DEMO_SHAPES_SEED << 32) | index)

    def uniform(self, low: float, high: float) -> float:
        """A float in [low, high)."""
        return low + (high - low) * self._random.random()

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        return min(int(self._random.random() * n), n - 1)

    def color(self, far_from: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
        """A random RGB colour; with `far_from`, one that stands out against that colour."""
        for _ in range(32):  # Bounded, so the draw count (and hence the scene) is fixed by the seed alone.
            color = (self.below(256), self.below(256), self.below(256))
            if far_from is None or sum(abs(a - b) for a, b in zip(color, far_from, strict=True)) >= 160:
                return color
        return (255 - far_from[0], 255 - far_from[1], 255 - far_from[2])


def sample_shapes_scene(index: int) -> tuple[tuple[int, int, int], list[Shape]]:
    """Pick the background colour and the shapes of demo image `index`; the last shape is the labelled one."""
    rng = SceneRandom(index)
    background = rng.color()
    shapes = []
    for _ in range(rng.below(3)):  # Up to two small distractors behind the main shape.
        center = (rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.95))
        shapes.append(
            Shape(
                rng.below(len(SHAPE_CLASSES)),
                center,
                rng.uniform(0.05, 0.12),
                rng.uniform(0, 2 * math.pi),
                rng.color(background),
            )
        )
    radius = rng.uniform(0.18, 0.32)
    center = (rng.uniform(radius, 1 - radius), rng.uniform(radius, 1 - radius))  # Fully inside the image.
    shapes.append(
        Shape(rng.below(len(SHAPE_CLASSES)), center, radius, rng.uniform(0, 2 * math.pi), rng.color(background))
    )
    return background, shapes


def render_shapes_scene(index: int, size: int) -> tuple[PIL.Image.Image, int]:
    """Draw demo image `index` at `size` x `size` pixels; return it and its label."""
    background, shapes = sample_shapes_scene(index)
    side = size * SUPERSAMPLE
    canvas = PIL.Image.new("RGB", (side, side), background)
    draw = PIL.ImageDraw.Draw(canvas)
    for shape in shapes:
        cx, cy, r = shape.center[0] * side, shape.center[1] * side, shape.radius * side
        if SHAPE_CLASSES[shape.kind] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shape.color)
        else:
            corners = 4 if SHAPE_CLASSES[shape.kind] == "square" else 3
            angles = [shape.angle + 2 * math.pi * k / corners for k in range(corners)]
            draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles], fill=shape.color)
    # BOX averages each 4x4 block exactly: true area antialiasing without ringing.
    return canvas.resize((size, size), PIL.Image.Resampling.BOX), shapes[-1].kind


@contextlib.contextmanager
def open_shapes_demo(cfg: ToolConfig) -> Iterator[Source]:
    """The procedurally drawn demo:shapes dataset, rendered at --resolution's width (default 64)."""
    size = cfg.resolution[0] if cfg.resolution is not None else DEMO_SHAPES_RESOLUTION
    count = DEMO_SHAPES_COUNT if cfg.max_images is None else min(DEMO_SHAPES_COUNT, cfg.max_images)

    items = (
        SourceItem(f"demo:shapes[{i}]", sample_shapes_scene(i)[1][-1].kind, functools.partial(ShapesScene, i, size))
        for i in range(count)
    )
    yield Source(f"demo:shapes ({', '.join(SHAPE_CLASSES)}; {size}x{size})", count, True, items)


DEMO_SOURCES = {"demo:shapes": open_shapes_demo}


def open_source(cfg: ToolConfig) -> contextlib.AbstractContextManager[Source]:
    """Detect what --source is and open it."""
    if cfg.source.startswith("demo:"):
        if cfg.source not in DEMO_SOURCES:
            raise click.BadParameter(
                f"unknown demo {cfg.source!r}; choose from {', '.join(DEMO_SOURCES)}", param_hint="--source"
            )
        return DEMO_SOURCES[cfg.source](cfg)
    path = Path(cfg.source).expanduser()
    if path.name == "data.mdb":  # The LMDB data file itself was given; the database is its folder.
        path = path.parent
    if not path.exists():
        raise click.BadParameter(f"{path} does not exist", param_hint="--source")
    if path.is_dir():
        return open_lmdb_source(path) if (path / "data.mdb").is_file() else open_folder_source(path)
    if re.search(r"idx3-ubyte(\.gz)?$", path.name):
        return open_mnist_source(path)
    # By name or first bytes too: a damaged zip (no central directory at its end) is not a zipfile.is_zipfile().
    if zipfile.is_zipfile(path) or path.suffix.lower() == ".zip" or has_zip_signature(path):
        return open_zip_source(path)
    if tarfile.is_tarfile(path):
        return open_cifar10_source(path)
    raise click.BadParameter(
        f"{path}: unsupported; expected a folder of images, a .zip, an LSUN LMDB folder, "
        f"cifar-10-python.tar.gz, MNIST train-images-idx3-ubyte.gz, or {', '.join(DEMO_SOURCES)}",
        param_hint="--source",
    )


# ----------------------------------------------------------------------------------------------------------------
# Per-image processing: normalize the mode, convert channels, transform to the output size.


def standardize_mode(image: PIL.Image.Image) -> PIL.Image.Image:
    """Bring any PIL mode to one of L, LA, RGB, RGBA."""
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("PA", "La", "RGBa"):
        return image.convert("RGBA" if image.mode != "La" else "LA")
    if image.mode.startswith("I"):  # 16-bit grayscale: keep the top 8 bits.
        pixels = np.asarray(image).astype(np.int64) >> 8
        return PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))  # [H, W] uint8 -> mode L
    if image.mode == "F":
        return image.convert("L")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX.


def convert_channels(image: PIL.Image.Image, channels: int | None, name: str) -> PIL.Image.Image:
    """Apply --channels: composite alpha over black, then convert to gray (luminance) or RGB (repeat gray)."""
    has_alpha = image.mode in ("LA", "RGBA")
    if channels is None:
        if has_alpha:
            raise click.ClickException(
                f"{name} has an alpha channel (mode {image.mode}); pass --channels=3 (or 1) to composite it over black"
            )
        return image
    if has_alpha:
        black = PIL.Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = PIL.Image.alpha_composite(black, image.convert("RGBA"))
    return image.convert("L" if channels == 1 else "RGB")


def resize(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Lanczos resize to (width, height); a no-op when already that size."""
    return image if image.size == size else image.resize(size, PIL.Image.Resampling.LANCZOS)


def center_crop(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Crop the centred square of the short side, then resize."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return resize(image.crop((left, top, left + side, top + side)), size)


def center_crop_wide(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Crop the centred W:H rectangle, resize to WxH, and letterbox it onto a black WxW square."""
    width, height = image.size
    out_w, out_h = size
    if width * out_h > height * out_w:  # Wider than W:H: trim the sides.
        crop_w, crop_h = round(height * out_w / out_h), height
    else:  # Taller: trim top and bottom.
        crop_w, crop_h = width, round(width * out_h / out_w)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    band = resize(image.crop((left, top, left + crop_w, top + crop_h)), size)
    canvas = PIL.Image.new(image.mode, (out_w, out_w))  # Zero-filled: black.
    canvas.paste(band, (0, (out_w - out_h) // 2))
    return canvas


def pad_to_square(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Pad to a centred square of the long side with black, then resize."""
    width, height = image.size
    side = max(width, height)
    canvas = PIL.Image.new(image.mode, (side, side))  # Zero-filled: black.
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return resize(canvas, size)


TRANSFORMS: dict[str, Callable[[PIL.Image.Image, tuple[int, int]], PIL.Image.Image]] = {
    "center-crop": center_crop,
    "center-crop-wide": center_crop_wide,
    "pad": pad_to_square,
}


def prepare_image(image: PIL.Image.Image, name: str, cfg: ToolConfig) -> PIL.Image.Image:
    """Turn a decoded source image into the output image (mode L or RGB, output size)."""
    image = convert_channels(standardize_mode(image), cfg.channels, name)
    if cfg.resolution is None:
        return image
    if cfg.transform is None:
        return resize(image, cfg.resolution)
    return TRANSFORMS[cfg.transform](image, cfg.resolution)


# ----------------------------------------------------------------------------------------------------------------
# Converting in parallel: workers decode, transform and encode; the main process reads and writes, in order.


@dataclass(frozen=True)
class ConvertedImage:
    """One image as a worker returns it: the encoded PNG, or why the source could not be read."""

    png: bytes | None  # The output file; None when the source image was unreadable.
    size: tuple[int, int] | None  # (width, height) of the output image.
    channels: int | None  # 1 or 3.
    error: str | None = None  # The UnreadableImage message when `png` is None.


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png_fast(pixels: np.ndarray, compress_level: int) -> bytes:
    """Encode uint8 [H, W] or [H, W, 3] pixels as an 8-bit PNG, for compress_level 0 or 1.

    Level 0 stores the rows unfiltered and uncompressed. Level 1 filters every row with PNG's Average filter
    (each byte minus the mean of its left and upper neighbours) and deflates it as runs (zlib's Z_RLE strategy).
    On photographs that is both faster and smaller than Pillow's encoder at level 1, which tries five filters
    per row: 2.3 ms and 98 KiB against 7.0 ms and 116 KiB per 256x256 RGB image (docs/performance.md).
    """
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = pixels.reshape(height, width * channels)  # [H, W * C]
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)  # Each row: its filter type, its bytes.
    if compress_level == 0:
        filtered[:, 0] = PNG_FILTER_NONE
        filtered[:, 1:] = rows
        data = zlib.compress(filtered.tobytes(), 0)
    else:
        raw = rows.astype(np.int16)
        mean = np.zeros_like(raw)  # Neighbours outside the image count as 0, as PNG specifies.
        mean[:, channels:] = raw[:, :-channels]  # Left: the same channel of the previous pixel.
        mean[1:] += raw[:-1]  # Up.
        mean >>= 1
        filtered[:, 0] = PNG_FILTER_AVERAGE
        filtered[:, 1:] = raw - mean  # uint8 keeps the difference modulo 256, as PNG specifies.
        deflate = zlib.compressobj(compress_level, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
        data = deflate.compress(filtered.tobytes()) + deflate.flush()
    color_type = PNG_GRAY if channels == 1 else PNG_RGB
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)  # 8 bits, deflate, no interlace.
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def encode_png(image: PIL.Image.Image, compress_level: int) -> bytes:
    """Encode an L or RGB image as PNG at zlib level `compress_level` (0 stores the pixels uncompressed).

    Levels 0 and 1 use encode_png_fast; levels 2-9 use Pillow's encoder (adaptive row filters, zlib at that
    level), which is several times slower and 7% smaller on photographs, and smaller still on flat graphics.
    """
    if compress_level <= 1:
        return encode_png_fast(np.asarray(image), compress_level)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


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


def ignore_interrupts() -> None:
    """Worker initializer: Ctrl-C is the main process's to handle (it stops the pool and removes the output)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def image_pool(workers: int) -> Iterator[Callable[..., concurrent.futures.Future]]:
    """Yield `submit(fn, *args) -> Future` running in `workers` processes, or in this one when `workers` is 1."""
    if workers == 1:
        yield run_inline
        return
    # Workers start from a fresh forkserver (spawn where there is none), not a fork of this process: a fork could
    # copy a lock held by another thread (tqdm's monitor), and a worker needs only this module.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    executor = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context(method), initializer=ignore_interrupts
    )
    try:
        yield executor.submit
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
# Output: written into a temporary sibling of --dest and renamed into place only when complete.


class DatasetWriter:
    """Writes files into DEST.tmp-*, a zip or a folder next to DEST, and moves it to DEST on commit()."""

    def __init__(self, dest: Path, force: bool) -> None:
        self.dest = dest
        self.force = force
        self.is_zip = dest.suffix.lower() == ".zip"
        self.tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
        self._archive: zipfile.ZipFile | None = None
        self._created_dirs: list[Path] = []  # Parents of DEST this run made, removed again if it fails.

    def open(self) -> None:
        """Create DEST's missing parent folders and the empty temporary output."""
        missing = [parent for parent in self.dest.parents if not parent.exists()]
        for parent in reversed(missing):
            parent.mkdir()
            self._created_dirs.append(parent)
        if self.is_zip:
            # Stored, not deflated: PNG is already compressed, so deflate would only cost CPU on every read.
            self._archive = zipfile.ZipFile(self.tmp, "x", compression=zipfile.ZIP_STORED)
        else:
            self.tmp.mkdir()

    def add(self, name: str, data: bytes) -> None:
        """Write one file, e.g. '00000/img00000000.png', into the output."""
        if self._archive is not None:
            # A fixed timestamp makes the zip byte-identical when the same source is converted again.
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3  # Unix, on every OS, so the permission bits below mean the same everywhere.
            info.external_attr = 0o644 << 16
            self._archive.writestr(info, data, compress_type=zipfile.ZIP_STORED)
        else:
            path = self.tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def commit(self) -> None:
        """Move the finished output to DEST, replacing an old DEST only now (and only with force)."""
        if self._archive is not None:
            self._archive.close()
            self._archive = None
        if not os.path.lexists(self.dest):
            os.rename(self.tmp, self.dest)
            return
        if is_nonempty(self.dest) and not self.force:  # Appeared while we were converting.
            raise click.ClickException(f"--dest {self.dest} appeared while converting; pass --force to replace it")
        # rename() cannot replace a non-empty folder, so move the old DEST aside first and restore it on failure.
        old = self.dest.with_name(f"{self.dest.name}.old-{os.getpid()}-{secrets.token_hex(3)}")
        os.rename(self.dest, old)
        try:
            os.rename(self.tmp, self.dest)
        except BaseException:
            os.rename(old, self.dest)
            raise
        remove_path(old)

    def discard(self) -> None:
        """Remove the temporary output and any parent folders this run created."""
        if self._archive is not None:
            with contextlib.suppress(Exception):
                self._archive.close()
            self._archive = None
        remove_path(self.tmp)
        for parent in reversed(self._created_dirs):
            with contextlib.suppress(OSError):
                parent.rmdir()  # Only if still empty.


def remove_path(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_dataset_writer(dest: Path, force: bool) -> Iterator[DatasetWriter]:
    """Yield a DatasetWriter; commit it if the block finishes, else (error, Ctrl-C) leave nothing behind."""
    writer = DatasetWriter(dest, force)
    try:
        writer.open()
        yield writer
        writer.commit()
    except BaseException:
        writer.discard()
        raise


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


# ----------------------------------------------------------------------------------------------------------------
# --info: show the dataset the way training will load it.


def print_dataset_info(path: str, max_images: int | None) -> None:
    """Load a dataset through ImageFolderDataset, as training does, print what training will see, and fail
    naming every damaged image (and a broken dataset.json) found."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # A broken dataset.json is reported below, under Labels.
            dataset = ImageFolderDataset(path=path, check=False)  # Every image is read below, so skip the sample.
    except DatasetError as err:
        raise click.ClickException(str(err)) from err
    labels_problem = None
    try:
        labelled = ImageFolderDataset(path=path, use_labels=True, check=False)
    except DatasetError as err:
        labels_problem = err.problem
    else:
        dataset.close()
        dataset = labelled
    with dataset:
        channels, height, width = dataset.image_shape
        if labels_problem is not None:
            labels = f"unusable: {labels_problem}"
        elif dataset.has_onehot_labels:
            classes = np.bincount(
                [int(dataset.get_details(i).raw_label) for i in range(len(dataset))], minlength=dataset.label_dim
            )
            labels = f"yes, {dataset.label_dim} classes: " + ", ".join(f"{c}: {n}" for c, n in enumerate(classes))
        elif dataset.has_labels:
            labels = f"yes, vectors of {dataset.label_dim} floats"
        else:
            labels = "no"
        indices = np.arange(len(dataset))
        if max_images is not None and max_images < len(dataset):
            indices = np.sort(np.random.default_rng(0).choice(indices, size=max_images, replace=False))
        channel_sums = np.zeros(channels, dtype=np.float64)
        damaged: list[str] = []
        for idx in tqdm(indices, unit="img", desc="Reading", dynamic_ncols=True, leave=False):
            try:
                channel_sums += dataset[idx][0].reshape(channels, -1).mean(axis=1)
            except DatasetError as err:  # Keep reading: the point is to list every damaged image at once.
                damaged.append(err.problem)
    readable = len(indices) - len(damaged)
    means = channel_sums / max(readable, 1)
    names = ["gray"] if channels == 1 else ["R", "G", "B"]
    click.echo(f"Path:        {path}")
    click.echo(f"Name:        {dataset.name}")
    click.echo(f"Images:      {len(dataset)}")
    trainable = width == height and is_power_of_two(width)
    click.echo(f"Resolution:  {width}x{height}" + ("" if trainable else "  (training needs a square power of two)"))
    click.echo(f"Channels:    {channels} ({'grayscale' if channels == 1 else 'RGB'})")
    click.echo(f"Labels:      {labels}")
    click.echo(
        "Mean pixel:  "
        + ", ".join(f"{n} {m:.1f}" for n, m in zip(names, means, strict=True))
        + f"  (0-255, over {readable} images)"
    )
    problems = []
    if damaged:
        click.echo(f"Damaged:     {len(damaged)} of the {len(indices)} images read:")
        for problem in damaged[:MAX_SKIPPED_SHOWN]:
            click.echo(f"  {problem}")
        if len(damaged) > MAX_SKIPPED_SHOWN:
            click.echo(f"  and {len(damaged) - MAX_SKIPPED_SHOWN} more")
        problems.append(f"{len(damaged)} damaged image(s)")
    if labels_problem is not None:
        problems.append(f"an unusable {LABELS_FILE} (training with --cond=1 would fail)")
    if problems:
        raise click.ClickException(
            f"{path} has {' and '.join(problems)}; re-create it with dataset_tool.py from its source images"
        )


# ----------------------------------------------------------------------------------------------------------------
# Command line.


@click.command(context_settings={"show_default": True, "max_content_width": 110})
@click.option(
    "--source",
    metavar="PATH",
    required=True,
    help="Input: image folder, .zip, LSUN LMDB folder, cifar-10-python.tar.gz, MNIST "
    "train-images-idx3-ubyte.gz, or demo:shapes (4096 drawn images, 64x64 unless --resolution).",
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
    else:
        convert(cfg)


if __name__ == "__main__":
    main()
