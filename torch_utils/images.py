"""Generator output to pixels, and image grids: the conversions every tool shares (gen_images.py, gen_video.py, the
metrics and the training loop's snapshot grids)."""

import io

import numpy as np
import PIL.Image
import torch

import dnnlib


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output [N, C, H, W] in about [-1, 1] -> uint8 [N, C, H, W], same device.

    The published tools' mapping: x * 127.5 + 128, clamped to [0, 255] and truncated, i.e. x * 127.5 + 127.5
    rounded half up.
    """
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def tile(images: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Images [cols * rows, C, H, W], row by row, -> one image [rows * H, cols * W, C]."""
    cols, rows = grid
    _, channels, height, width = images.shape
    tiled = images.reshape(rows, cols, channels, height, width).transpose(0, 3, 1, 4, 2)
    return tiled.reshape(rows * height, cols * width, channels)


def to_pil(array: np.ndarray) -> PIL.Image.Image:
    """uint8 [H, W, 1 or 3] -> a grayscale or RGB PIL image."""
    if array.shape[2] == 1:
        return PIL.Image.fromarray(array[:, :, 0], "L")
    return PIL.Image.fromarray(array, "RGB")


def write_png(array: np.ndarray, path: str) -> None:
    """Write uint8 [H, W, 1 or 3] as a lossless PNG, atomically (gen_images.py's files and the visualizer's captures,
    byte for byte the same for the same pixels).

    Raises:
        dnnlib.util.WriteError: The file could not be written; the message names it.
    """
    image = to_pil(array)
    dnnlib.util.atomic_write(path, lambda f: image.save(f, format="PNG"))


def png_bytes(array: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 [H, W, 1 or 3] as PNG file contents; fast compression by default (for showing, not for keeping)."""
    buffer = io.BytesIO()
    to_pil(array).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
