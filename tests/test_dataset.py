"""Tests for training/dataset.py: reading folders and zips of PNGs exactly as training will."""

import io
import json
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from training import dataset as dataset_module
from training.dataset import DatasetError, ImageFolderDataset


def random_images(count: int, channels: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """Random uint8 images [N, C, H, W]."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, channels, size, size), dtype=np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a [C, H, W] uint8 array as PNG."""
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)  # [C, H, W] -> [H, W(, C)]
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_dataset(root: Path, images: np.ndarray, labels=None, as_zip: bool = False) -> tuple[Path, list[str]]:
    """Write images in the dataset_tool layout (plus dataset.json when `labels` is given); return path and names."""
    names = [f"{i // 3:05d}/img{i:08d}.png" for i in range(len(images))]  # Several subfolders.
    files = {name: png_bytes(image) for name, image in zip(names, images, strict=True)}
    if labels is not None:
        files["dataset.json"] = json.dumps({"labels": [[n, label] for n, label in zip(names, labels, strict=True)]})
    if as_zip:
        path = root.with_suffix(".zip")
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, data in reversed(files.items()):  # Out of order: the dataset must sort.
                archive.writestr(name, data)
    else:
        path = root
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return path, names


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "rgb"])
def test_reads_exact_pixels_in_sorted_order(tmp_path, as_zip, channels):
    images = random_images(7, channels)
    path, names = write_dataset(tmp_path / "mydata", images, as_zip=as_zip)
    with ImageFolderDataset(str(path)) as dataset:
        assert len(dataset) == 7
        assert dataset.name == "mydata"
        assert dataset.image_fnames == names
        assert dataset.image_shape == [channels, 8, 8]
        assert dataset.num_channels == channels and dataset.resolution == 8
        assert not dataset.has_labels and dataset.label_shape == [0]
        for i in range(7):
            image, label = dataset[i]
            assert image.dtype == np.uint8 and label.dtype == np.float32 and label.shape == (0,)
            np.testing.assert_array_equal(image, images[i])


def test_onehot_labels_and_use_labels(tmp_path):
    images = random_images(4, 3)
    path, _ = write_dataset(tmp_path / "d", images, labels=[2, 0, 5, 2], as_zip=True)
    dataset = ImageFolderDataset(str(path), use_labels=True)
    assert dataset.has_labels and dataset.has_onehot_labels
    assert dataset.label_shape == [6] and dataset.label_dim == 6
    np.testing.assert_array_equal(dataset[2][1], np.eye(6, dtype=np.float32)[5])
    assert dataset.get_label(0).dtype == np.float32
    assert int(dataset.get_details(1).raw_label) == 0

    hidden = ImageFolderDataset(str(path), use_labels=False)
    assert not hidden.has_labels and not hidden.has_onehot_labels
    assert hidden.label_dim == 0 and hidden[0][1].shape == (0,)


def test_float_and_null_labels(tmp_path):
    images = random_images(3, 3)
    vectors = [[0.5, -1.0], [0.0, 2.0], [1.5, 1.5]]
    path, _ = write_dataset(tmp_path / "vec", images, labels=vectors)
    dataset = ImageFolderDataset(str(path), use_labels=True)
    assert dataset.label_shape == [2] and not dataset.has_onehot_labels
    np.testing.assert_array_equal(dataset[1][1], np.float32([0.0, 2.0]))

    (tmp_path / "null").mkdir()
    path, _ = write_dataset(tmp_path / "null", images)
    (path / "dataset.json").write_text('{"labels": null}')
    assert not ImageFolderDataset(str(path), use_labels=True).has_labels


def test_missing_label_is_an_error(tmp_path):
    path, names = write_dataset(tmp_path / "d", random_images(3, 3), labels=[0, 1, 2])
    (path / "dataset.json").write_text(json.dumps({"labels": [[names[0], 0]]}))
    with pytest.raises(DatasetError, match=names[1]):
        ImageFolderDataset(str(path), use_labels=True)
    with pytest.warns(UserWarning, match=names[1]):
        assert len(ImageFolderDataset(str(path))) == 3  # Unconditional training only warns.


def test_xflip_appends_mirrored_copies(tmp_path):
    images = random_images(3, 3)
    path, _ = write_dataset(tmp_path / "d", images, labels=[0, 1, 2], as_zip=True)
    dataset = ImageFolderDataset(str(path), xflip=True, use_labels=True)
    assert len(dataset) == 6
    for i in range(3):
        np.testing.assert_array_equal(dataset[i][0], images[i])
        np.testing.assert_array_equal(dataset[i + 3][0], images[i][:, :, ::-1])
        np.testing.assert_array_equal(dataset[i + 3][1], dataset[i][1])
        assert dataset[i + 3][0].flags.c_contiguous
        assert dataset.get_details(i + 3).xflip and not dataset.get_details(i).xflip
        assert dataset.get_details(i + 3).raw_idx == i


def test_max_size_is_a_deterministic_subset(tmp_path):
    images = random_images(20, 1)
    path, _ = write_dataset(tmp_path / "d", images, as_zip=True)

    def picked(**kwargs):
        dataset = ImageFolderDataset(str(path), max_size=5, **kwargs)
        return [dataset.get_details(i).raw_idx for i in range(len(dataset))]

    assert len(picked()) == 5
    assert picked() == picked() == sorted(picked())
    assert picked(random_seed=1) != picked(random_seed=0)
    subset = ImageFolderDataset(str(path), max_size=5)
    for i, raw_idx in enumerate(picked()):
        np.testing.assert_array_equal(subset[i][0], images[raw_idx])
    assert len(ImageFolderDataset(str(path), max_size=100)) == 20


def test_resolution_mismatch_names_path_and_sizes(tmp_path):
    path, _ = write_dataset(tmp_path / "d", random_images(2, 3), as_zip=True)
    with pytest.raises(DatasetError, match=r"d\.zip.*8x8.*16x16"):
        ImageFolderDataset(str(path), resolution=16)
    assert ImageFolderDataset(str(path), resolution=8).resolution == 8


def test_differently_shaped_image_names_the_file(tmp_path):
    path, names = write_dataset(tmp_path / "d", random_images(3, 3))
    (path / names[2]).write_bytes(png_bytes(random_images(1, 3, size=16)[0]))
    with pytest.raises(DatasetError, match=f"{names[2]} has 16x16 pixels but the first image is 8x8"):
        ImageFolderDataset(str(path))  # The sample checked at open includes the last image.
    dataset = ImageFolderDataset(str(path), check=False)
    dataset[1]  # noqa: B018 - reading a good image works
    with pytest.raises(DatasetError, match=names[2]) as error:
        dataset[2]  # noqa: B018
    assert "dataset_tool.py" in str(error.value) and "--info" in str(error.value)


def test_rgba_is_refused_with_advice(tmp_path):
    (tmp_path / "d").mkdir()
    PIL.Image.new("RGBA", (4, 4)).save(tmp_path / "d" / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png.*--channels"):
        ImageFolderDataset(str(tmp_path / "d"))


def test_hidden_files_and_missing_paths(tmp_path):
    path, names = write_dataset(tmp_path / "d", random_images(2, 3))
    (path / "__MACOSX").mkdir()
    (path / "__MACOSX" / "._img.png").write_bytes(b"not an image")
    (path / ".thumb.png").write_bytes(b"not an image")
    assert ImageFolderDataset(str(path)).image_fnames == names
    with pytest.raises(DatasetError, match="no such"):
        ImageFolderDataset(str(tmp_path / "missing.zip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        ImageFolderDataset(str(tmp_path / "empty"))


def test_pickles_and_loads_in_dataloader_workers(tmp_path):
    images = random_images(8, 3)
    path, _ = write_dataset(tmp_path / "d", images, labels=[0, 1] * 4, as_zip=True)
    dataset = ImageFolderDataset(str(path), use_labels=True)
    dataset[0]  # noqa: B018 - opens the zip in this process before pickling
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone[3][0], images[3])

    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2, shuffle=False)
    batches = list(loader)
    got = torch.cat([image for image, _ in batches]).numpy()
    labels = torch.cat([label for _, label in batches]).numpy()
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(labels.argmax(axis=1), [0, 1] * 4)
    dataset.close()


def test_pil_fallback_matches_pyspng(tmp_path, monkeypatch):
    pytest.importorskip("pyspng")
    for channels in (1, 3):
        images = random_images(3, channels, seed=channels)
        path, _ = write_dataset(tmp_path / f"c{channels}", images, as_zip=True)
        fast = [ImageFolderDataset(str(path))[i][0] for i in range(3)]
        with monkeypatch.context() as patch:
            patch.setattr(dataset_module, "pyspng", None)
            slow = [ImageFolderDataset(str(path))[i][0] for i in range(3)]
        for a, b, expected in zip(fast, slow, images, strict=True):
            np.testing.assert_array_equal(a, expected)
            np.testing.assert_array_equal(b, expected)


# ----------------------------------------------------------------------------------------------------------------
# Damaged data: found when the dataset is opened where that is affordable, otherwise at the read, always named.


def forge_member_size(path: Path, member: str, size: int) -> None:
    """Make the central directory of zip `path` claim `size` bytes for `member`, as a damaged zip might."""
    data = bytearray(path.read_bytes())
    pos = data.find(b"PK\x01\x02")  # A central directory entry: sizes at +20 and +24, name length at +28.
    while pos != -1:
        name_length = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46 : pos + 46 + name_length].decode() == member:
            struct.pack_into("<II", data, pos + 20, size, size)  # Compressed and uncompressed size.
        pos = data.find(b"PK\x01\x02", pos + 46)
    path.write_bytes(bytes(data))


def test_member_claiming_gigabytes_is_refused_unread(tmp_path, monkeypatch):
    path, names = write_dataset(tmp_path / "d", random_images(4, 3), as_zip=True)
    forge_member_size(path, names[2], 2 << 30)
    with pytest.raises(DatasetError, match=rf"d\.zip: {names[2]} claims 2,147,483,648 bytes.*--info"):
        ImageFolderDataset(str(path))

    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile, "open", lambda self, name, *a, **k: opened.append(name) or real_open(self, name, *a, **k)
    )
    dataset = ImageFolderDataset(str(path), check=False)
    with pytest.raises(DatasetError, match=f"{names[2]} holds more than"):
        dataset[2]  # noqa: B018
    assert names[2] not in opened  # Refused on the central directory's word, not after reading 2 GiB.
    np.testing.assert_array_equal(dataset[3][0], random_images(4, 3)[3])


def test_damaged_zip_and_other_files(tmp_path):
    path, _ = write_dataset(tmp_path / "d", random_images(3, 3), as_zip=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # A truncated download: no central directory.
    with pytest.raises(DatasetError, match=r"d\.zip: the zip file is damaged"):
        ImageFolderDataset(str(path))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not a folder or a zip file"):
        ImageFolderDataset(str(tmp_path / "notes.txt"))


def test_corrupt_image_is_found_at_open_or_at_the_read(tmp_path):
    path, names = write_dataset(tmp_path / "d", random_images(40, 3))
    garbage = b"\x89PNG\r\n\x1a\n but then garbage"
    (path / names[39]).write_bytes(garbage)
    with pytest.raises(DatasetError, match=f"cannot read {names[39]}"):
        ImageFolderDataset(str(path))  # The last image is in the sample decoded at open.
    (path / names[39]).write_bytes(png_bytes(random_images(1, 3)[0]))
    (path / names[1]).write_bytes(garbage)  # Not in the sample: found when read.
    dataset = ImageFolderDataset(str(path))
    with pytest.raises(DatasetError, match=f"cannot read {names[1]}.*dataset_tool.py --source=.*--info"):
        dataset[1]  # noqa: B018


def test_damaged_image_in_a_dataloader_worker_is_a_clean_dataset_error(tmp_path):
    images = random_images(6, 3)
    path, names = write_dataset(tmp_path / "d", images, as_zip=True)
    data = bytearray(path.read_bytes())
    start = data.index(png_bytes(images[4]))
    data[start + 40 : start + 60] = bytes(20)  # Corrupt pixel data inside the stored member: its CRC fails.
    path.write_bytes(bytes(data))
    dataset = ImageFolderDataset(str(path), check=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, shuffle=False)
    with pytest.raises(DatasetError) as error:
        list(loader)
    message = str(error.value)
    assert message.startswith(f"{path}: cannot read {names[4]}"), message
    assert "Traceback" not in message and "--info" in message
    assert "Traceback" in error.value.traceback  # The worker's traceback is kept for debugging.


def test_dataset_error_pickles_with_its_advice():
    error = pickle.loads(pickle.dumps(DatasetError("x.zip: bad", "re-create it")))
    assert (error.problem, error.advice, str(error)) == ("x.zip: bad", "re-create it", "x.zip: bad; re-create it")


def test_malformed_labels_only_matter_when_used(tmp_path):
    path, _ = write_dataset(tmp_path / "d", random_images(3, 3), labels=[0, 1, 2])
    (path / "dataset.json").write_text('{"labels": [["00000/img00000000.png", 0], oops')
    with pytest.warns(UserWarning, match=r"dataset\.json.*ignored because they are not used"):
        dataset = ImageFolderDataset(str(path))
    assert len(dataset) == 3 and not dataset.has_labels and dataset[0][1].shape == (0,)
    with pytest.raises(DatasetError, match=r"d/dataset\.json: expected"):
        ImageFolderDataset(str(path), use_labels=True)


def test_importing_the_dataset_module_does_not_import_torch():
    code = "import sys, training.dataset, dataset_tool; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]).returncode == 0


def test_every_png_header_is_checked_when_asked(tmp_path):
    images = random_images(40, 3)
    path, names = write_dataset(tmp_path / "d", images)
    (path / names[1]).write_bytes(png_bytes(random_images(1, 3, size=16)[0]))  # Not in the decoded sample.
    ImageFolderDataset(str(path))  # The sample alone misses it.
    with pytest.raises(DatasetError, match=f"{names[1]} has 16x16 pixels with 3 channel"):
        ImageFolderDataset(str(path), check_headers=True)
    (path / names[1]).write_bytes(png_bytes(random_images(1, 1)[0]))  # Gray among RGB.
    with pytest.raises(DatasetError, match=f"{names[1]} has 8x8 pixels with 1 channel"):
        ImageFolderDataset(str(path), check_headers=True)
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.zeros([8, 8, 3], dtype=np.uint16).astype(np.uint8)).save(buffer, format="PNG")
    header = bytearray(buffer.getvalue())
    header[24] = 16  # A 16-bit RGB header (the checks read the header only).
    (path / names[1]).write_bytes(bytes(header))
    with pytest.raises(DatasetError, match=f"{names[1]} has 16-bit samples"):
        ImageFolderDataset(str(path), check_headers=True)


def test_skip_damaged_replaces_and_counts_with_a_warning(tmp_path):
    images = random_images(40, 3)
    path, names = write_dataset(tmp_path / "d", images)
    (path / names[1]).write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    skipping = dataset_module.SkipDamaged(ImageFolderDataset(str(path)))
    image, _, skipped = skipping[0]
    assert skipped == 0 and np.array_equal(image, images[0])
    with pytest.warns(dataset_module.DamagedImageWarning, match=f"skipped a damaged image: .*{names[1]}"):
        image, _, skipped = skipping[1]
    assert skipped == 1 and np.array_equal(image, images[2])  # The next readable one.

    for name in names[2 : 3 + dataset_module.MAX_SKIPPED_IN_A_ROW]:
        (path / name).write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    with pytest.warns(dataset_module.DamagedImageWarning), pytest.raises(DatasetError, match="in a row are damaged"):
        skipping[1]  # noqa: B018
