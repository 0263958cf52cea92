"""gen_video.py hands keyframe seeds to grid cells as the published StyleGAN3 gen_video.py does, and loops."""

import os
import pickle

import click
import helpers
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gen_video
from training.inference import parse_grid


def tiny_G(c_dim: int = 0) -> torch.nn.Module:
    """An 8x8 StyleGAN2 generator with a few thousand parameters and a non-zero w_avg (so truncation matters)."""
    torch.manual_seed(0)
    G = helpers.tiny_stylegan2(c_dim=c_dim).eval()
    G.mapping.w_avg.copy_(torch.randn_like(G.mapping.w_avg))
    return G


def w_of_seed(G: torch.nn.Module, seed: int, psi: float, label: torch.Tensor) -> np.ndarray:
    """The w of one seed, mapped on its own (not batched with the others): [num_ws, w_dim]."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim))
    with torch.no_grad():
        return G.mapping(z, label, truncation_psi=psi)[0].numpy()


@pytest.fixture(scope="module")
def G() -> torch.nn.Module:
    return tiny_G()


@pytest.fixture(scope="module")
def snapshot(G, tmp_path_factory) -> str:
    """A snapshot pickle holding only our classes and plain containers, as the snapshot loader accepts."""
    path = tmp_path_factory.mktemp("net") / "network-snapshot-000000.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G": G, "D": None, "G_ema": G, "augment_pipe": None, "training_set_kwargs": {}}, f)
    return str(path)


# ----------------------------------------------------------------------------
# --grid


@pytest.mark.parametrize("text", ["4x3", "4,3", "4X3", " 4x3 "])
def test_grid_takes_columns_then_rows_in_both_spellings(text):
    assert parse_grid(text) == (4, 3)


@pytest.mark.parametrize("text", ["4", "0x2", "2,0", "a,b", "4x3x2", "4x3,2", "-1x2", "x", "4,", "²x2", ""])
def test_bad_grid_is_refused_naming_the_expected_form(text):
    with pytest.raises(click.BadParameter, match=r"expected WxH or W,H"):
        parse_grid(text)


def test_bad_grid_is_refused_at_the_cli(snapshot, tmp_path):
    result = CliRunner().invoke(
        gen_video.main, [f"--network={snapshot}", "--seeds=0-3", "--grid=a,b", f"--output={tmp_path / 'v.mp4'}"]
    )
    assert result.exit_code == 2 and "expected WxH or W,H" in result.output and "'a,b'" in result.output


# ----------------------------------------------------------------------------
# Keyframe seeds and their w.


@pytest.mark.parametrize(
    "seeds, grid, num_keyframes",
    [
        (list(range(32)), (4, 2), None),  # The README example: 4 keyframes per cell.
        ([7, 3, 11, 5, 2], (3, 2), 2),  # Fewer seeds than keyframes: they repeat; a grid that is not square.
        (list(range(10, 16)), (1, 3), None),  # One column.
    ],
)
def test_each_cell_gets_consecutive_seeds_as_its_keyframes(G, seeds, grid, num_keyframes):
    W, H = grid
    K = num_keyframes or len(seeds) // (W * H)
    psi = 0.7
    label = torch.zeros([1, 0])
    ws = gen_video.keyframe_ws(G, seeds, grid, num_keyframes, psi, label)
    assert ws.shape == (H, W, K, G.num_ws, G.w_dim)
    for y in range(H):
        for x in range(W):
            for k in range(K):
                seed = seeds[((y * W + x) * K + k) % len(seeds)]
                np.testing.assert_allclose(ws[y, x, k], w_of_seed(G, seed, psi, label), rtol=1e-5, atol=1e-6)


def test_keyframe_seeds_are_cell_major():
    # 32 seeds on a 4x2 grid: row 0 holds cells with seeds 0-3, 4-7, 8-11, 12-15; row 1 the rest.
    all_seeds = gen_video.keyframe_seeds(list(range(32)), (4, 2), None, None)
    cells = np.array(all_seeds).reshape(2, 4, 4)  # [rows, cols, keyframes]
    assert cells[0, 1].tolist() == [4, 5, 6, 7] and cells[1, 0].tolist() == [16, 17, 18, 19]


def test_shuffle_seed_shuffles_the_expanded_list_with_a_numpy_random_state(G):
    seeds, grid, K, shuffle_seed = [1, 2, 3, 4, 5], (2, 2), 3, 123
    expected = [seeds[i % len(seeds)] for i in range(K * 4)]
    np.random.RandomState(shuffle_seed).shuffle(expected)
    assert expected != [seeds[i % len(seeds)] for i in range(K * 4)]  # The shuffle does reorder this list.
    assert gen_video.keyframe_seeds(seeds, grid, K, shuffle_seed) == expected

    label = torch.zeros([1, 0])
    ws = gen_video.keyframe_ws(G, seeds, grid, K, 1.0, label, shuffle_seed=shuffle_seed)
    for i, seed in enumerate(expected):
        y, x, k = np.unravel_index(i, (2, 2, K))
        np.testing.assert_allclose(ws[y, x, k], w_of_seed(G, seed, 1.0, label), rtol=1e-5, atol=1e-6)


def test_seeds_that_do_not_fill_the_grid_need_num_keyframes():
    with pytest.raises(click.ClickException, match="not a multiple of the 4x2 grid; pass --num-keyframes"):
        gen_video.keyframe_seeds(list(range(10)), (4, 2), None, None)


def test_class_label_conditions_the_keyframes():
    G = tiny_G(c_dim=3)
    label = torch.zeros([1, 3])
    label[0, 2] = 1
    ws = gen_video.keyframe_ws(G, [4, 9], (1, 1), None, 1.0, label)
    np.testing.assert_allclose(ws[0, 0, 1], w_of_seed(G, 9, 1.0, label), rtol=1e-5, atol=1e-6)
    other = torch.zeros([1, 3])
    other[0, 0] = 1
    assert not np.allclose(ws[0, 0, 1], w_of_seed(G, 9, 1.0, other))


# ----------------------------------------------------------------------------
# Interpolation.


def test_spline_passes_through_each_keyframe_and_loops():
    ws = np.random.RandomState(0).randn(2, 3, 4, 5, 6).astype(np.float32)  # [rows, cols, keyframes, num_ws, w_dim]
    splines = gen_video.interpolators(ws)
    for y in range(2):
        for x in range(3):
            s = splines[y][x]
            for k in range(4):
                np.testing.assert_allclose(s(k), ws[y, x, k], rtol=0, atol=1e-6)
            np.testing.assert_allclose(s(4), s(0), rtol=0, atol=1e-6)  # Time K is keyframe 0 again.
            np.testing.assert_allclose(s(4 - 1e-4), s(-1e-4), rtol=0, atol=1e-5)  # No jump across the wrap.
            np.testing.assert_allclose(s(1, 1), s(1 + 4, 1), rtol=0, atol=1e-5)  # Same slope one loop later.
            assert not np.allclose(s(0.5), ws[y, x, 0]) and not np.allclose(s(0.5), ws[y, x, 1])


# ----------------------------------------------------------------------------
# End to end.


class RecordingWriter:
    """Stands in for the imageio writer: keeps the frames exactly, without the codec's loss."""

    def __init__(self):
        self.frames = []

    def open(self, path: str, fps: int) -> "RecordingWriter":
        """Replaces gen_video.open_writer; creates the (empty) file that main renames to --output."""
        open(path, "wb").close()
        return self

    def append_data(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())

    def close(self) -> None:
        pass


def test_frame_k_times_w_frames_shows_keyframe_k_in_every_cell(G, snapshot, tmp_path, monkeypatch):
    writer = RecordingWriter()
    monkeypatch.setattr(gen_video, "open_writer", writer.open)
    result = CliRunner().invoke(
        gen_video.main,
        [
            f"--network={snapshot}",
            "--seeds=0-11",
            "--grid=3,2",
            "--w-frames=3",
            "--trunc=0.5",
            "--device=cpu",
            f"--output={tmp_path / 'v.mp4'}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(writer.frames) == 2 * 3  # 12 seeds over 6 cells: 2 keyframes, 3 frames each.
    label = torch.zeros([1, 0])
    for k in range(2):
        # Cell (y, x) shows seed (y*3 + x)*2 + k; the images are laid out row by row.
        w = torch.from_numpy(np.stack([w_of_seed(G, (cell * 2 + k), 0.5, label) for cell in range(6)]))
        with torch.no_grad():
            img = G.synthesis(w, noise_mode="const")  # [6, 3, 8, 8]
        img = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
        expected = img.reshape(2, 3, 3, 8, 8).transpose(0, 3, 1, 4, 2).reshape(16, 24, 3)
        frame = writer.frames[k * 3]
        assert frame.shape == (16, 24, 3)
        # At most 1 apart: the batched and the one-by-one mapping may round differently before uint8.
        assert np.abs(frame.astype(int) - expected.astype(int)).max() <= 1
    assert not np.array_equal(writer.frames[0], writer.frames[1])  # In between, the video moves.
    assert os.listdir(tmp_path) == ["v.mp4"]


def test_cli_writes_an_mp4_with_num_keyframes_times_w_frames_frames(snapshot, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    video = tmp_path / "out" / "lerp.mp4"
    result = CliRunner().invoke(
        gen_video.main,
        [
            f"--network={snapshot}",
            "--seeds=0-3",
            "--grid=2x1",
            "--w-frames=3",
            "--shuffle-seed=5",
            "--device=cpu",
            f"--output={video}",
        ],
    )
    assert result.exit_code == 0, result.output
    frames = iio.imread(video)
    assert frames.shape[0] == 2 * 3 and frames.shape[3] == 3 and frames.std() > 0
    assert os.listdir(video.parent) == ["lerp.mp4"]  # No temporary file left behind.
