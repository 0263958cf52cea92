"""Render images from a network snapshot: one PNG per seed."""

from __future__ import annotations

import os

import click
import numpy as np
import torch

import dnnlib
from dnnlib.util import FiniteFloatRange
from torch_utils import images
from training.inference import check_scale, class_labels, load_generator, network_option, set_input_transform


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Generator output [1, C, H, W] in [-1, 1] -> uint8 [H, W, C] (the x*127.5+128 mapping, clamped)."""
    return images.to_uint8(img)[0].permute(1, 2, 0).cpu().numpy()


def save_png(array: np.ndarray, path: str) -> None:
    """Write a uint8 [H, W, C] array as a grayscale or RGB PNG, atomically; a failed write is a ClickException."""
    try:
        images.write_png(array, path)
    except dnnlib.util.WriteError as error:
        raise click.ClickException(str(error)) from None


@click.command(context_settings=dict(terminal_width=120, max_content_width=120))
@network_option("network_pkl")
@click.option("--seeds", metavar="LIST", type=dnnlib.util.parse_range, required=True, help="Seeds, e.g. '0,1,4-6'.")
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
@click.option("--translate", metavar="X,Y", type=dnnlib.util.parse_vec2, help="Translate, in image widths (StyleGAN3).")
@click.option("--rotate", "rotate_deg", metavar="DEG", type=FiniteFloatRange(), help="Rotate, in degrees (StyleGAN3).")
@click.option(
    "--scale",
    metavar="FLOAT",
    type=FiniteFloatRange(min=0, min_open=True),
    help="Render at this multiple of the training resolution (CREPS).",
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
    translate: tuple[float, float] | None,
    rotate_deg: float | None,
    scale: float | None,
    outdir: str,
    device_name: str | None,
) -> None:
    """Generate images with a trained network, one PNG per seed (seedNNNN.png).

    Examples:

    \b
    python gen_images.py --network=runs/00000-stylegan2-shapes-32-gpus1-batch16-gamma0.05/network-snapshot-000004.pkl \\
        --seeds=0-9 --trunc=0.7 --outdir=out
    \b
    # A run directory means its newest network-snapshot-*.pkl.
    python gen_images.py --network=runs/00000-stylegan2-shapes-32-gpus1-batch16-gamma0.05 --seeds=0-9 --outdir=out
    \b
    # StyleGAN3: shift by a quarter of the image width and rotate by 10 degrees.
    python gen_images.py --network=sg3.pkl --seeds=0 --translate=0.25,0 --rotate=10 --outdir=out
    \b
    # CREPS: render at twice the training resolution.
    python gen_images.py --network=creps.pkl --seeds=0-3 --scale=2 --outdir=out
    """
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    G = load_generator(network_pkl, device)
    label = class_labels(G, class_idx, device)
    if translate is not None or rotate_deg is not None:
        set_input_transform(G, translate or (0.0, 0.0), rotate_deg or 0.0)
    synthesis_kwargs = dict(noise_mode=noise_mode)
    if scale is not None:
        check_scale(G, scale)
        synthesis_kwargs["scale"] = scale
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as error:
        raise click.ClickException(f"--outdir={outdir}: cannot create it ({error.strerror or error})") from None
    for seed in seeds:
        if seed < 0 or seed >= 2**32:
            raise click.ClickException(f"--seeds: {seed} is outside 0..4294967295")
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).to(device)
        with torch.no_grad():
            img = G(z, label, truncation_psi=truncation_psi, **synthesis_kwargs)
        path = os.path.join(outdir, f"seed{seed:04d}.png")
        save_png(to_uint8(img), path)
        click.echo(f"Saved {path}")


if __name__ == "__main__":
    main()
