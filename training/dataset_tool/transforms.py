"""Per-image processing: normalize the mode, convert channels, transform to the output size."""

from __future__ import annotations

from collections.abc import Callable

import click
import numpy as np
import PIL.Image

from training.dataset_tool.config import ToolConfig


def standardize_mode(image: PIL.Image.Image) -> PIL.Image.Image:
    """Bring any PIL mode to one of L, LA, RGB, RGBA."""
    if image.mode in ("L", "LA", "RGB", "RGBA"):
        return image
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("PA", "La", "RGBa"):
        return image.convert("RGBA" if image.mode != "La" else "LA")
    if image.mode.startswith("I"):  # 16-bit grayscale: keep the top 8 bits.
        pixels = np.asarray(image).astype(np.int64) >> 8
        return PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))  # [H, W] uint8 -> mode L
    if image.mode == "F":
        return image.convert("L")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX.


def convert_channels(image: PIL.Image.Image, channels: int | None, name: str) -> PIL.Image.Image:
    """Apply --channels: composite alpha over black, then convert to gray (luminance) or RGB (repeat gray)."""
    has_alpha = image.mode in ("LA", "RGBA")
    if channels is None:
        if has_alpha:
            raise click.ClickException(
                f"{name} has an alpha channel (mode {image.mode}); pass --channels=3 (or 1) to composite it over black"
            )
        return image
    if has_alpha:
        black = PIL.Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = PIL.Image.alpha_composite(black, image.convert("RGBA"))
    return image.convert("L" if channels == 1 else "RGB")


def resize(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Lanczos resize to (width, height); a no-op when already that size."""
    return image if image.size == size else image.resize(size, PIL.Image.Resampling.LANCZOS)


def center_crop(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Crop the centred square of the short side, then resize."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return resize(image.crop((left, top, left + side, top + side)), size)


def center_crop_wide(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Crop the centred W:H rectangle, resize to WxH, and letterbox it onto a black WxW square."""
    width, height = image.size
    out_w, out_h = size
    if width * out_h > height * out_w:  # Wider than W:H: trim the sides.
        crop_w, crop_h = round(height * out_w / out_h), height
    else:  # Taller: trim top and bottom.
        crop_w, crop_h = width, round(width * out_h / out_w)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    band = resize(image.crop((left, top, left + crop_w, top + crop_h)), size)
    canvas = PIL.Image.new(image.mode, (out_w, out_w))  # Zero-filled: black.
    canvas.paste(band, (0, (out_w - out_h) // 2))
    return canvas


def pad_to_square(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """Pad to a centred square of the long side with black, then resize."""
    width, height = image.size
    side = max(width, height)
    canvas = PIL.Image.new(image.mode, (side, side))  # Zero-filled: black.
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return resize(canvas, size)


TRANSFORMS: dict[str, Callable[[PIL.Image.Image, tuple[int, int]], PIL.Image.Image]] = {
    "center-crop": center_crop,
    "center-crop-wide": center_crop_wide,
    "pad": pad_to_square,
}


def prepare_image(image: PIL.Image.Image, name: str, cfg: ToolConfig) -> PIL.Image.Image:
    """Turn a decoded source image into the output image (mode L or RGB, output size)."""
    image = convert_channels(standardize_mode(image), cfg.channels, name)
    if cfg.resolution is None:
        return image
    if cfg.transform is None:
        return resize(image, cfg.resolution)
    return TRANSFORMS[cfg.transform](image, cfg.resolution)
