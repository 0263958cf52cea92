"""The published feature networks ("detectors") that metrics measure images with, and how to find them offline.

A detector is found, in this order: in `detector_dir` (a folder holding the file under its published name, or
the file itself), in the download cache (`$DNNLIB_CACHE_DIR/downloads/`, where `dnnlib.util.open_url` keeps
downloads), and finally by downloading it. Both published forms load: a TorchScript archive (`torch.jit.save`, a
zip) and a pickle of a TorchScript module.

What loading runs. A file anyone could have planted in the detector folder or the cache must not run code:
- When the registry knows a file's SHA-256 (`DetectorSpec.sha256`), a file with another hash is refused before it
  is read.
- A pickle is read by `DetectorUnpickler`, which resolves only what a pickled TorchScript module needs
  (`torch.jit.load` of in-memory archive bytes); any other global, such as `os.system`, is refused before anything
  from the file runs.
- A TorchScript archive holds tensors and TorchScript code (the module's methods, compiled from Python source).
  `torch.jit.load` compiles and runs that code in the TorchScript interpreter, not in Python: it can only call
  TorchScript operators, not import modules or call arbitrary Python functions. The interpreter is not a
  security boundary that PyTorch reviews, though, so a checksum is the real guarantee.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import pickle
import urllib.parse
import warnings
from collections.abc import Mapping
from typing import Any, BinaryIO

import torch

import dnnlib
from metrics.registry import MetricError

DOWNLOAD_ATTEMPTS = 3  # Tries per URL before a detector counts as unavailable.


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """A published feature network: what it is, the URLs it is distributed at (preferred first) and the SHA-256 of
    the published files, by file name (a file without an entry is loaded unverified)."""

    description: str
    urls: tuple[str, ...]
    sha256: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False, compare=False)

    @property
    def filenames(self) -> list[str]:
        """The file names the detector goes by (the URLs' basenames), preferred first."""
        return [os.path.basename(urllib.parse.urlparse(url).path) for url in self.urls]


# The SHA-256 of the published files are not recorded yet: the files could not be downloaded where this was
# written, and a guessed hash would refuse the genuine file. Add them as `sha256={"vgg16.pkl": "<64 hex digits>"}`
# from a trusted download (`sha256sum FILE`); from then on every load verifies them.

# Inception-v3 as TensorFlow's 2015-12-05 graph, translated to TorchScript; the FID/KID/IS numbers of the
# StyleGAN papers were measured with it. `det(uint8 [N, 3, H, W], return_features=True)` -> [N, 2048] pool
# features; `det(img, no_output_bias=True)` -> [N, 1008] class probabilities (softmax of the logits computed
# without the output bias). It resizes its input to 299x299 itself.
INCEPTION = DetectorSpec(
    description="Inception-v3 (TorchScript translation of the 2015-12-05 TensorFlow graph)",
    urls=(
        "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl",
        "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    ),
)

# VGG16 with the LPIPS linear calibration (Zhang et al. 2018), in TorchScript. `det(img, return_features=True)`
# -> [N, 4096] fc7 features (precision/recall); `det(float [0, 255], resize_images=False, return_lpips=True)`
# -> per-sample normalized feature vectors whose squared L2 distance is the LPIPS distance (path length).
VGG16 = DetectorSpec(
    description="VGG16 with LPIPS calibration (TorchScript)",
    urls=(
        "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/vgg16.pkl",
        "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt",
    ),
)


DETECTORS = (INCEPTION, VGG16)  # Every registered detector; file checksums are looked up here.


class DetectorUnavailableError(MetricError):
    """A detector file that is neither in --detector-dir, nor in the download cache, nor downloadable."""


class DetectorLoadError(MetricError):
    """A detector file that exists but does not load as a TorchScript archive or pickle."""


class DetectorChecksumError(DetectorLoadError):
    """A detector file whose SHA-256 is not the published file's."""


class UnsafeDetectorError(DetectorLoadError):
    """A detector pickle that asks for a global outside what pickled TorchScript modules need."""


def find_local(spec: DetectorSpec, detector_dir: str | None) -> str | None:
    """The detector's file in `detector_dir` or the download cache, or None."""
    if detector_dir is not None:
        if os.path.isfile(detector_dir) and os.path.basename(detector_dir) in spec.filenames:
            return detector_dir
        for filename in spec.filenames:
            path = os.path.join(detector_dir, filename)
            if os.path.isfile(path):
                return path
    for url in spec.urls:
        path = dnnlib.util.url_cache_path(url)
        if os.path.isfile(path):
            return path
    return None


def fetch(spec: DetectorSpec, detector_dir: str | None = None, download: bool = True) -> tuple[str | None, str]:
    """Find the detector locally or download it into the cache.

    Returns:
        (path, '') when found, else (None, why the download failed).
    """
    path = find_local(spec, detector_dir)
    if path is not None or not download:
        return path, "" if path is not None else "not downloaded (download=False)"
    reasons = []
    for url in spec.urls:
        try:
            return dnnlib.util.open_url(url, num_attempts=DOWNLOAD_ATTEMPTS, return_filename=True), ""
        except dnnlib.util.DownloadError as error:
            reasons.append(str(error).splitlines()[0])
    return None, " / ".join(reasons)


def require(needed: dict[DetectorSpec, list[str]], detector_dir: str | None = None, download: bool = True) -> dict:
    """Locate (downloading if needed) every detector in `needed`, or raise one error that names each missing file.

    Args:
        needed:       Detector -> names of the metrics that use it (for the message).
        detector_dir: Folder (or file) searched first; None searches only the cache.
        download:     Try the URLs when a file is not found locally.

    Returns:
        {DetectorSpec: local path}.

    Raises:
        DetectorUnavailableError: some detectors are missing; the message says, for each, its file name, URL,
                                  and the two places to put it.
        DetectorChecksumError:    a file found is not the published one (see `verify_checksum`).
    """
    if detector_dir is not None and not os.path.exists(detector_dir):
        raise DetectorUnavailableError(f"--detector-dir={detector_dir}: no such folder or file")
    paths, missing = {}, []
    for spec, metric_names in needed.items():
        path, reason = fetch(spec, detector_dir, download)
        if path is None:
            missing.append(_missing_message(spec, metric_names, reason, detector_dir))
        else:
            with open(path, "rb") as f:
                verify_checksum(path, f)  # Refuse a wrong file now, not when the first snapshot is measured.
            paths[spec] = path
    if missing:
        raise DetectorUnavailableError(
            "Cannot get the feature network files these metrics need (is this machine offline?).\n" + "\n".join(missing)
        )
    return paths


def _missing_message(spec: DetectorSpec, metric_names: list[str], reason: str, detector_dir: str | None) -> str:
    """The paragraph of the offline error about one detector."""
    filename = spec.filenames[0]
    others = " or ".join(f"'{name}'" for name in spec.filenames)
    searched = f" (looked in --detector-dir={detector_dir})" if detector_dir is not None else ""
    return (
        f"  * {filename}: {spec.description}, needed by {', '.join(metric_names)}{searched}.\n"
        f"    URL: {spec.urls[0]}\n"
        f"    Download failed: {reason}\n"
        f"    Fix: download it on a machine with network access, then either put it in a folder as {others} and "
        f"pass --detector-dir=FOLDER, or copy it to exactly {dnnlib.util.url_cache_path(spec.urls[0])}"
    )


def expected_sha256(path: str) -> tuple[DetectorSpec, str, str] | None:
    """(detector, published file name, its SHA-256) for a detector file known by its name (published, or as the
    download cache names it), when the registry records the hash; else None."""
    name = os.path.basename(path)
    for spec in DETECTORS:
        for url, filename in zip(spec.urls, spec.filenames, strict=True):
            if name in (filename, os.path.basename(dnnlib.util.url_cache_path(url))) and spec.sha256.get(filename):
                return spec, filename, spec.sha256[filename].lower()
    return None


def verify_checksum(path: str, f: BinaryIO) -> None:
    """Check the open file `f` (of `path`) against its published SHA-256, if known; leaves `f` at its start.

    Raises:
        DetectorChecksumError: the hash differs; the message names the file, both hashes and the fix.
    """
    expected = expected_sha256(path)
    if expected is None:
        return
    spec, filename, sha256 = expected
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    f.seek(0)
    if digest.hexdigest() != sha256:
        url = next(url for url, name in zip(spec.urls, spec.filenames, strict=True) if name == filename)
        raise DetectorChecksumError(
            f"{path} is not the published {filename}: its SHA-256 is {digest.hexdigest()}, the published file's is "
            f"{sha256}. It is damaged, incomplete or replaced, so it was not loaded. Delete it and run again to "
            f"download it anew, or copy the published file from {url}"
        )


class DetectorUnpickler(pickle.Unpickler):
    """Reads a pickled TorchScript module (`torch.jit.load(io.BytesIO(archive))`, as the published .pkl files are
    made) and refuses every other global before anything from the file runs."""

    # The globals such a pickle names, in both spellings: older PyTorch defined torch.jit.load in torch.jit, and
    # io.BytesIO is _io.BytesIO.
    JIT_LOAD = {("torch.jit._serialization", "load"), ("torch.jit", "load")}
    BYTES_IO = {("_io", "BytesIO"), ("io", "BytesIO")}

    def __init__(self, file: BinaryIO, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.JIT_LOAD:
            return self._load_archive_bytes
        if (module, name) in self.BYTES_IO:
            return io.BytesIO
        raise UnsafeDetectorError(
            f"{self.path} asks for {module}.{name} while unpickling, which a detector (a pickled TorchScript module) "
            f"never needs; it was refused and nothing from the file ran. Replace the file with the published one, or "
            f"use its TorchScript archive (.pt)."
        )

    def _load_archive_bytes(self, f: Any, *args: Any, **kwargs: Any) -> torch.nn.Module:
        """`torch.jit.load` as the pickle may call it: only on archive bytes the pickle itself carries (a path or
        another file object would load some other file)."""
        if not isinstance(f, io.BytesIO) or args or kwargs:
            raise UnsafeDetectorError(
                f"{self.path} calls torch.jit.load on {type(f).__name__}{' with options' if args or kwargs else ''}; "
                f"a detector pickle may only load the archive bytes it holds, so it was refused."
            )
        return torch.jit.load(f, map_location="cpu")


def load_detector(path: str, device: torch.device) -> torch.nn.Module:
    """Load a detector file (TorchScript archive or pickle) onto `device`, once per (file, device)."""
    stat = os.stat(path)
    return _load_cached(os.path.abspath(path), stat.st_size, stat.st_mtime_ns, str(device))


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, size: int, mtime_ns: int, device: str) -> torch.nn.Module:
    """Load and memoize; the size and mtime in the key make a replaced file load anew."""
    del size, mtime_ns  # Only part of the cache key.
    try:
        with open(path, "rb") as f:
            verify_checksum(path, f)  # The same open file is then loaded: a swap after the check changes nothing.
            # torch.jit.save writes a zip archive (b'PK\x03\x04'); a pickle starts with b'\x80'. (A pickle may embed
            # an archive, which fools zipfile.is_zipfile, hence the look at the first bytes.)
            is_archive = f.read(4) == b"PK\x03\x04"
            f.seek(0)
            with warnings.catch_warnings():
                # Recent PyTorch deprecates TorchScript; the published detectors exist only in that form.
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                detector = torch.jit.load(f, map_location=device) if is_archive else DetectorUnpickler(f, path).load()
    except DetectorLoadError:
        raise
    except Exception as error:
        raise DetectorLoadError(
            f"{path} does not load as a TorchScript archive or a pickled TorchScript module ({type(error).__name__}: "
            f"{error}). Replace it with the published file, or use the TorchScript archive (.pt) version."
        ) from error
    if not isinstance(detector, torch.jit.ScriptModule):
        raise DetectorLoadError(
            f"{path} holds a {type(detector).__name__}, not a TorchScript module (a detector network)"
        )
    return detector.eval().to(device)
