"""The tool's options as one config (ToolConfig), --resolution parsing, and the check of option combinations."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click


def is_power_of_two(n: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return n > 0 and n & (n - 1) == 0


def parse_resolution(text: str) -> tuple[int, int]:
    """Parse 'WxH' (or 'N', meaning NxN) into (width, height); raise ValueError on bad syntax."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if match is None:
        raise ValueError(f"expected WIDTHxHEIGHT such as 256x256, got {text!r}")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if width == 0 or height == 0:
        raise ValueError(f"width and height must be positive, got {text!r}")
    return width, height


class ResolutionParam(click.ParamType):
    """Click type for --resolution: 'WxH' -> (width, height)."""

    name = "WxH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        """Turn the option text into (width, height), failing with click's usual message."""
        if isinstance(value, tuple):
            return value
        try:
            return parse_resolution(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


@dataclass(frozen=True)
class ToolConfig:
    """Everything one run of the tool does, built from the command line."""

    source: str  # Input path, or a demo name such as 'demo:shapes'.
    dest: str | None  # Output .zip file or folder; None only with `info`.
    max_images: int | None  # Stop after writing this many images; None writes all.
    transform: str | None  # Key of transforms.TRANSFORMS; None resizes straight to `resolution`.
    resolution: tuple[int, int] | None  # Output (width, height) in pixels; None keeps the source size.
    channels: int | None  # 1 or 3 to convert every image; None keeps the source's (which must agree).
    force: bool  # Replace an existing non-empty dest.
    strict: bool  # Fail on an unreadable image instead of skipping it.
    info: bool  # Describe the dataset at `source` instead of converting.
    workers: int | None = None  # Processes converting images; None: one per available core (convert.available_cores()).
    compress_level: int | None = None  # zlib level 0-9 of the output PNGs; None: convert.DEFAULT_COMPRESS_LEVEL.


def is_nonempty(path: Path) -> bool:
    """True if `path` is a folder with entries or a non-empty file."""
    if path.is_dir():
        with os.scandir(path) as entries:
            return any(True for _ in entries)
    return path.exists() and path.stat().st_size > 0


def validate_config(cfg: ToolConfig) -> None:
    """Refuse bad option combinations before any work is done."""
    if cfg.info:
        extra = [
            name
            for name, given in [
                ("--dest", cfg.dest is not None),
                ("--transform", cfg.transform is not None),
                ("--resolution", cfg.resolution is not None),
                ("--channels", cfg.channels is not None),
                ("--force", cfg.force),
                ("--strict", cfg.strict),
                ("--workers", cfg.workers is not None),
                ("--compress-level", cfg.compress_level is not None),
            ]
            if given
        ]
        if extra:
            raise click.UsageError(f"--info only reads --source (and --max-images); drop {', '.join(extra)}")
        return

    if cfg.dest is None:
        raise click.UsageError("--dest is required: the output .zip file or folder (or pass --info to inspect)")
    if cfg.transform is not None and cfg.resolution is None:
        raise click.UsageError(f"--transform={cfg.transform} needs an output size: add --resolution=WxH")
    if cfg.resolution is not None:
        width, height = cfg.resolution
        if cfg.transform == "center-crop-wide":
            if height > width:
                raise click.BadParameter(
                    f"{width}x{height}: center-crop-wide letterboxes a wide image, so height must not exceed width",
                    param_hint="--resolution",
                )
        elif width != height:
            raise click.BadParameter(
                f"{width}x{height} is not square; training needs square images "
                f"(or use --transform=center-crop-wide to letterbox a {width}x{height} crop)",
                param_hint="--resolution",
            )
        if not is_power_of_two(width):
            lower = 2 ** int(math.log2(width))
            raise click.BadParameter(
                f"width {width} is not a power of two; training needs one, e.g. {lower}x{lower * height // width}",
                param_hint="--resolution",
            )

    dest = Path(cfg.dest).expanduser()
    if is_nonempty(dest) and not cfg.force:
        raise click.ClickException(f"--dest {dest} already exists and is not empty; pass --force to replace it")
    source = Path(cfg.source).expanduser()
    if source.is_dir() and dest.resolve().is_relative_to(source.resolve()):
        raise click.UsageError(f"--dest {dest} is inside --source {source}; write the dataset somewhere else")
