"""Tests for dataset_tool.py and training/dataset_tool/: every source, transform and refusal, read back through
ImageFolderDataset."""

import concurrent.futures
import gzip
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import psutil
import pytest
from click.testing import CliRunner
from helpers import ROOT, group_is_gone, script_env
from test_dataset import forge_member_size

import dataset_tool  # The command line, a root script importable through pytest's `pythonpath = ["."]`.
from torch_utils import stop_signals
from training.dataset import ImageFolderDataset
from training.dataset_tool.config import ToolConfig, parse_resolution
from training.dataset_tool.convert import (
    DEFAULT_COMPRESS_LEVEL,
    MIN_IMAGES_PER_WORKER,
    available_cores,
    finished,
    in_order,
    worker_count,
)
from training.dataset_tool.png import encode_png, encode_png_fast
from training.dataset_tool.shapes import CENTRE_JITTER, SHAPE_CLASSES, render_scene, sample_scene
from training.dataset_tool.sources import SourceItem


def run_tool(*args: str):
    """Run the command in-process and return click's Result."""
    return CliRunner().invoke(dataset_tool.main, [str(arg) for arg in args], catch_exceptions=True)


def run_ok(*args: str):
    """Run the command and assert it succeeded."""
    result = run_tool(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def run_fails(*args: str, match: list[str]):
    """Run the command, assert it failed with a click error whose message contains every string in `match`."""
    result = run_tool(*args)
    assert result.exit_code in (1, 2), result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # A clean message, not a traceback.
    for text in match:
        assert text in result.output, f"{text!r} not in {result.output!r}"
    return result


def save_image(path: Path, pixels: np.ndarray, **save_kwargs) -> None:
    """Save [H, W] or [H, W, C] pixels as an image file (the mode follows the shape and dtype), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(pixels).save(path, **save_kwargs)


def random_pixels(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """Random uint8 pixels [H, W, C] (or [H, W] for one channel)."""
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def chw(pixels: np.ndarray) -> np.ndarray:
    """[H, W] or [H, W, C] -> [C, H, W], as ImageFolderDataset returns."""
    return pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def read_all(path: Path, **kwargs) -> tuple[ImageFolderDataset, list[np.ndarray], list[np.ndarray]]:
    """Load a dataset and return it with all its images and labels."""
    dataset = ImageFolderDataset(str(path), use_labels=True, **kwargs)
    items = [dataset[i] for i in range(len(dataset))]
    return dataset, [image for image, _ in items], [label for _, label in items]


def entries(folder: Path) -> list[str]:
    """Names in a folder: used to check a failed run left nothing behind."""
    return sorted(os.listdir(folder))


@pytest.fixture
def out(tmp_path) -> Path:
    """An empty output folder; failed runs must leave it empty."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# ----------------------------------------------------------------------------------------------------------------
# Helpers and round trips.


def test_parse_resolution():
    assert parse_resolution("256x128") == (256, 128)
    assert parse_resolution("64") == (64, 64)
    for bad in ("", "abc", "64x", "x64", "0x0", "64*64", "-4x4"):
        with pytest.raises(ValueError):
            parse_resolution(bad)


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
@pytest.mark.parametrize("labelled", [False, True], ids=["unlabelled", "labelled"])
@pytest.mark.parametrize("dest_name", ["data.zip", "data"], ids=["zip", "folder"])
def test_folder_round_trip_is_exact(tmp_path, out, channels, labelled, dest_name):
    src = tmp_path / "src"
    names = ["b/x.png", "a.png", "b/a/deep.png", "c.png"]  # Sorted: a.png, b/a/deep.png, b/x.png, c.png.
    pixels = {name: random_pixels(8, 8, channels, seed=i) for i, name in enumerate(names)}
    for name, image in pixels.items():
        save_image(src / name, image)
    (src / "notes.txt").write_text("not an image")
    labels = {name: i % 3 for i, name in enumerate(names)}
    if labelled:
        (src / "dataset.json").write_text(json.dumps({"labels": list(labels.items())}))

    result = run_ok("--source", src, "--dest", out / dest_name)
    assert "Wrote 4 images" in result.output and "8x8" in result.output
    assert entries(out) == [dest_name]
    dataset, images, got_labels = read_all(out / dest_name)
    assert dataset.image_fnames == [f"00000/img{i:08d}.png" for i in range(4)]
    assert dataset.has_labels == labelled
    for i, name in enumerate(sorted(names)):
        np.testing.assert_array_equal(images[i], chw(pixels[name]))
        if labelled:
            assert got_labels[i].argmax() == labels[name]


def test_zip_source_with_labels_and_reconversion_is_byte_identical(tmp_path, out):
    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as archive:
        for i in range(3):
            buffer = io.BytesIO()
            PIL.Image.fromarray(random_pixels(4, 4, 3, seed=i)).save(buffer, format="PNG")
            archive.writestr(f"imgs/{2 - i}.png", buffer.getvalue())
        archive.writestr("__MACOSX/imgs/._0.png", b"resource fork, not an image")
        archive.writestr("dataset.json", json.dumps({"labels": [[f"imgs/{k}.png", [k, 0.5]] for k in range(3)]}))

    run_ok("--source", src, "--dest", out / "a.zip")
    dataset, images, labels = read_all(out / "a.zip")
    assert len(dataset) == 3 and dataset.label_shape == [2]
    np.testing.assert_array_equal(images[0], chw(random_pixels(4, 4, 3, seed=2)))  # imgs/0.png was written last.
    np.testing.assert_array_equal(labels[2], np.float32([2, 0.5]))

    run_ok("--source", out / "a.zip", "--dest", out / "b.zip")
    assert (out / "a.zip").read_bytes() == (out / "b.zip").read_bytes()


def test_max_images_and_info(tmp_path, out):
    src = tmp_path / "src"
    for i in range(5):
        save_image(src / f"{i}.png", np.full((4, 4, 3), 10 * i, dtype=np.uint8))
    (src / "dataset.json").write_text(json.dumps({"labels": [[f"{i}.png", i % 2] for i in range(5)]}))
    run_ok("--source", src, "--dest", out / "d.zip", "--max-images", 3)

    info = run_ok("--source", out / "d.zip", "--info").output
    assert "Images:      3" in info
    assert "Resolution:  4x4" in info
    assert "Channels:    3" in info
    assert "2 classes: 0: 2, 1: 1" in info
    assert "R 10.0, G 10.0, B 10.0" in info  # Mean of 0, 10, 20.
    run_fails("--source", out / "d.zip", "--info", "--dest", out / "x.zip", match=["--info", "--dest"])
    run_fails("--source", tmp_path / "nothing.zip", "--info", match=["nothing.zip"])


# ----------------------------------------------------------------------------------------------------------------
# Sources.


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    """Encode pixels as PNG, JPEG or WEBP bytes."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def test_lmdb_source(tmp_path, out):
    lmdb = pytest.importorskip("lmdb")
    pixels = [random_pixels(8, 8, 3, seed=i) for i in range(3)]
    db = tmp_path / "cat_lmdb"
    env = lmdb.open(str(db), map_size=1 << 22)
    with env.begin(write=True) as txn:
        txn.put(b"a-png", encoded(pixels[0], "PNG"))
        txn.put(b"b-jpeg", encoded(pixels[1], "JPEG"))
        txn.put(b"c-webp", encoded(pixels[2], "WEBP"))
    env.close()

    run_ok("--source", db, "--dest", out / "lsun.zip")
    dataset, images, _ = read_all(out / "lsun.zip")
    assert len(dataset) == 3 and not dataset.has_labels
    np.testing.assert_array_equal(images[0], chw(pixels[0]))  # PNG is lossless; JPEG and WEBP are not.
    run_ok("--source", db / "data.mdb", "--dest", out / "lsun2.zip", "--max-images", 1)  # The data file also works.
    assert len(ImageFolderDataset(str(out / "lsun2.zip"))) == 1


def test_lmdb_without_the_package_says_how_to_install(tmp_path, out, monkeypatch):
    db = tmp_path / "lsun"
    db.mkdir()
    (db / "data.mdb").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "lmdb", None)  # Makes `import lmdb` raise ImportError.
    run_fails("--source", db, "--dest", out / "x.zip", match=["pip install lmdb", ".[lsun]"])
    assert entries(out) == []


class RunsAShellCommand:
    """Pickles as a call to os.system, the way a malicious dataset pickle would run code."""

    def __reduce__(self):
        return (os.system, ("true",))


def make_cifar10(path: Path, per_batch: int = 2, malicious: bool = False) -> tuple:
    """Write a tiny fake cifar-10-python.tar.gz with the real member names and pickle layout."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(5 * per_batch, 3072), dtype=np.uint8)  # Planar RGB rows, as CIFAR stores.
    labels = [int(k) for k in rng.integers(0, 10, size=5 * per_batch)]
    with tarfile.open(path, "w:gz") as tar:
        for b in range(5):
            rows = slice(b * per_batch, (b + 1) * per_batch)
            batch = {
                "batch_label": f"training batch {b + 1} of 5",
                "data": data[rows],
                "labels": labels[rows],
                "filenames": [f"img{i}.png" for i in range(per_batch)],
            }
            if malicious:
                batch["labels"] = RunsAShellCommand()
            payload = pickle.dumps(batch, protocol=2)  # The real files were written by Python 2 at protocol 2.
            info = tarfile.TarInfo(f"cifar-10-batches-py/data_batch_{b + 1}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        readme = b"fake"
        info = tarfile.TarInfo("cifar-10-batches-py/readme.html")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
    return data.reshape(-1, 3, 32, 32), labels


def test_cifar10_source(tmp_path, out):
    expected, labels = make_cifar10(tmp_path / "cifar-10-python.tar.gz")
    run_ok("--source", tmp_path / "cifar-10-python.tar.gz", "--dest", out / "cifar.zip")
    dataset, images, got_labels = read_all(out / "cifar.zip")
    assert len(dataset) == 10 and dataset.resolution == 32 and dataset.has_onehot_labels
    np.testing.assert_array_equal(np.stack(images), expected)
    assert [int(label.argmax()) for label in got_labels] == labels


def test_cifar10_pickle_cannot_run_code(tmp_path, out):
    make_cifar10(tmp_path / "cifar-10-python.tar.gz", malicious=True)
    run_fails("--source", tmp_path / "cifar-10-python.tar.gz", "--dest", out / "c.zip", match=["refusing", "system"])
    assert entries(out) == []


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    """Write an MNIST-style gzipped idx file."""
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("with_labels", [True, False])
def test_mnist_source_is_padded_to_32(tmp_path, out, with_labels):
    digits = np.random.default_rng(0).integers(1, 256, size=(3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", 2051, digits)
    if with_labels:
        write_idx(tmp_path / "train-labels-idx1-ubyte.gz", 2049, np.array([7, 1, 4]))
    run_ok("--source", tmp_path / "train-images-idx3-ubyte.gz", "--dest", out / "mnist.zip")
    dataset, images, labels = read_all(out / "mnist.zip")
    assert dataset.image_shape == [1, 32, 32] and dataset.has_labels == with_labels
    for image, digit in zip(images, digits, strict=True):
        np.testing.assert_array_equal(image[0, 2:30, 2:30], digit)
        assert image.sum() == digit.astype(np.int64).sum()  # The 2-pixel border is black.
    if with_labels:
        assert [int(label.argmax()) for label in labels] == [7, 1, 4]


def test_mnist_bad_magic(tmp_path, out):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", 1234, np.zeros((1, 2, 2)))
    run_fails("--source", tmp_path / "train-images-idx3-ubyte.gz", "--dest", out / "m.zip", match=["2051"])
    assert entries(out) == []


def test_demo_shapes_is_deterministic(out):
    run_ok("--source", "demo:shapes", "--dest", out / "a.zip", "--max-images", 8, "--resolution", "32x32")
    run_ok("--source", "demo:shapes", "--dest", out / "b.zip", "--max-images", 8, "--resolution", "32x32")
    assert (out / "a.zip").read_bytes() == (out / "b.zip").read_bytes()

    dataset, small, labels = read_all(out / "a.zip")
    assert dataset.resolution == 32 and dataset.num_channels == 3 and dataset.has_onehot_labels
    assert all(label.sum() == 1 for label in labels) and dataset.label_dim <= len(SHAPE_CLASSES)
    assert len({image.tobytes() for image in small}) == 8  # Every image differs.

    run_ok("--source", "demo:shapes", "--dest", out / "c.zip", "--max-images", 8)  # Default size: 64x64.
    dataset, large, large_labels = read_all(out / "c.zip")
    assert dataset.resolution == 64
    for a, b in zip(labels, large_labels, strict=True):
        np.testing.assert_array_equal(a, b)
    for image_32, image_64 in zip(small, large, strict=True):  # The same scene at both sizes.
        halved = image_64.reshape(3, 32, 2, 32, 2).mean(axis=(2, 4))
        assert np.abs(halved - image_32).mean() < 4


def test_demo_shapes_draws_one_shape_near_the_centre():
    for index in range(200):
        background, shapes = sample_scene("demo:shapes", index)
        assert len(shapes) == 1
        shape = shapes[0]
        assert all(abs(coordinate - 0.5) <= CENTRE_JITTER for coordinate in shape.center)
        assert 0.22 <= shape.radius <= 0.34
        image, label = render_scene("demo:shapes", index, 64)
        pixels = np.asarray(image)
        assert label == shape.kind
        # Every shape's inradius (a triangle's: half its circumradius) covers a few pixels around its centre,
        # and no shape reaches the corners.
        x, y = (int(coordinate * 64) for coordinate in shape.center)
        assert tuple(pixels[y, x]) == shape.color, index
        for corner in (pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]):
            assert tuple(corner) == background, index


def test_demo_scenes_place_shapes_anywhere_with_distractors(out):
    scenes = [sample_scene("demo:scenes", index) for index in range(200)]
    main_offsets = [max(abs(c - 0.5) for c in shapes[-1].center) for _, shapes in scenes]
    assert max(main_offsets) > 0.25 and min(main_offsets) < 0.1
    assert {len(shapes) for _, shapes in scenes} == {1, 2, 3}  # Zero, one or two distractors.
    assert all(shape.radius <= 0.12 for _, shapes in scenes for shape in shapes[:-1])

    run_ok("--source", "demo:scenes", "--dest", out / "s.zip", "--max-images", 4, "--resolution", "16x16")
    dataset, images, labels = read_all(out / "s.zip")
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        expected, kind = render_scene("demo:scenes", index, 16)
        np.testing.assert_array_equal(image, np.asarray(expected).transpose(2, 0, 1))
        assert label.argmax() == kind


def test_unknown_demo_and_unsupported_source(tmp_path, out):
    run_fails("--source", "demo:nope", "--dest", out / "x.zip", match=["demo:shapes"])
    (tmp_path / "weird.bin").write_bytes(b"1234")
    run_fails("--source", tmp_path / "weird.bin", "--dest", out / "x.zip", match=["weird.bin", "unsupported"])
    run_fails("--source", tmp_path / "missing", "--dest", out / "x.zip", match=["missing", "does not exist"])
    assert entries(out) == []


@pytest.mark.parametrize("name", ["cut.zip", "cut.bin"], ids=["by-name", "by-signature"])
def test_truncated_zip_source_is_damaged_not_unsupported(tmp_path, out, name):
    with zipfile.ZipFile(tmp_path / "whole.zip", "w") as archive:
        for i in range(3):
            archive.writestr(f"{i}.png", encoded(random_pixels(8, 8, 3, seed=i), "PNG"))
    whole = (tmp_path / "whole.zip").read_bytes()
    (tmp_path / name).write_bytes(whole[: len(whole) // 2])  # An interrupted download: no central directory.
    result = run_fails("--source", tmp_path / name, "--dest", out / "x.zip", match=[name, "damaged"])
    assert "unsupported" not in result.output
    assert entries(out) == []


def test_zip_member_claiming_gigabytes_is_refused_unread(tmp_path, out, monkeypatch):
    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as archive:
        for i in range(3):
            archive.writestr(f"{i}.png", encoded(random_pixels(8, 8, 3, seed=i), "PNG"))
    forge_member_size(src, "1.png", 2 << 30)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile,
        "open",
        lambda self, name, *a, **k: opened.append(getattr(name, "filename", name)) or real_open(self, name, *a, **k),
    )
    run_fails("--source", src, "--dest", out / "x.zip", "--strict", match=["src.zip/1.png", "2,048 MiB", "256 MiB"])
    result = run_ok("--source", src, "--dest", out / "y.zip")
    assert "Wrote 2 images" in result.output and "skipped 1 unreadable: " in result.output
    assert "0.png" in opened and "1.png" not in opened  # Refused on the header's word, never read.


# ----------------------------------------------------------------------------------------------------------------
# Transforms and channels.


def convert_one(tmp_path: Path, pixels: np.ndarray, *args, **save_kwargs) -> np.ndarray:
    """Convert a single-image folder with extra options and return the output image [C, H, W]."""
    src = tmp_path / "src"
    save_image(src / "img.png", pixels, **save_kwargs)
    dest = tmp_path / "one.zip"
    run_ok("--source", src, "--dest", dest, "--force", *args)
    return read_all(dest)[1][0]


def test_plain_resize_is_lanczos(tmp_path):
    pixels = random_pixels(16, 16, 3, seed=0)
    got = convert_one(tmp_path, pixels, "--resolution", "8x8")
    expected = PIL.Image.fromarray(pixels).resize((8, 8), PIL.Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(got, chw(np.asarray(expected)))


def test_center_crop(tmp_path):
    pixels = random_pixels(8, 12, 3, seed=1)  # 12 wide, 8 high.
    got = convert_one(tmp_path, pixels, "--transform", "center-crop", "--resolution", "8x8")
    np.testing.assert_array_equal(got, chw(pixels[:, 2:10]))


def test_center_crop_wide_letterboxes(tmp_path):
    pixels = np.full((6, 16, 3), 200, dtype=np.uint8)  # Wider than 2:1: the sides are trimmed to 12x6.
    got = convert_one(tmp_path, pixels, "--transform", "center-crop-wide", "--resolution", "8x4")
    assert got.shape == (3, 8, 8)
    assert (got[:, :2] == 0).all() and (got[:, 6:] == 0).all()  # Black bars above and below.
    assert np.abs(got[:, 2:6].astype(int) - 200).max() <= 1


def test_pad(tmp_path):
    pixels = random_pixels(4, 8, 3, seed=2)
    got = convert_one(tmp_path, pixels, "--transform", "pad", "--resolution", "8x8")
    np.testing.assert_array_equal(got[:, 2:6], chw(pixels))
    assert (got[:, :2] == 0).all() and (got[:, 6:] == 0).all()


def test_channels_conversions(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[...] = (200, 100, 50, 128)
    got = convert_one(tmp_path, rgba, "--channels", "3")
    np.testing.assert_allclose(got[:, 0, 0], np.array([200, 100, 50]) * 128 / 255, atol=1)  # Over black.
    got = convert_one(tmp_path, rgba, "--channels", "1")
    assert got.shape == (1, 4, 4) and abs(int(got[0, 0, 0]) - (0.299 * 100 + 0.587 * 50 + 0.114 * 25)) <= 1

    rgb = random_pixels(4, 4, 3, seed=3)
    got = convert_one(tmp_path, rgb, "--channels", "1")
    np.testing.assert_array_equal(got[0], np.asarray(PIL.Image.fromarray(rgb).convert("L")))
    gray = random_pixels(4, 4, 1, seed=4)
    got = convert_one(tmp_path, gray, "--channels", "3")
    np.testing.assert_array_equal(got, np.stack([gray] * 3))

    palette = PIL.Image.fromarray(rgb).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=4)
    expected = np.asarray(palette.convert("RGB"))
    src = tmp_path / "pal"
    src.mkdir()
    palette.save(src / "p.png")
    for args in ([], ["--channels", "3"]):
        run_ok("--source", src, "--dest", tmp_path / "pal.zip", "--force", *args)
        np.testing.assert_array_equal(read_all(tmp_path / "pal.zip")[1][0], chw(expected))


def test_16_bit_gray_keeps_the_top_8_bits(tmp_path):
    pixels = np.random.default_rng(5).integers(0, 65536, size=(4, 4), dtype=np.uint16)
    got = convert_one(tmp_path, pixels)
    np.testing.assert_array_equal(got[0], pixels >> 8)


def test_exif_orientation_is_applied(tmp_path):
    pixels = random_pixels(4, 4, 3, seed=6)
    exif = PIL.Image.Exif()
    exif[0x0112] = 3  # Orientation: rotated 180 degrees.
    got = convert_one(tmp_path, pixels, exif=exif)
    np.testing.assert_array_equal(got, chw(pixels[::-1, ::-1]))


# ----------------------------------------------------------------------------------------------------------------
# Refusals: each names the problem and leaves nothing behind.


def test_corrupt_image_is_skipped_or_fails_with_strict(tmp_path, out):
    src = tmp_path / "src"
    for i in range(3):
        save_image(src / f"{i}.png", random_pixels(4, 4, 3, seed=i))
    (src / "1b-bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    good = (src / "2.png").read_bytes()
    (src / "1c-truncated.png").write_bytes(good[: len(good) // 2])

    result = run_ok("--source", src, "--dest", out / "d.zip")
    assert "Wrote 3 images" in result.output and "skipped 2 unreadable" in result.output
    assert "1b-bad.png" in result.output and "1c-truncated.png" in result.output
    assert len(ImageFolderDataset(str(out / "d.zip"))) == 3

    run_fails("--source", src, "--dest", out / "e.zip", "--strict", match=["1b-bad.png", "--strict"])
    assert entries(out) == ["d.zip"]


def test_mixed_sizes_need_resolution(tmp_path, out):
    src = tmp_path / "src"
    save_image(src / "a.png", random_pixels(8, 8, 3, seed=0))
    save_image(src / "b.png", random_pixels(16, 16, 3, seed=1))
    run_fails("--source", src, "--dest", out / "d.zip", match=["b.png", "16x16", "--resolution"])
    assert entries(out) == []
    run_ok("--source", src, "--dest", out / "d.zip", "--resolution", "8x8")


def test_non_power_of_two_and_non_square_images(tmp_path, out):
    save_image(tmp_path / "npot" / "a.png", random_pixels(12, 12, 3, seed=0))
    run_fails("--source", tmp_path / "npot", "--dest", out / "d.zip", match=["a.png", "power of two", "--resolution"])
    save_image(tmp_path / "wide" / "w.png", random_pixels(8, 16, 3, seed=0))
    run_fails(
        "--source", tmp_path / "wide", "--dest", out / "d", match=["w.png", "not square", "--resolution", "--transform"]
    )
    assert entries(out) == []


def test_bad_resolution_options(tmp_path, out):
    save_image(tmp_path / "src" / "a.png", random_pixels(8, 8, 3, seed=0))
    src = tmp_path / "src"
    run_fails("--source", src, "--dest", out / "d.zip", "--resolution", "abc", match=["--resolution", "abc"])
    run_fails("--source", src, "--dest", out / "d.zip", "--resolution", "48x48", match=["--resolution", "power of two"])
    run_fails("--source", src, "--dest", out / "d.zip", "--resolution", "64x32", match=["--resolution", "not square"])
    run_fails(
        "--source", src, "--dest", out / "d.zip", "--transform", "center-crop", match=["--transform", "--resolution"]
    )
    run_fails("--source", src, "--dest", out / "d.zip", "--max-images", "0", match=["--max-images"])
    run_fails("--source", src, match=["--dest"])
    run_fails("--source", src, "--dest", src / "inside.zip", match=["inside"])
    assert entries(out) == [] and entries(src) == ["a.png"]


def test_alpha_and_mixed_channels_need_channels(tmp_path, out):
    save_image(tmp_path / "alpha" / "a.png", np.zeros((4, 4, 4), dtype=np.uint8))
    run_fails("--source", tmp_path / "alpha", "--dest", out / "d.zip", match=["a.png", "alpha", "--channels"])
    save_image(tmp_path / "mixed" / "a.png", random_pixels(4, 4, 3, seed=0))
    save_image(tmp_path / "mixed" / "b.png", random_pixels(4, 4, 1, seed=0))
    run_fails("--source", tmp_path / "mixed", "--dest", out / "d.zip", match=["b.png", "--channels"])
    assert entries(out) == []


@pytest.mark.parametrize("dest_name", ["old.zip", "old"], ids=["zip", "folder"])
def test_existing_dest_needs_force(tmp_path, out, dest_name):
    src = tmp_path / "src"
    save_image(src / "a.png", random_pixels(4, 4, 3, seed=0))
    dest = out / dest_name
    if dest_name.endswith(".zip"):
        dest.write_bytes(b"precious")
    else:
        dest.mkdir()
        (dest / "precious.txt").write_text("keep me")
    before = sorted(p.name for p in out.rglob("*"))

    run_fails("--source", src, "--dest", dest, match=[str(dest), "--force"])
    assert sorted(p.name for p in out.rglob("*")) == before  # Untouched, no temporaries.

    run_ok("--source", src, "--dest", dest, "--force")
    assert entries(out) == [dest_name]
    assert len(ImageFolderDataset(str(dest))) == 1
    assert not (dest / "precious.txt").exists()


def test_empty_dest_folder_is_reused(tmp_path, out):
    save_image(tmp_path / "src" / "a.png", random_pixels(4, 4, 3, seed=0))
    (out / "empty").mkdir()
    run_ok("--source", tmp_path / "src", "--dest", out / "empty")
    assert len(ImageFolderDataset(str(out / "empty"))) == 1


def test_failure_midway_leaves_nothing(tmp_path, out, monkeypatch):
    src = tmp_path / "src"
    for i in range(4):
        save_image(src / f"{i}.png", random_pixels(4, 4, 3, seed=i))
    real_encode = encode_png
    calls = []

    def interrupted(image, compress_level):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_encode(image, compress_level)

    monkeypatch.setattr("training.dataset_tool.convert.encode_png", interrupted)  # Where convert_image finds it.
    for dest in (out / "new" / "deeper" / "d.zip", out / "d"):
        calls.clear()
        result = run_tool("--source", src, "--dest", dest)
        assert result.exit_code != 0 and len(calls) == 3
        assert entries(out) == []  # Neither the temporary nor the parent folders it created are left.


def test_a_stop_signal_during_the_final_rename_lets_it_finish(tmp_path, out, monkeypatch):
    """SIGTERM while the new --dest replaces the old one: the replacement completes and the tool says so, exit 143."""
    src = tmp_path / "src"
    save_image(src / "a.png", random_pixels(4, 4, 3, seed=0))
    dest = out / "d"
    run_ok("--source", src, "--dest", dest)
    (dest / "00000" / "img00000000.png").unlink()  # The old dataset, told apart from the new one.
    real_rename = os.rename

    def rename_then_signal(source, target):  # The first rename moves the old --dest aside.
        real_rename(source, target)
        if ".old-" in str(target):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr("os.rename", rename_then_signal)
    result = run_tool("--source", src, "--dest", dest, "--force")
    assert result.exit_code == 143, result.output
    assert f"Received SIGTERM as {dest} was being completed; it is complete." in result.output
    assert entries(out) == ["d"] and len(ImageFolderDataset(str(dest))) == 1


def test_a_stop_signal_waits_for_the_end_of_a_deferred_block_and_repeats_are_ignored():
    previous = signal.getsignal(signal.SIGTERM)
    finished = []
    with stop_signals.StopOnSignal():
        with pytest.raises(stop_signals.Stopped) as stopped:
            with stop_signals.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # The handler runs between bytecodes of the main thread.
                finished.append(True)
        assert finished and stopped.value.status == 130 and str(stopped.value) == "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)  # A repeat: ignored while the clean-up runs.
        time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is previous  # The previous handlers are back.
    with stop_signals.StopOnSignal(), pytest.raises(stop_signals.Stopped) as stopped:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
    assert stopped.value.status == 143 and not stopped.value.complete


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
@pytest.mark.parametrize("signum, replace", [(signal.SIGTERM, True), (signal.SIGINT, False)])
def test_a_stop_signal_to_the_whole_group_removes_the_unfinished_output(tmp_path, signum, replace):
    """As SLURM, `timeout` or Ctrl-C deliver it: to the tool and its worker processes at once. The workers leave it
    to the tool, which removes its unfinished output (and the folder it made for it), keeps an old --dest that
    --force was to replace, and exits 128 + signum."""
    dest = tmp_path / "datasets" / "shapes.zip"
    if replace:
        dest.parent.mkdir()
        dest.write_bytes(b"the previous dataset")
    command = [sys.executable, str(ROOT / "dataset_tool.py"), "--source=demo:shapes", f"--dest={dest}",
               "--resolution=256x256", "--workers=2", "--force"]  # fmt: skip
    proc = subprocess.Popen(
        command, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # Until images are being written by running workers.
        partial = list(dest.parent.glob("shapes.zip.tmp-*")) if dest.parent.exists() else []
        if partial and partial[0].stat().st_size > 100_000 and len(psutil.Process(proc.pid).children(True)) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    os.killpg(proc.pid, signum)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, output
    name = signal.Signals(signum).name
    outcome = f"{dest} is unchanged" if replace else f"nothing was written to {dest}"
    assert f"Stopped by {name}: removed the unfinished output; {outcome}." in output
    assert "Traceback" not in output and "worker process died" not in output, output
    if replace:
        assert sorted(os.listdir(dest.parent)) == ["shapes.zip"] and dest.read_bytes() == b"the previous dataset"
    else:
        assert entries(tmp_path) == []
    assert group_is_gone(proc.pid), "a worker outlived the stopped tool"


# ----------------------------------------------------------------------------------------------------------------
# Worker processes, compression, bounded memory.


def make_folder(src: Path, count: int, size: int = 8, labelled: bool = True) -> list[np.ndarray]:
    """`count` random RGB images in `src` (with class labels), enough for the tool to start a pool of workers."""
    pixels = [random_pixels(size, size, 3, seed=i) for i in range(count)]
    for i, image in enumerate(pixels):
        save_image(src / f"{i:03d}.png", image)
    if labelled:
        (src / "dataset.json").write_text(json.dumps({"labels": [[f"{i:03d}.png", i % 5] for i in range(count)]}))
    return pixels


def test_output_is_identical_for_any_worker_count(tmp_path, out):
    src = tmp_path / "src"
    count = 2 * MIN_IMAGES_PER_WORKER + 6
    make_folder(src, count, size=16, labelled=False)
    (src / "040-bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # Skipped, in order, by either path.
    names = sorted(path.name for path in src.iterdir())
    (src / "dataset.json").write_text(json.dumps({"labels": [[name, i % 5] for i, name in enumerate(names)]}))
    outputs = {}
    for workers in (1, 2):
        result = run_ok("--source", src, "--dest", out / f"w{workers}.zip", "--resolution", "8x8", "--workers", workers)
        assert f"converting in {workers} process(es)" in result.output
        assert f"Wrote {count} images" in result.output and "040-bad.png" in result.output
        outputs[workers] = (out / f"w{workers}.zip").read_bytes()
    assert outputs[1] == outputs[2]
    dataset, _, labels = read_all(out / "w2.zip")
    expected = [i % 5 for i, name in enumerate(names) if name != "040-bad.png"]
    assert len(dataset) == count and [int(label.argmax()) for label in labels] == expected

    for workers in (1, 2):  # Stopping early drops the images already handed to the workers.
        run_ok(
            "--source",
            src,
            "--dest",
            out / f"m{workers}",
            "--resolution",
            "8x8",
            "--workers",
            workers,
            "--max-images",
            50,
        )
    assert len(ImageFolderDataset(str(out / "m2"))) == 50
    for name in sorted(os.listdir(out / "m1" / "00000")):
        assert (out / "m1" / "00000" / name).read_bytes() == (out / "m2" / "00000" / name).read_bytes()


def test_worker_errors_reach_the_user_and_leave_nothing(tmp_path, out):
    src = tmp_path / "src"
    make_folder(src, 2 * MIN_IMAGES_PER_WORKER, labelled=False)
    save_image(src / "050-alpha.png", np.zeros((8, 8, 4), dtype=np.uint8))  # Refused in a worker process.
    run_fails("--source", src, "--dest", out / "d.zip", "--workers", 2, match=["050-alpha.png", "alpha", "--channels"])
    (src / "050-alpha.png").write_bytes(b"not a png")
    run_fails("--source", src, "--dest", out / "d.zip", "--workers", 2, "--strict", match=["050-alpha.png", "--strict"])
    assert entries(out) == []


def test_small_sources_convert_in_this_process():
    cfg = ToolConfig("x", "y.zip", None, None, None, None, False, False, False, workers=8)
    assert worker_count(cfg, num_images=10) == 1
    assert worker_count(cfg, num_images=2 * MIN_IMAGES_PER_WORKER) == 2
    assert worker_count(cfg, num_images=10**6) == 8
    default = ToolConfig("x", "y.zip", None, None, None, None, False, False, False)
    assert worker_count(default, num_images=10**6) == available_cores()


@pytest.mark.parametrize("level", [0, 1, 9])
def test_compress_level_is_lossless(tmp_path, out, level):
    src = tmp_path / "src"
    gradient = np.repeat(np.arange(64, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    pixels = [
        gradient,
        random_pixels(64, 64, 3, seed=1),
        random_pixels(64, 64, 1, seed=2)[:, :, None].repeat(3, axis=2),
    ]
    for i, image in enumerate(pixels):
        save_image(src / f"{i}.png", image)
    run_ok("--source", src, "--dest", out / "d.zip", "--compress-level", level)
    _, images, _ = read_all(out / "d.zip")
    for got, expected in zip(images, pixels, strict=True):
        np.testing.assert_array_equal(got, chw(expected))
    with zipfile.ZipFile(out / "d.zip") as archive:
        size = archive.getinfo("00000/img00000000.png").file_size
    assert (size > 64 * 64 * 3) == (level == 0)  # Level 0 stores the pixels; the others compress the gradient.


@pytest.mark.parametrize("level", [0, 1])
@pytest.mark.parametrize("shape", [(5, 3), (7, 4, 3), (1, 1), (2, 9, 3)], ids=["gray", "rgb", "gray-1px", "rgb-row"])
def test_fast_png_encoder_decodes_exactly_with_pillow_and_pyspng(shape, level):
    pixels = np.random.default_rng(level).integers(0, 256, size=shape, dtype=np.uint8)
    data = encode_png_fast(pixels, level)
    with PIL.Image.open(io.BytesIO(data)) as image:
        assert image.mode == ("L" if len(shape) == 2 else "RGB")
        np.testing.assert_array_equal(np.asarray(image), pixels)
    pyspng = pytest.importorskip("pyspng")
    np.testing.assert_array_equal(pyspng.load(data).reshape(shape), pixels)


def test_default_compress_level(tmp_path, out):
    src = tmp_path / "src"
    make_folder(src, 3)
    run_ok("--source", src, "--dest", out / "default.zip")
    run_ok("--source", src, "--dest", out / "explicit.zip", "--compress-level", DEFAULT_COMPRESS_LEVEL)
    assert (out / "default.zip").read_bytes() == (out / "explicit.zip").read_bytes()


def test_worker_and_compression_options_are_checked(tmp_path, out):
    src = tmp_path / "src"
    make_folder(src, 2)
    run_fails("--source", src, "--dest", out / "d.zip", "--workers", 0, match=["--workers", "0"])
    run_fails("--source", src, "--dest", out / "d.zip", "--workers", "many", match=["--workers", "many"])
    run_fails("--source", src, "--dest", out / "d.zip", "--compress-level", 10, match=["--compress-level", "0<=x<=9"])
    run_fails("--source", src, "--dest", out / "d.zip", "--compress-level", -1, match=["--compress-level"])
    run_ok("--source", src, "--dest", out / "d.zip")
    run_fails("--source", out / "d.zip", "--info", "--workers", 2, match=["--info", "--workers"])
    run_fails("--source", out / "d.zip", "--info", "--compress-level", 0, match=["--info", "--compress-level"])
    assert entries(out) == ["d.zip"]


def test_in_flight_window_is_bounded_and_ordered():
    """Structural check of bounded memory: never more than `window` images started and not yet consumed."""
    started: list[int] = []
    consumed: list[int] = []
    most_in_flight = 0

    def start(item):
        nonlocal most_in_flight
        started.append(item.name)
        most_in_flight = max(most_in_flight, len(started) - len(consumed))
        return finished(item.name * 10)

    items = (SourceItem(i, None, None) for i in range(50))  # Lazy: read only as the window allows.
    for item, future in in_order(items, start, window=3):
        assert future.result() == item.name * 10
        consumed.append(item.name)
        assert len(started) - len(consumed) <= 2  # The consumer is never more than the window behind.
    assert consumed == list(range(50)) and most_in_flight == 3

    pending: list[concurrent.futures.Future] = []

    def start_pending(item):
        pending.append(concurrent.futures.Future())
        return pending[-1]

    window = in_order((SourceItem(i, None, None) for i in range(50)), start_pending, 4)
    first_item, _ = next(window)
    assert first_item.name == 0 and len(pending) == 4
    window.close()  # A consumer that stops early (--max-images, an error) cancels the queued work.
    assert [future.cancelled() for future in pending] == [False, True, True, True]


def test_info_lists_every_damaged_image(tmp_path, out):
    src = tmp_path / "src"
    make_folder(src, 6, labelled=False)
    run_ok("--source", src, "--dest", out / "d.zip")
    with zipfile.ZipFile(out / "d.zip") as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["00000/img00000002.png"] = b"\x89PNG\r\n\x1a\n garbage"
    members["00000/img00000004.png"] = encoded(random_pixels(16, 16, 3, seed=0), "PNG")
    members["dataset.json"] = b"{not json"
    with zipfile.ZipFile(out / "bad.zip", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    result = run_fails("--source", out / "bad.zip", "--info", match=["Damaged:     2 of the 6 images read"])
    assert "img00000002.png" in result.output and "img00000004.png has 16x16 pixels" in result.output
    assert "Labels:      unusable:" in result.output and "--cond=1 would fail" in result.output
    assert "re-create it with dataset_tool.py" in result.output
