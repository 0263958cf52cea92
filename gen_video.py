"""Render a looping latent-interpolation video from a network snapshot."""

from __future__ import annotations

import os

import click
import numpy as np
import scipy.interpolate
import torch
from tqdm import tqdm

import dnnlib
from gen_images import class_labels, load_generator, parse_grid


def keyframe_ws(G: torch.nn.Module, seeds: list[int], grid: tuple[int, int], num_keyframes: int | None,
                truncation_psi: float, label: torch.Tensor) -> np.ndarray:  # fmt: skip
    """The w of every keyframe of every grid cell, [rows, cols, keyframes, num_ws, w_dim].

    Seeds fill the cells row by row, then keyframe by keyframe; they repeat when there are fewer than needed.
    """
    gw, gh = grid
    if num_keyframes is None:
        if len(seeds) % (gw * gh) != 0:
            raise click.ClickException(
                f"--seeds has {len(seeds)} seeds, not a multiple of the {gw}x{gh} grid; pass --num-keyframes"
            )
        num_keyframes = len(seeds) // (gw * gh)
    all_seeds = [seeds[i % len(seeds)] for i in range(num_keyframes * gw * gh)]
    z = torch.from_numpy(np.stack([np.random.RandomState(seed).randn(G.z_dim) for seed in all_seeds]))
    with torch.no_grad():
        ws = G.mapping(z.to(label.device), label.expand(len(all_seeds), -1), truncation_psi=truncation_psi)
    return ws.cpu().numpy().reshape(num_keyframes, gh, gw, *ws.shape[1:]).transpose(1, 2, 0, 3, 4)


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
    img = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()  # [rows*cols, C, H, W]
    rows, cols = len(splines), len(splines[0])
    _, c, h, w_ = img.shape
    frame = img.reshape(rows, cols, c, h, w_).transpose(0, 3, 1, 4, 2).reshape(rows * h, cols * w_, c)
    return np.repeat(frame, 3, axis=2) if c == 1 else frame


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
@click.option("--network", "network_pkl", metavar="PATH|URL", required=True, help="Network snapshot pickle.")
@click.option("--seeds", metavar="LIST", type=dnnlib.util.parse_range, required=True, help="Seeds, e.g. '0-31'.")
@click.option("--grid", metavar="WxH", type=parse_grid, default="1x1", show_default=True, help="Grid of videos.")
@click.option(
    "--num-keyframes", metavar="INT", type=click.IntRange(min=1), help="Keyframes per cell  [default: seeds/cells]."
)
@click.option(
    "--w-frames", metavar="INT", type=click.IntRange(min=1), default=120, show_default=True,
    help="Frames between keyframes.",
)  # fmt: skip
@click.option(
    "--trunc", "truncation_psi", metavar="FLOAT", type=float, default=1, show_default=True, help="Truncation psi."
)
@click.option("--class", "class_idx", metavar="INT", type=click.IntRange(min=0), help="Class label (conditional nets).")
@click.option(
    "--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True,
    help="Noise mode.",
)  # fmt: skip
@click.option("--fps", metavar="INT", type=click.IntRange(min=1), default=60, show_default=True, help="Frame rate.")
@click.option("--output", metavar="FILE.mp4", type=click.Path(dir_okay=False), required=True, help="Output video.")
@click.option("--device", "device_name", metavar="DEVICE", help="Torch device  [default: cuda if available].")
def main(
    network_pkl: str,
    seeds: list[int],
    grid: tuple[int, int],
    num_keyframes: int | None,
    w_frames: int,
    truncation_psi: float,
    class_idx: int | None,
    noise_mode: str,
    fps: int,
    output: str,
    device_name: str | None,
) -> None:
    """Render a looping video that interpolates between the latents of the seeds (cubic splines in W).

    Each grid cell shows its own sequence of keyframes; the video has num_keyframes * w_frames frames.

    Examples:

    \b
    python gen_video.py --network=network-snapshot-000400.pkl --seeds=0-31 --grid=4x2 --output=lerp.mp4
    """
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    G = load_generator(network_pkl, device)
    label = class_labels(G, class_idx, device)
    ws = keyframe_ws(G, seeds, grid, num_keyframes, truncation_psi, label)
    splines = interpolators(ws)
    num_frames = ws.shape[2] * w_frames
    if os.path.dirname(output):
        os.makedirs(os.path.dirname(output), exist_ok=True)
    # Render into a temporary file with the same extension (ffmpeg picks the container from it), then rename,
    # so an interrupted run never leaves a truncated video under the requested name.
    root, ext = os.path.splitext(output)
    tmp_path = f"{root}.tmp-{os.getpid()}{ext}"
    try:
        writer = open_writer(tmp_path, fps)
        try:
            for frame_idx in tqdm(range(num_frames), desc="Rendering", unit="frame"):
                writer.append_data(render_frame(G, splines, frame_idx / w_frames, noise_mode, device))
        finally:
            writer.close()
        os.replace(tmp_path, output)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    click.echo(f"Saved {output} ({num_frames} frames)")


if __name__ == "__main__":
    main()
