"""What rank 0 writes into a run directory besides snapshots: log.txt, stats.jsonl, TensorBoard, image grids."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from typing import Any, TextIO

import numpy as np
import PIL.Image

from training.checkpoint import atomic_write


class _Tee(io.TextIOBase):
    """A text stream that writes to the console and appends to a log file."""

    def __init__(self, console: TextIO, log_file: TextIO):
        self.console = console
        self.log_file = log_file

    def write(self, text: str) -> int:
        self.console.write(text)
        self.log_file.write(text)
        if "\n" in text:
            self.log_file.flush()
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.log_file.flush()


class RunLog:
    """Copies stdout and stderr into `log.txt` and appends one JSON line of statistics per tick."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._log_file = open(os.path.join(run_dir, "log.txt"), "a")
        self._stats_file = open(os.path.join(run_dir, "stats.jsonl"), "a")
        self._saved_streams = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, self._log_file)
        sys.stderr = _Tee(sys.stderr, self._log_file)
        self._tensorboard = _open_tensorboard(run_dir)

    def write_stats(self, stats: dict[str, Any], global_step_kimg: float) -> None:
        """Append `stats` ({name: {num, mean, std}}) to stats.jsonl and the TensorBoard event file."""
        line = {**stats, "timestamp": time.time()}
        self._stats_file.write(json.dumps(line) + "\n")
        self._stats_file.flush()
        if self._tensorboard is not None:
            walltime = time.time()
            for name, value in stats.items():
                self._tensorboard.add_scalar(name, value["mean"], global_step=int(global_step_kimg), walltime=walltime)
            self._tensorboard.flush()

    def write_scalars(self, scalars: dict[str, float], global_step_kimg: float) -> None:
        """Log scalars (e.g. metric results) to TensorBoard at the given kimg; a no-op without tensorboard."""
        if self._tensorboard is not None:
            walltime = time.time()
            for name, value in scalars.items():
                self._tensorboard.add_scalar(name, value, global_step=int(global_step_kimg), walltime=walltime)
            self._tensorboard.flush()

    def close(self) -> None:
        """Restore the console streams and close the files."""
        sys.stdout, sys.stderr = self._saved_streams
        self._log_file.close()
        self._stats_file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _open_tensorboard(run_dir: str) -> Any:
    """A TensorBoard SummaryWriter when the tensorboard package is installed, else None (stats.jsonl remains)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(run_dir)


def grid_shape(resolution: int) -> tuple[int, int]:
    """Columns and rows of a snapshot image grid: about 3840x2160 pixels, 4 to 16 images a side."""
    return int(np.clip(3840 // resolution, 4, 16)), int(np.clip(2160 // resolution, 4, 16))


def save_image_grid(images: np.ndarray, path: str, drange: tuple[float, float], grid: tuple[int, int]) -> None:
    """Tile images [gw*gh, C, H, W] with values in `drange` into one PNG, written atomically."""
    lo, hi = drange
    gw, gh = grid
    images = np.asarray(images, dtype=np.float32)[: gw * gh]
    images = np.rint((images - lo) * (255 / (hi - lo))).clip(0, 255).astype(np.uint8)
    _, c, h, w = images.shape
    tiled = images.reshape(gh, gw, c, h, w).transpose(0, 3, 1, 4, 2).reshape(gh * h, gw * w, c)
    image = PIL.Image.fromarray(tiled[:, :, 0] if c == 1 else tiled, "L" if c == 1 else "RGB")
    atomic_write(path, lambda f: image.save(f, format="PNG"))
