"""What the tools that render a snapshot share (gen_images.py, gen_video.py, calc_metrics.py): what --network names
and loading G, class labels, grid and view options, and refusing options the network cannot honour, each as a click
error that names the option."""

from __future__ import annotations

import math
from collections.abc import Callable

import click
import torch

from torch_utils.alias_free import make_transform
from training import checkpoint, legacy


def resolve_network(network: str, option: str = "--network") -> str:
    """The snapshot path or URL that an option's value names: a run directory means its newest snapshot, which is
    said in one line (`legacy.resolve_network`); a directory without one raises click.ClickException."""
    try:
        path, note = legacy.resolve_network(network)
    except (OSError, ValueError) as error:
        raise click.ClickException(f"{option}={network}: {error}") from None
    if note is not None:
        click.echo(f"{option}={network}: {note}")
    return path


def load_network(network: str, option: str = "--network") -> tuple[str, dict]:
    """The snapshot path or URL an option names (see `resolve_network`) and its snapshot dict; files that are no
    network pickle, or unreadable ones, raise click.ClickException naming the option and what the file is."""
    path = resolve_network(network, option)
    try:
        return path, checkpoint.load_snapshot(path)
    except (OSError, ValueError) as error:
        raise click.ClickException(f"{option}={network}: {error}") from None


def network_option(*param_decls: str) -> Callable:
    """The --network option of every tool that reads a snapshot: a pickle, a URL or a run directory (its newest
    snapshot, see `resolve_network`). `param_decls` may add the parameter's name, such as "network_pkl"."""
    help_text = "Network snapshot pickle, or a run directory (its newest)."
    return click.option("--network", *param_decls, metavar="PKL|URL|DIR", required=True, help=help_text)


def load_generator(network: str, device: torch.device) -> torch.nn.Module:
    """G_ema of the snapshot --network names (a pickle, a URL or a run directory), on `device`."""
    return load_network(network)[1]["G_ema"].to(device)


def class_labels(G: torch.nn.Module, class_idx: int | None, device: torch.device) -> torch.Tensor:
    """The one-hot label row [1, c_dim] for `class_idx`; checks that it fits the network."""
    label = torch.zeros([1, G.c_dim], device=device)
    if G.c_dim == 0:
        if class_idx is not None:
            raise click.ClickException(
                f"--class={class_idx}: the network is unconditional (it has no classes); leave --class out"
            )
        return label
    if class_idx is None:
        raise click.ClickException(f"The network is conditional ({G.c_dim} classes): pass --class=N")
    if not 0 <= class_idx < G.c_dim:
        raise click.ClickException(f"--class={class_idx} is out of range: the network has classes 0..{G.c_dim - 1}")
    label[:, class_idx] = 1
    return label


def parse_grid(value: str | tuple[int, int]) -> tuple[int, int]:
    """'4x2' or '4,2' -> (4, 2): columns, then rows (the published gen_video.py accepts both spellings)."""
    if isinstance(value, tuple):
        return value
    text = value.strip().lower()
    parts = text.split("x") if "x" in text else text.split(",")
    # isascii() too: isdigit() alone accepts digits such as superscripts that int() refuses.
    if len(parts) != 2 or not all(part.isascii() and part.isdigit() and int(part) > 0 for part in parts):
        raise click.BadParameter(
            f"expected WxH or W,H (columns then rows, each at least 1) such as 4x3 or 4,3, got {value!r}"
        )
    return int(parts[0]), int(parts[1])


def can_transform(G: torch.nn.Module) -> bool:
    """Whether G renders translated and rotated images (StyleGAN3's input transform)."""
    return hasattr(G.synthesis, "set_input_transform")


def can_scale(G: torch.nn.Module) -> bool:
    """Whether G renders at any output size (its synthesis network declares `supports_any_scale`: CREPS)."""
    return bool(getattr(G.synthesis, "supports_any_scale", False))


def gives_whole_pixels(G: torch.nn.Module, scale: float) -> bool:
    """Whether `scale` times the training resolution is a whole number of pixels, at least one."""
    size = scale * G.img_resolution
    return math.isfinite(size) and abs(size - round(size)) <= 1e-6 and round(size) >= 1


def set_input_transform(G: torch.nn.Module, translate: tuple[float, float], rotate_deg: float) -> None:
    """Translate (in image widths) and rotate (degrees) a StyleGAN3 image through its input transform."""
    if not can_transform(G):
        raise click.ClickException(
            f"--translate and --rotate need a StyleGAN3 network (one with an input transform); this is a "
            f"{type(G.synthesis).__module__}.{type(G.synthesis).__name__}"
        )
    G.synthesis.set_input_transform(make_transform(translate, rotate_deg))


def check_scale(G: torch.nn.Module, scale: float) -> None:
    """Refuse --scale for networks with a fixed output size, and scales that do not give whole pixels."""
    if not can_scale(G):
        raise click.ClickException(
            f"--scale needs a network that renders at any resolution (--cfg=creps); this is a "
            f"{type(G.synthesis).__module__}.{type(G.synthesis).__name__}"
        )
    if not gives_whole_pixels(G, scale):
        raise click.ClickException(
            f"--scale={scale:g} gives {scale * G.img_resolution:g} pixels at the training resolution "
            f"{G.img_resolution}; pick a scale that gives whole pixels (a multiple of 1/{G.img_resolution})"
        )
