"""Render a looping latent-interpolation video from a network snapshot."""

from __future__ import annotations

import os

import click
import numpy as np
import scipy.interpolate
import torch
from tqdm import tqdm

import dnnlib
from dnnlib.util import FiniteFloatRange
from torch_utils import images
from training.inference import class_labels, load_generator, network_option, parse_grid


def keyframe_seeds(
    seeds: list[int], grid: tuple[int, int], num_keyframes: int | None, shuffle_seed: int | None
) -> list[int]:
    """The seed of every keyframe, cell-major: cell (y, x) owns entries (y*W + x)*K .. (y*W + x)*K + K-1.

    Args:
        seeds:         The --seeds list; it repeats when there are fewer seeds than keyframes.
        grid:          (W, H): columns, then rows.
        num_keyframes: Keyframes per cell (K); None means len(seeds) / (W*H), which must then be a whole number.
        shuffle_seed:  Seed of a numpy RandomState that shuffles the expanded list; None keeps the order.

    Returns:
        K*W*H seeds, ordered as the published gen_video.py orders them, so the same command gives the same keyframes.
    """
    gw, gh = grid
    if num_keyframes is None:
        if len(seeds) % (gw * gh) != 0:
            raise click.ClickException(
                f"--seeds has {len(seeds)} seeds, not a multiple of the {gw}x{gh} grid; pass --num-keyframes"
            )
        num_keyframes = len(seeds) // (gw * gh)
    all_seeds = [seeds[i % len(seeds)] for i in range(num_keyframes * gw * gh)]
    if shuffle_seed is not None:
        np.random.RandomState(shuffle_seed).shuffle(all_seeds)  # In place, as the published tool does.
    return all_seeds


def keyframe_ws(
    G: torch.nn.Module,
    seeds: list[int],
    grid: tuple[int, int],
    num_keyframes: int | None,
    truncation_psi: float,
    label: torch.Tensor,
    shuffle_seed: int | None = None,
) -> np.ndarray:
    """The w of every keyframe of every grid cell, [rows, cols, keyframes, num_ws, w_dim].

    Each cell gets consecutive entries of `keyframe_seeds` as its keyframes, row by row (as in the published tool);
    z = RandomState(seed).randn(z_dim) per entry.
    """
    gw, gh = grid
    all_seeds = keyframe_seeds(seeds, grid, num_keyframes, shuffle_seed)
    z = torch.from_numpy(np.stack([np.random.RandomState(seed).randn(G.z_dim) for seed in all_seeds]))
    with torch.no_grad():
        ws = G.mapping(z.to(label.device), label.expand(len(all_seeds), -1), truncation_psi=truncation_psi)
    return ws.cpu().numpy().reshape(gh, gw, len(all_seeds) // (gw * gh), *ws.shape[1:])


def interpolators(ws: np.ndarray) -> list[list[scipy.interpolate.CubicSpline]]:
    """A periodic cubic spline through each cell's keyframes, so the video loops without a jump."""
    rows, cols, num_keyframes = ws.shape[:3]
    times = np.arange(num_keyframes + 1)
    closed = np.concatenate([ws, ws[:, :, :1]], axis=2)  # The first keyframe again at the end.
    return [
        [scipy.interpolate.CubicSpline(times, closed[r, c], axis=0, bc_type="periodic") for c in range(cols)]
        for r in range(rows)
    ]


def render_frame(G: torch.nn.Module, splines, t: float, noise_mode: str, device: torch.device) -> np.ndarray:
    """One video frame at keyframe time `t`: the grid of images, uint8 [rows*H, cols*W, C]."""
    w = torch.from_numpy(np.stack([np.asarray(s(t)) for row in splines for s in row])).to(device, torch.float32)
    with torch.no_grad():
        img = G.synthesis(w, noise_mode=noise_mode)
    frame = images.tile(images.to_uint8(img).cpu().numpy(), grid=(len(splines[0]), len(splines)))
    return np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame


def open_writer(path: str, fps: int):
    """An imageio video writer for `path`, or a ClickException explaining how to get the ffmpeg plugin."""
    import imageio

    try:
        return imageio.get_writer(path, mode="I", fps=fps, codec="libx264", bitrate="16M")
    except (ImportError, RuntimeError, ValueError) as error:
        raise click.ClickException(
            f"Cannot write {path} ({error}). Videos need imageio's ffmpeg plugin: pip install imageio-ffmpeg "
            f'(or pip install -e ".[video]")'
        ) from None


@click.command(context_settings=dict(terminal_width=120, max_content_width=120))
@network_option("network_pkl")
@click.option("--seeds", metavar="LIST", type=dnnlib.util.parse_range, required=True, help="Seeds, e.g. '0-31'.")
@click.option(
    "--grid",
    metavar="WxH",
    type=parse_grid,
    default="1x1",
    show_default=True,
    help="Grid of videos: columns x rows, as WxH or W,H.",
)
@click.option(
    "--num-keyframes", metavar="INT", type=click.IntRange(min=1), help="Keyframes per cell  [default: seeds/cells]."
)
@click.option(
    "--shuffle-seed",
    metavar="INT",
    type=click.IntRange(min=0, max=2**32 - 1),
    help="Shuffle the keyframe seeds with this seed  [default: no shuffle].",
)
@click.option(
    "--w-frames",
    metavar="INT",
    type=click.IntRange(min=1),
    default=120,
    show_default=True,
    help="Frames between keyframes.",
)
@click.option(
    "--trunc",
    "truncation_psi",
    metavar="FLOAT",
    type=FiniteFloatRange(),
    default=1,
    show_default=True,
    help="Truncation psi.",
)
@click.option("--class", "class_idx", metavar="INT", type=click.IntRange(min=0), help="Class label (conditional nets).")
@click.option(
    "--noise-mode",
    type=click.Choice(["const", "random", "none"]),
    default="const",
    show_default=True,
    help="Noise mode.",
)
@click.option("--fps", metavar="INT", type=click.IntRange(min=1), default=60, show_default=True, help="Frame rate.")
@click.option("--output", metavar="FILE.mp4", type=click.Path(dir_okay=False), required=True, help="Output video.")
@click.option("--device", "device_name", metavar="DEVICE", help="Torch device  [default: cuda if available].")
def main(
    network_pkl: str,
    seeds: list[int],
    grid: tuple[int, int],
    num_keyframes: int | None,
    shuffle_seed: int | None,
    w_frames: int,
    truncation_psi: float,
    class_idx: int | None,
    noise_mode: str,
    fps: int,
    output: str,
    device_name: str | None,
) -> None:
    """Render a looping video that interpolates between the latents of the seeds (cubic splines in W).

    The keyframe seeds are handed out as in the published StyleGAN3 gen_video.py, so the same command shows the same
    keyframes: each grid cell, row by row, gets consecutive seeds as its keyframes (4 each for 32 seeds on a 4x2
    grid). The video has num_keyframes * w_frames frames and shows keyframe k at frame k * w_frames.

    Examples:

    \b
    # 8 cells, 4 keyframes each (cell 0: seeds 0-3, cell 1: seeds 4-7, ...).
    python gen_video.py --network=network-snapshot-000400.pkl --seeds=0-31 --grid=4x2 --output=out/lerp.mp4

    \b
    # The same 32 seeds shuffled over the cells, at truncation 0.7.
    python gen_video.py --network=network-snapshot-000400.pkl --seeds=0-31 --grid=4,2 --shuffle-seed=1 \\
        --trunc=0.7 --output=out/lerp.mp4
    """
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    G = load_generator(network_pkl, device)
    label = class_labels(G, class_idx, device)
    ws = keyframe_ws(G, seeds, grid, num_keyframes, truncation_psi, label, shuffle_seed)
    splines = interpolators(ws)
    num_frames = ws.shape[2] * w_frames
    try:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    except OSError as error:
        raise click.ClickException(dnnlib.util.describe_write_failure(output, error)) from None
    # Render into a temporary file that keeps the extension (ffmpeg picks the container from it), then rename, so
    # an interrupted run never leaves a truncated video under the requested name.
    try:
        with dnnlib.util.atomic_path(output) as tmp_path:
            writer = open_writer(tmp_path, fps)
            try:
                for frame_idx in tqdm(range(num_frames), desc="Rendering", unit="frame"):
                    writer.append_data(render_frame(G, splines, frame_idx / w_frames, noise_mode, device))
            finally:
                writer.close()
    except dnnlib.util.WriteError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Saved {output} ({num_frames} frames)")


if __name__ == "__main__":
    main()
