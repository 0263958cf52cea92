"""Render images from a network snapshot: one PNG per seed."""

from __future__ import annotations

import os

import click
import numpy as np
import PIL.Image
import torch

import dnnlib
from training import checkpoint


def load_generator(network: str, device: torch.device) -> torch.nn.Module:
    """G_ema of a snapshot pickle (path or URL), on `device`; unreadable files raise click.ClickException."""
    try:
        snapshot = checkpoint.load_snapshot(network)
    except (OSError, ValueError) as error:
        raise click.ClickException(f"--network={network}: {error}") from None
    return snapshot["G_ema"].to(device)


def class_labels(G: torch.nn.Module, class_idx: int | None, device: torch.device) -> torch.Tensor:
    """The one-hot label row [1, c_dim] for `class_idx`; checks that it fits the network."""
    label = torch.zeros([1, G.c_dim], device=device)
    if G.c_dim == 0:
        if class_idx is not None:
            click.echo("Warning: --class is ignored because the network is unconditional.", err=True)
        return label
    if class_idx is None:
        raise click.ClickException(f"The network is conditional ({G.c_dim} classes): pass --class=N")
    if not 0 <= class_idx < G.c_dim:
        raise click.ClickException(f"--class={class_idx} is out of range: the network has classes 0..{G.c_dim - 1}")
    label[:, class_idx] = 1
    return label


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Generator output [1, C, H, W] in [-1, 1] -> uint8 [H, W, C] (the x*127.5+128 mapping, clamped)."""
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()


def save_png(array: np.ndarray, path: str) -> None:
    """Write a uint8 [H, W, C] array as a grayscale or RGB PNG."""
    image = PIL.Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array, "L" if array.shape[2] == 1 else "RGB")
    image.save(path)


@click.command(context_settings=dict(terminal_width=120, max_content_width=120))
@click.option("--network", "network_pkl", metavar="PATH|URL", required=True, help="Network snapshot pickle.")
@click.option("--seeds", metavar="LIST", type=dnnlib.util.parse_range, required=True, help="Seeds, e.g. '0,1,4-6'.")
@click.option(
    "--trunc", "truncation_psi", metavar="FLOAT", type=float, default=1, show_default=True, help="Truncation psi."
)
@click.option("--class", "class_idx", metavar="INT", type=click.IntRange(min=0), help="Class label (conditional nets).")
@click.option(
    "--noise-mode",
    type=click.Choice(["const", "random", "none"]),
    default="const",
    show_default=True,
    help="Noise mode.",
)
@click.option("--outdir", metavar="DIR", type=click.Path(file_okay=False), required=True, help="Where to save PNGs.")
@click.option(
    "--device", "device_name", metavar="DEVICE", default=None, help="Torch device  [default: cuda if available]."
)
def main(
    network_pkl: str,
    seeds: list[int],
    truncation_psi: float,
    class_idx: int | None,
    noise_mode: str,
    outdir: str,
    device_name: str | None,
) -> None:
    """Generate images with a trained network, one PNG per seed (seedNNNN.png).

    Examples:

    \b
    python gen_images.py --network=runs/00000-stylegan2-shapes-64-gpus1-batch32-gamma0.8/network-snapshot-000100.pkl \\
        --seeds=0-9 --trunc=0.7 --outdir=out
    """
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    G = load_generator(network_pkl, device)
    label = class_labels(G, class_idx, device)
    os.makedirs(outdir, exist_ok=True)
    for seed in seeds:
        if seed < 0 or seed >= 2**32:
            raise click.ClickException(f"--seeds: {seed} is outside 0..4294967295")
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).to(device)
        with torch.no_grad():
            img = G(z, label, truncation_psi=truncation_psi, noise_mode=noise_mode)
        path = os.path.join(outdir, f"seed{seed:04d}.png")
        save_png(to_uint8(img), path)
        click.echo(f"Saved {path}")


if __name__ == "__main__":
    main()
