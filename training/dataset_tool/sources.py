"""Sources: each opener yields a Source whose items are fetched in order by the main process (file reads, zip
and database lookups) and decoded by a worker, so an unreadable file is reported by name, in order.

Folders and zips of images (labels from their dataset.json), LSUN LMDB databases, the CIFAR-10 python tarball,
MNIST idx files and the drawn demos; open_source() detects which one --source is.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import importlib
import io
import json
import math
import os
import pickle
import re
import struct
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import click
import numpy as np
import PIL.Image
import PIL.ImageOps

from training.dataset import IMAGE_EXTENSIONS, LABELS_FILE, has_zip_signature, is_hidden
from training.dataset_tool.config import ToolConfig
from training.dataset_tool.shapes import SCENE_SAMPLERS, SHAPE_CLASSES, render_scene, sample_scene

EXIF_ORIENTATION = 0x0112  # EXIF tag of the rotation and mirroring that viewers apply.
# Largest source image file read; a bigger one (or a zip member whose header claims more) is refused unread.
# 256 MiB holds a 30-megapixel 16-bit RGBA TIFF; photos and dataset images are a small fraction of it.
MAX_SOURCE_IMAGE_BYTES = 256 << 20

Label = int | list[float] | None  # As stored in dataset.json: a class index or a vector.


class UnreadableImage(Exception):
    """An image file the decoder rejected; skipped unless --strict."""


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
    """Image `index` of the drawn demo named `demo` (demo:shapes, demo:scenes), drawn at `size` x `size` by the
    worker."""

    demo: str
    index: int
    size: int

    def decode(self) -> PIL.Image.Image:
        """Draw the scene."""
        return render_scene(self.demo, self.index, self.size)[0]


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
# demo:shapes and demo:scenes, drawn by training.dataset_tool.shapes.

DEMO_SHAPES_COUNT = 4096
DEMO_SHAPES_RESOLUTION = 64  # Used when --resolution is not given.


@contextlib.contextmanager
def open_drawn_demo(cfg: ToolConfig) -> Iterator[Source]:
    """The procedurally drawn demo named by --source, rendered at --resolution's width (default 64)."""
    demo = cfg.source
    size = cfg.resolution[0] if cfg.resolution is not None else DEMO_SHAPES_RESOLUTION
    count = DEMO_SHAPES_COUNT if cfg.max_images is None else min(DEMO_SHAPES_COUNT, cfg.max_images)

    items = (
        SourceItem(f"{demo}[{i}]", sample_scene(demo, i)[1][-1].kind, functools.partial(ShapesScene, demo, i, size))
        for i in range(count)
    )
    yield Source(f"{demo} ({', '.join(SHAPE_CLASSES)}; {size}x{size})", count, True, items)


DEMO_SOURCES = dict.fromkeys(SCENE_SAMPLERS, open_drawn_demo)


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
