"""Image datasets for training: a folder or an uncompressed zip of PNG/JPEG files, with optional labels.

The on-disk format is the one `dataset_tool.py` writes (and the StyleGAN research code reads):

    00000/img00000000.png
    00000/img00000001.png
    ...
    dataset.json          # optional: {"labels": [["00000/img00000000.png", 6], ...]} or {"labels": null}

A label is an integer class (turned into a one-hot vector) or a list of floats (used as is).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

try:
    import pyspng
except ImportError:  # Optional: Pillow decodes the same PNGs, only a few times slower.
    pyspng = None

# dataset_tool.py writes PNG; the others are read too so that a hand-made folder works.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
LABELS_FILE = "dataset.json"


class DatasetError(ValueError):
    """A dataset on disk that cannot be read as asked; the message names the file and what to do."""


@dataclass(frozen=True)
class ImageDetails:
    """Where dataset item `idx` comes from."""

    raw_idx: int  # Index into the images on disk, in sorted-path order.
    xflip: bool  # True for the mirrored second half of an `xflip=True` dataset.
    raw_label: np.ndarray  # The label as stored: an int64 class (shape []) or float32 values (shape [D]).


def is_hidden(relpath: str) -> bool:
    """True for dot files and macOS archive metadata (`__MACOSX/`), which look like images but are not."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relpath.split("/"))


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


class Dataset(torch.utils.data.Dataset):
    """Images with optional labels, with deterministic subsetting (`max_size`) and mirroring (`xflip`).

    Subclasses read the images; this class decides which raw image each index maps to.
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


class ImageFolderDataset(Dataset):
    """Images in a folder (searched recursively) or an uncompressed zip, sorted by relative path."""

    def __init__(
        self,
        path: str,  # Folder or .zip file.
        resolution: int | None = None,  # Expected image side in pixels; None accepts what the files hold.
        name: str | None = None,  # None: the folder name or the zip's stem.
        max_size: int | None = None,  # Keep a random subset of this many images; None keeps all.
        use_labels: bool = False,  # False ignores dataset.json (label_dim becomes 0).
        xflip: bool = False,  # Append a horizontally mirrored copy of every image, doubling the length.
        random_seed: int = 0,  # Seed that picks the `max_size` subset.
    ) -> None:
        self._path = str(path)
        self._zip_file: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        self._expected_shape: tuple[int, ...] | None = None  # [C, H, W] of the first image, once read.

        if os.path.isdir(self._path):
            self._kind = "dir"
            names = {
                Path(root, fname).relative_to(self._path).as_posix()
                for root, _dirs, files in os.walk(self._path)
                for fname in files
            }
        elif zipfile.is_zipfile(self._path):
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
        if resolution is not None and first_image.shape[1:] != (resolution, resolution):
            raise DatasetError(
                f"{self._path}: images are {first_image.shape[2]}x{first_image.shape[1]} but resolution "
                f"{resolution}x{resolution} was asked for; rebuild the dataset with "
                f"`python dataset_tool.py --resolution={resolution}x{resolution}` or drop the resolution option"
            )
        raw_shape = [len(self._image_fnames), *first_image.shape]
        # Labels are parsed only when used, so a stale dataset.json cannot break unconditional training.
        raw_labels = self._load_raw_labels() if use_labels and LABELS_FILE in names else None
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
    def image_fnames(self) -> list[str]:
        """Relative paths (forward slashes) of the images on disk, in raw-index order."""
        return list(self._image_fnames)

    def _open_zip(self) -> zipfile.ZipFile:
        # A ZipFile shares one OS file offset, so each DataLoader worker process needs its own handle.
        if self._zip_file is None or self._zip_pid != os.getpid():
            self._zip_file = zipfile.ZipFile(self._path)
            self._zip_pid = os.getpid()
        return self._zip_file

    def _read_bytes(self, fname: str) -> bytes:
        if self._kind == "zip":
            return self._open_zip().read(fname)
        with open(os.path.join(self._path, fname), "rb") as file:
            return file.read()

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        fname = self._image_fnames[raw_idx]
        try:
            image = decode_image(self._read_bytes(fname), fname)
        except DatasetError:
            raise
        except Exception as err:  # Whatever the decoder raises, say which file it was.
            raise DatasetError(f"{self._path}: cannot read {fname}: {err}") from err
        if self._expected_shape is not None and image.shape != self._expected_shape:
            raise DatasetError(
                f"{self._path}: {fname} has shape {list(image.shape)} [C, H, W] but the first image has "
                f"{list(self._expected_shape)}; every image must have the same size and channels "
                f"(rebuild with `python dataset_tool.py --resolution=WxH --channels=N`)"
            )
        return image

    def _load_raw_labels(self) -> np.ndarray | None:
        where = f"{self._path}/{LABELS_FILE}"
        try:
            labels_json = json.loads(self._read_bytes(LABELS_FILE))["labels"]
        except (ValueError, KeyError, TypeError) as err:
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
