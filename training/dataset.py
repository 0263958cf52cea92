"""Image datasets for training: a folder or an uncompressed zip of PNG/JPEG files, with optional labels.

The on-disk format is the one `dataset_tool.py` writes (and the StyleGAN research code reads):

    00000/img00000000.png
    00000/img00000001.png
    ...
    dataset.json          # optional: {"labels": [["00000/img00000000.png", 6], ...]} or {"labels": null}

A label is an integer class (turned into a one-hot vector) or a list of floats (used as is).

Bad data is found early and reported as DatasetError, naming the file and what to do. Opening a dataset checks
what is affordable for 70k images (docs/datasets.md, "Damaged datasets"): the zip's central directory, every
member's recorded size against a bound derived from the image shape, and a decoded sample of CHECK_SAMPLE_SIZE
images. An image found damaged or of another size later, during training, raises DatasetError too, also when it
is read in a DataLoader worker process.

This module does not import torch: DataLoader takes any object with __len__ and __getitem__, and without torch
dataset_tool.py (which shares the format helpers here) starts in 0.7 s and 42 MB instead of 3.2 s and 230 MB.
"""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import tqdm

try:
    import pyspng
except ImportError:  # Optional: Pillow decodes the same PNGs, only a few times slower.
    pyspng = None

# dataset_tool.py writes PNG; the others are read too so that a hand-made folder works.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
LABELS_FILE = "dataset.json"
ZIP_SIGNATURE = b"PK\x03\x04"  # First bytes of a zip that starts with a member, as every dataset zip does.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHECK_SAMPLE_SIZE = 16  # Images decoded when a dataset is opened: 0.06 s at 256x256, 0.5 s at 1024x1024.
MAX_FIRST_IMAGE_BYTES = 256 << 20  # Read limit for the first image, before its shape bounds the others.
MAX_LABELS_BYTES = 1 << 30  # Read limit for dataset.json: 1 GiB holds labels for millions of images.


class DatasetError(ValueError):
    """A dataset on disk that cannot be read as asked; the message names the file and what to do.

    `problem` says what is wrong and `advice` (None if there is none) what to do; `str(error)` joins them. Raised
    in a DataLoader worker process, it reaches the main process as a DatasetError again: torch rebuilds the
    exception from the worker's formatted traceback, and the constructor recovers the worker's own message from
    it, so `str(error)` is the same clear text whichever process read the image.
    """

    def __init__(self, problem: str, advice: str | None = None) -> None:
        self.traceback: str | None = None  # The worker's formatted traceback, when raised in one; for debugging.
        marker = f"\n{DatasetError.__module__}.{DatasetError.__qualname__}: "
        if problem.startswith("Caught DatasetError") and marker in problem:
            self.traceback = problem
            problem = problem.rpartition(marker)[2].rstrip("\n")
        self.problem = problem
        self.advice = advice
        super().__init__(problem if advice is None else f"{problem}; {advice}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.problem, self.advice)


@dataclass(frozen=True)
class ImageDetails:
    """Where dataset item `idx` comes from."""

    raw_idx: int  # Index into the images on disk, in sorted-path order.
    xflip: bool  # True for the mirrored second half of an `xflip=True` dataset.
    raw_label: np.ndarray  # The label as stored: an int64 class (shape []) or float32 values (shape [D]).


def is_hidden(relpath: str) -> bool:
    """True for dot files and macOS archive metadata (`__MACOSX/`), which look like images but are not."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relpath.split("/"))


def has_zip_signature(path: str | os.PathLike) -> bool:
    """True if the file starts like a zip; a damaged zip (e.g. a truncated download) still does."""
    try:
        with open(path, "rb") as file:
            return file.read(len(ZIP_SIGNATURE)) == ZIP_SIGNATURE
    except OSError:
        return False


def max_image_bytes(shape: tuple[int, ...] | list[int]) -> int:
    """The largest file an image of `shape` [C, H, W] can plausibly be, whatever its PNG compression level.

    An uncompressed PNG holds the pixels plus one filter byte per row and a few bytes per 64 KiB block; twice
    the pixel bytes, plus 1 MiB for metadata such as an ICC profile, leaves room for any honest PNG or JPEG of
    that size, while a member claiming gigabytes is refused before it is read.
    """
    channels, height, width = shape
    return 2 * channels * height * width + (1 << 20)


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk without decoding it; None if `data` is not a PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return struct.unpack(">II", data[16:24])


def png_header(data: bytes) -> tuple[tuple[int, int], int, int] | None:
    """((width, height), channels after decoding, bit depth) from a PNG's IHDR chunk; None if not a PNG.

    Channels and depth as `decode_image` returns them: gray 1, RGB 3, gray+alpha 2, RGBA 4, and a palette of any
    depth becomes 8-bit RGB.
    """
    size = png_size(data)
    if size is None or len(data) < 26:
        return None
    bit_depth, color_type = data[24], data[25]
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(color_type)
    if color_type == 3:
        bit_depth = 8
    return None if channels is None else (size, channels, bit_depth)


def decode_image(data: bytes, fname: str) -> np.ndarray:
    """Decode PNG/JPEG bytes into a uint8 array [C, H, W] with C = 1 or 3."""
    if pyspng is not None and fname.lower().endswith(".png"):
        image = pyspng.load(data)
    else:
        with PIL.Image.open(io.BytesIO(data)) as pil_image:
            if pil_image.mode == "P":
                pil_image = pil_image.convert("RGB")
            elif pil_image.mode == "1":
                pil_image = pil_image.convert("L")
            image = np.asarray(pil_image)
    if image.ndim == 2:
        image = image[:, :, np.newaxis]  # [H, W] -> [H, W, 1]
    if image.dtype != np.uint8 or image.shape[2] not in (1, 3):
        raise DatasetError(
            f"{fname}: expected 8-bit grayscale or RGB, got {image.dtype} with {image.shape[2]} channels; "
            f"convert the dataset with `python dataset_tool.py --channels=3` (or 1)"
        )
    return image.transpose(2, 0, 1)  # [H, W, C] -> [C, H, W]


def parse_labels(labels_json: Any, fnames: list[str], where: str) -> np.ndarray | None:
    """Turn the "labels" entry of dataset.json into one label per image in `fnames` order, or None.

    Returns int64 [N] for class labels or float32 [N, D] for vector labels.
    """
    if labels_json is None:
        return None
    try:
        by_name = {str(name).replace("\\", "/"): label for name, label in labels_json}
    except (TypeError, ValueError) as err:
        raise DatasetError(f'{where}: "labels" must be a list of [file name, label] pairs or null') from err
    missing = [fname for fname in fnames if fname not in by_name]
    if missing:
        raise DatasetError(f"{where}: no label for {missing[0]} ({len(missing)} images without a label)")
    labels = [by_name[fname] for fname in fnames]

    if all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        classes = np.array(labels, dtype=np.int64)
        if classes.min(initial=0) < 0:
            raise DatasetError(f"{where}: class labels must be >= 0, found {classes.min()}")
        return classes
    try:
        values = np.array(labels, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{where}: labels must all be integers or all be lists of the same length") from err
    return values.reshape(len(labels), -1)  # A plain number becomes a 1-vector.


class Dataset:
    """Images with optional labels, with deterministic subsetting (`max_size`) and mirroring (`xflip`).

    A map-style dataset for torch.utils.data.DataLoader, which needs only __len__ and __getitem__. Subclasses
    read the images; this class decides which raw image each index maps to.
    """

    def __init__(
        self,
        name: str,  # Short name shown in logs and used in run directory names.
        raw_shape: list[int],  # [N, C, H, W] of all images on disk.
        raw_labels: np.ndarray | None,  # int64 [N] classes, float32 [N, D] vectors, or None if unlabelled.
        max_size: int | None = None,  # Keep a random subset of this many images; None keeps all.
        use_labels: bool = False,  # False hides the labels (label_dim becomes 0).
        xflip: bool = False,  # Append a horizontally mirrored copy of every image, doubling the length.
        random_seed: int = 0,  # Seed that picks the `max_size` subset.
    ) -> None:
        self._name = name
        self._raw_shape = list(raw_shape)
        self._raw_labels = raw_labels if use_labels else None
        if raw_labels is None or not use_labels:
            self._label_shape = [0]
        elif raw_labels.ndim == 1:
            self._label_shape = [int(raw_labels.max(initial=0)) + 1]  # One-hot over classes 0..max.
        else:
            self._label_shape = list(raw_labels.shape[1:])

        raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and max_size < raw_idx.size:
            rng = np.random.default_rng(random_seed)
            raw_idx = np.sort(rng.choice(raw_idx, size=max_size, replace=False))  # Sorted: reads stay sequential.
        flips = np.zeros(raw_idx.size, dtype=bool)
        if xflip:
            raw_idx = np.concatenate([raw_idx, raw_idx])
            flips = np.concatenate([flips, ~flips])
        self._raw_idx = raw_idx
        self._xflip = flips

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        """Read image `raw_idx` as uint8 [C, H, W]; subclasses implement this."""
        raise NotImplementedError

    def close(self) -> None:
        """Release open files; the dataset reopens them when read again."""

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._raw_idx.size)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (image uint8 [C, H, W], label float32 [label_dim])."""
        image = self._load_raw_image(int(self._raw_idx[idx]))
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        # Contiguous so that the default collate function (torch.from_numpy) accepts it.
        return np.ascontiguousarray(image), self.get_label(idx)

    def get_label(self, idx: int) -> np.ndarray:
        """Return the label of item `idx` as float32 [label_dim] (one-hot for class labels)."""
        if self._raw_labels is None:
            return np.zeros(0, dtype=np.float32)
        raw_label = self._raw_labels[self._raw_idx[idx]]
        if raw_label.ndim == 0:
            onehot = np.zeros(self._label_shape, dtype=np.float32)
            onehot[raw_label] = 1
            return onehot
        return raw_label.astype(np.float32, copy=True)

    def get_details(self, idx: int) -> ImageDetails:
        """Return which raw image item `idx` reads, whether it is mirrored, and its stored label."""
        raw_idx = int(self._raw_idx[idx])
        raw_label = np.zeros(0, dtype=np.float32) if self._raw_labels is None else self._raw_labels[raw_idx].copy()
        return ImageDetails(raw_idx=raw_idx, xflip=bool(self._xflip[idx]), raw_label=raw_label)

    @property
    def name(self) -> str:
        """Short name of the dataset."""
        return self._name

    @property
    def image_shape(self) -> list[int]:
        """[C, H, W] of every image."""
        return list(self._raw_shape[1:])

    @property
    def num_channels(self) -> int:
        """1 (grayscale) or 3 (RGB)."""
        return self.image_shape[0]

    @property
    def resolution(self) -> int:
        """Side of the square images, in pixels."""
        _, height, width = self.image_shape
        assert height == width, f"dataset {self._name} has non-square {width}x{height} images"
        return width

    @property
    def label_shape(self) -> list[int]:
        """[label_dim]; [0] when unlabelled or `use_labels=False`."""
        return list(self._label_shape)

    @property
    def label_dim(self) -> int:
        """Length of each label vector (0 when unlabelled)."""
        return int(np.prod(self._label_shape))

    @property
    def has_labels(self) -> bool:
        """True when items carry non-empty labels."""
        return self.label_dim != 0

    @property
    def has_onehot_labels(self) -> bool:
        """True when labels are integer classes returned as one-hot vectors."""
        return self._raw_labels is not None and self._raw_labels.ndim == 1


MAX_SKIPPED_IN_A_ROW = 16  # SkipDamaged gives up (DatasetError) after this many damaged images in a row.


class DamagedImageWarning(UserWarning):
    """Training skipped a damaged image (the message names it); see SkipDamaged."""


class SkipDamaged:
    """A dataset for training in which a damaged image is replaced by the next readable one, with a warning naming
    it, instead of ending the run hours in; items are (image, label, how many damaged images were skipped).

    The checks when a dataset is opened find most damage before the first step; this covers what only a full
    decode finds. More than MAX_SKIPPED_IN_A_ROW damaged images in a row is a DatasetError.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray, int]:
        for skipped in range(MAX_SKIPPED_IN_A_ROW + 1):
            try:
                image, label = self.dataset[(idx + skipped) % len(self.dataset)]
                return image, label, skipped
            except DatasetError as error:
                warnings.warn(f"skipped a damaged image: {error}", DamagedImageWarning, stacklevel=2)
        raise DatasetError(f"{MAX_SKIPPED_IN_A_ROW + 1} images in a row are damaged (see the warnings above)")


class ImageFolderDataset(Dataset):
    """Images in a folder (searched recursively) or a zip, sorted by relative path; checked when opened."""

    def __init__(
        self,
        path: str,  # Folder or .zip file.
        resolution: int | None = None,  # Expected image side in pixels; None accepts what the files hold.
        name: str | None = None,  # None: the folder name or the zip's stem.
        max_size: int | None = None,  # Keep a random subset of this many images; None keeps all.
        use_labels: bool = False,  # False ignores the labels (label_dim becomes 0); a bad dataset.json only warns.
        xflip: bool = False,  # Append a horizontally mirrored copy of every image, doubling the length.
        random_seed: int = 0,  # Seed that picks the `max_size` subset.
        check: bool = True,  # Check the zip index and a decoded sample now; False leaves every check to the reads.
        check_headers: bool = False,  # Also read every PNG's header now: size, channels, bit depth (train.py does).
    ) -> None:
        self._path = str(path)
        self._zip_file: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        self._expected_shape: tuple[int, ...] | None = None  # [C, H, W] of the first image, once read.
        self._max_bytes = MAX_FIRST_IMAGE_BYTES  # Read limit per image; tightened once the shape is known.

        if os.path.isdir(self._path):
            self._kind = "dir"
            names = {
                Path(root, fname).relative_to(self._path).as_posix()
                for root, _dirs, files in os.walk(self._path)
                for fname in files
            }
        elif os.path.isfile(self._path):
            self._kind = "zip"
            names = set(self._open_zip().namelist())
        elif os.path.exists(self._path):
            raise DatasetError(f"{self._path}: not a folder or a zip file")
        else:
            raise DatasetError(f"{self._path}: no such folder or zip file")
        self._image_fnames = sorted(
            fname for fname in names if fname.lower().endswith(IMAGE_EXTENSIONS) and not is_hidden(fname)
        )
        if not self._image_fnames:
            raise DatasetError(f"{self._path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")

        first_image = self._load_raw_image(0)
        self._expected_shape = first_image.shape
        self._max_bytes = max_image_bytes(first_image.shape)
        if resolution is not None and first_image.shape[1:] != (resolution, resolution):
            raise DatasetError(
                f"{self._path}: images are {first_image.shape[2]}x{first_image.shape[1]} but resolution "
                f"{resolution}x{resolution} was asked for; rebuild the dataset with "
                f"`python dataset_tool.py --resolution={resolution}x{resolution}` or drop the resolution option"
            )
        if check and self._kind == "zip":
            self._check_zip_index()
        if check:
            self._check_sample(CHECK_SAMPLE_SIZE)
        if check_headers:
            self._check_headers()
        raw_shape = [len(self._image_fnames), *first_image.shape]
        raw_labels = self._load_labels(use_labels) if LABELS_FILE in names else None
        default_name = Path(self._path.rstrip("/\\")).stem if self._kind == "zip" else Path(self._path).name
        super().__init__(
            name=name or default_name,
            raw_shape=raw_shape,
            raw_labels=raw_labels,
            max_size=max_size,
            use_labels=use_labels,
            xflip=xflip,
            random_seed=random_seed,
        )

    @property
    def path(self) -> str:
        """The folder or zip file the images come from."""
        return self._path

    @property
    def repack_advice(self) -> str:
        """What to do about a damaged image in this dataset."""
        return (
            f"the dataset is damaged: run `python dataset_tool.py --source={self._path} --info` to list every "
            f"damaged image, then re-create the dataset with dataset_tool.py from its source images"
        )

    @property
    def image_fnames(self) -> list[str]:
        """Relative paths (forward slashes) of the images on disk, in raw-index order."""
        return list(self._image_fnames)

    def _open_zip(self) -> zipfile.ZipFile:
        """This process's handle on the zip, opened (and its central directory parsed) on first use."""
        # A ZipFile shares one OS file offset, so each DataLoader worker process needs its own handle.
        if self._zip_file is None or self._zip_pid != os.getpid():
            try:
                self._zip_file = zipfile.ZipFile(self._path)
            except OSError as err:
                raise DatasetError(f"{self._path}: cannot read the file: {err}") from err
            except (zipfile.BadZipFile, EOFError, ValueError) as err:  # What the zip reader raises on bad data.
                if self._path.lower().endswith(".zip") or has_zip_signature(self._path):
                    raise DatasetError(
                        f"{self._path}: the zip file is damaged ({err}), perhaps a truncated download or copy; "
                        f"copy it again, or re-create it with dataset_tool.py"
                    ) from err
                raise DatasetError(f"{self._path}: not a folder or a zip file") from err
            self._zip_pid = os.getpid()
        return self._zip_file

    def _check_zip_index(self) -> None:
        """Check every image member's entry in the central directory, which costs no reading of the images.

        A member that is encrypted, lies past the end of the file, or claims more bytes than an image of this
        shape can take is refused now, by name, instead of hours into training (or after reading gigabytes).
        """
        archive = self._open_zip()
        archive_bytes = os.path.getsize(self._path)
        for fname in self._image_fnames:
            info = archive.getinfo(fname)
            problem = None
            if info.flag_bits & 0x1:
                problem = "is encrypted"
            elif max(info.file_size, info.compress_size) > self._max_bytes:
                size = max(info.file_size, info.compress_size)
                problem = (
                    f"claims {size:,} bytes, more than the {self._max_bytes:,} an image of shape "
                    f"{list(self._expected_shape)} [C, H, W] can take"
                )
            elif info.header_offset + info.compress_size > archive_bytes:
                problem = f"lies past the end of the {archive_bytes:,}-byte file"
            if problem is not None:
                raise DatasetError(f"{self._path}: {fname} {problem}", self.repack_advice)

    def _check_sample(self, count: int) -> None:
        """Decode `count` images spread evenly over the dataset (always the same ones) and check their shapes."""
        num_images = len(self._image_fnames)
        for raw_idx in np.unique(np.linspace(0, num_images - 1, num=min(count, num_images)).round().astype(int)):
            self._load_raw_image(int(raw_idx))

    def _check_headers(self) -> None:
        """Read the header of every PNG (33 bytes each, no decoding: about 10 s for 70k images in a zip) and refuse
        the first whose size, channels or bit depth differs from what training will decode; a progress bar shows
        for large sets. Other formats are left to the decoded sample and the reads."""
        fnames = [f for f in self._image_fnames if f.lower().endswith(".png")]
        channels, height, width = self._expected_shape
        progress = tqdm.tqdm(fnames, desc="Checking image headers", unit="img", disable=len(fnames) < 5000)
        for fname in progress:
            header = self._read_head(fname, 33)
            found = png_header(header)
            if found is None:
                problem = f"{self._path}: {fname} is not a PNG file (its header is damaged)"
                raise DatasetError(problem, self.repack_advice)
            size, png_channels, bit_depth = found
            if size != (width, height) or png_channels != channels:
                raise self._wrong_shape_error(fname, f"{size[0]}x{size[1]} pixels with {png_channels} channel(s)")
            if bit_depth != 8:
                raise DatasetError(
                    f"{self._path}: {fname} has {bit_depth}-bit samples; training reads 8-bit images",
                    f"{self.repack_advice} (dataset_tool.py writes 8-bit PNGs)",
                )

    def _read_head(self, fname: str, count: int) -> bytes:
        """The first `count` bytes of a file of the dataset."""
        try:
            if self._kind == "zip":
                with self._open_zip().open(fname) as file:
                    return file.read(count)
            with open(os.path.join(self._path, fname), "rb") as file:
                return file.read(count)
        except Exception as err:  # Whatever the zip reader raises, say which file it was.
            raise DatasetError(
                f"{self._path}: cannot read {fname} ({type(err).__name__}: {err})", self.repack_advice
            ) from err

    def _read_bytes(self, fname: str, limit: int) -> bytes:
        """Read a file of the dataset, refusing one longer than `limit` bytes without reading more than that."""
        too_long = f"{self._path}: {fname} holds more than {limit:,} bytes, more than such a file can"
        if self._kind == "zip":
            archive = self._open_zip()
            if archive.getinfo(fname).file_size > limit:  # Refused on the central directory's word, unread.
                raise DatasetError(too_long, self.repack_advice)
            opener = archive.open(fname)
        else:
            opener = open(os.path.join(self._path, fname), "rb")
        with opener as file:
            data = file.read(limit + 1)  # Bounded even if the recorded size lies.
        if len(data) > limit:
            raise DatasetError(too_long, self.repack_advice)
        return data

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        """Read and decode image `raw_idx` as uint8 [C, H, W]; any problem is a DatasetError naming the file."""
        fname = self._image_fnames[raw_idx]
        try:
            data = self._read_bytes(fname, self._max_bytes)
            size = png_size(data)
            if self._expected_shape is not None and size is not None and size[::-1] != self._expected_shape[1:]:
                # From the PNG header alone, before decoding: a huge image never reaches the decoder.
                raise self._wrong_shape_error(fname, f"{size[0]}x{size[1]} pixels")
            image = decode_image(data, fname)
        except DatasetError:
            raise
        except Exception as err:  # Whatever the zip reader or the decoder raises, say which file it was.
            raise DatasetError(
                f"{self._path}: cannot read {fname} ({type(err).__name__}: {err})", self.repack_advice
            ) from err
        if self._expected_shape is not None and image.shape != self._expected_shape:
            raise self._wrong_shape_error(fname, f"shape {list(image.shape)} [C, H, W]")
        return image

    def _wrong_shape_error(self, fname: str, found: str) -> DatasetError:
        """The error for an image whose size or channels differ from the first image's."""
        channels, height, width = self._expected_shape
        return DatasetError(
            f"{self._path}: {fname} has {found} but the first image is {width}x{height} with {channels} "
            f"channel(s), and every image must have the same size and channels",
            f"{self.repack_advice} (with --resolution=WxH --channels=N)",
        )

    def _load_labels(self, use_labels: bool) -> np.ndarray | None:
        """Parse dataset.json; when labels are not used, a broken one is only a warning, since it cannot matter."""
        try:
            return self._load_raw_labels()
        except DatasetError as err:
            if use_labels:
                raise
            warnings.warn(
                f"{err}. The labels are ignored because they are not used (unconditional training); fix or "
                f"remove {LABELS_FILE} before using them.",
                stacklevel=3,
            )
            return None

    def _load_raw_labels(self) -> np.ndarray | None:
        """The labels of dataset.json in image order; DatasetError naming the file if it is malformed."""
        where = f"{self._path}/{LABELS_FILE}"
        try:
            labels_json = json.loads(self._read_bytes(LABELS_FILE, MAX_LABELS_BYTES))["labels"]
        except (OSError, zipfile.BadZipFile, ValueError, KeyError, TypeError) as err:
            raise DatasetError(f'{where}: expected {{"labels": [[file name, label], ...]}} or null: {err}') from err
        return parse_labels(labels_json, self._image_fnames, where)

    def close(self) -> None:
        """Close the zip file handle, if open."""
        if self._zip_file is not None:
            self._zip_file.close()
        self._zip_file = None
        self._zip_pid = None

    def __getstate__(self) -> dict[str, Any]:
        # Open file handles do not pickle; the copy in a worker process reopens the zip on first read.
        return {**self.__dict__, "_zip_file": None, "_zip_pid": None}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # Interpreter shutdown may have torn down zipfile already.
            pass
