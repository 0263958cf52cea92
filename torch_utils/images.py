"""Generator output to pixels, and image grids: the conversions every tool shares (gen_images.py, gen_video.py, the
metrics and the training loop's snapshot grids)."""

import numpy as np
import torch


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
