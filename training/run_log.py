"""What rank 0 writes into a run directory besides snapshots: log.txt, stats.jsonl, TensorBoard, image grids.

A failed write (disk full, folder no longer writable) raises `dnnlib.util.WriteError` naming the file.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np
import PIL.Image

from dnnlib.util import WriteError, atomic_write, describe_write_failure
from torch_utils.images import tile


class _Tee(io.TextIOBase):
    """A text stream that writes to the console and appends to a log file."""

    def __init__(self, console: TextIO, log_file: TextIO):
        self.console = console
        self.log_file: TextIO | None = log_file  # None once a write to it failed: the console still works.

    def write(self, text: str) -> int:
        self.console.write(text)
        if self.log_file is not None:
            self._to_log(text, flush="\n" in text)
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        if self.log_file is not None:
            self._to_log("", flush=True)

    def _to_log(self, text: str, flush: bool) -> None:
        """Append to the log file; on failure stop using it (so the error itself can still be printed) and raise."""
        try:
            self.log_file.write(text)
            if flush:
                self.log_file.flush()
        except OSError as error:
            name, self.log_file = self.log_file.name, None
            raise WriteError(describe_write_failure(name, error)) from error


class RunLog:
    """Copies stdout and stderr into `log.txt` and appends one JSON line of statistics per tick."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._log_file = _open_append(os.path.join(run_dir, "log.txt"))
        self._stats_file = _open_append(os.path.join(run_dir, "stats.jsonl"))
        self._saved_streams = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, self._log_file)
        sys.stderr = _Tee(sys.stderr, self._log_file)
        self._tensorboard = _open_tensorboard(run_dir)
        if self._tensorboard is None:
            print(
                "TensorBoard logging is off (pip install tensorboard, or the [tensorboard] extra); stats.jsonl has "
                "every value."
            )

    def write_stats(self, stats: dict[str, Any], global_step_kimg: float) -> None:
        """Append `stats` ({name: {num, mean, std}}) to stats.jsonl and the TensorBoard event file."""
        line = {**stats, "timestamp": time.time()}
        try:
            self._stats_file.write(json.dumps(line) + "\n")
            self._stats_file.flush()
        except OSError as error:
            raise WriteError(describe_write_failure(self._stats_file.name, error)) from error
        if self._tensorboard is not None:
            walltime = time.time()
            for name, value in stats.items():
                self._tensorboard.add_scalar(
                    name, value["mean"], global_step=tensorboard_step(global_step_kimg), walltime=walltime
                )
            self._tensorboard.flush()

    def write_scalars(self, scalars: dict[str, float], global_step_kimg: float) -> None:
        """Log scalars (e.g. metric results) to TensorBoard at the given kimg; a no-op without tensorboard."""
        if self._tensorboard is not None:
            walltime = time.time()
            for name, value in scalars.items():
                self._tensorboard.add_scalar(
                    name, value, global_step=tensorboard_step(global_step_kimg), walltime=walltime
                )
            self._tensorboard.flush()

    def close(self) -> None:
        """Restore the console streams and close the files."""
        sys.stdout, sys.stderr = self._saved_streams
        self._log_file.close()
        self._stats_file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _open_append(path: str) -> TextIO:
    """Open a log for appending; failure is a WriteError naming it."""
    try:
        return open(path, "a")
    except OSError as error:
        raise WriteError(describe_write_failure(path, error)) from error


def drop_entries_after(run_dir: str, cur_tick: int, kimg: float) -> list[str]:
    """Make a run continued from a training state read as one uninterrupted run: drop what the interrupted session
    logged after that state, which the continued session logs again.

    Removes the lines of `stats.jsonl` of ticks `cur_tick` and later (the state was saved after tick
    `cur_tick - 1`) and the lines of `metric-*.jsonl` about snapshots after `network-snapshot-<kimg>.pkl`; a final
    line without its newline (a write cut short) goes too. Each file is rewritten atomically, and only when
    something changes. TensorBoard event files cannot be edited: TensorBoard shows both sessions' values for the
    repeated steps.

    Args:
        cur_tick: The state's tick counter (ticks completed).
        kimg:     The state's kimg (images seen / 1000). A snapshot named by whole kimg counts as written at that
                  whole kimg, so one written with the state (a little past it) is kept.

    Returns:
        One line per rewritten file, saying what was dropped.
    """
    notes = []
    stats_path = os.path.join(run_dir, "stats.jsonl")
    notes += _drop_lines(stats_path, lambda entry: _stats_tick(entry) >= cur_tick, f"ticks >= {cur_tick}")
    for path in sorted(glob.glob(os.path.join(run_dir, "metric-*.jsonl"))):
        notes += _drop_lines(path, lambda entry: snapshot_kimg(entry) > kimg, f"snapshots after {kimg:g} kimg")
    return notes


def _stats_tick(entry: dict) -> float:
    """The tick of a stats.jsonl line; -1 (kept) when it has none."""
    tick = entry.get("Progress/tick")
    return tick.get("mean", -1) if isinstance(tick, dict) else -1


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The entries of a JSON-lines log (stats.jsonl, metric-*.jsonl); a line cut short by a kill is left out."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


# network-snapshot-KKKKKK.pkl (whole kimg, as published) or -KKKKKK_NNN.pkl (NNN images more: a second snapshot in
# the same kimg, see checkpoint.new_snapshot_path). The suffix sorts after the plain name, so names sort by kimg.
SNAPSHOT_NAME = re.compile(r"network-snapshot-(\d+)(?:_(\d{3}))?\.pkl")
STATE_NAME = re.compile(r"training-state-(\d+)\.pt")  # KKKKKK: whole kimg; a later state in it replaces the earlier.


def snapshot_file_kimg(path: str) -> float | None:
    """The kimg in a snapshot's file name (84.5 for network-snapshot-000084_500.pkl); None for other names."""
    match = SNAPSHOT_NAME.fullmatch(os.path.basename(path))
    if match is None:
        return None
    return int(match.group(1)) + int(match.group(2) or 0) / 1000


def snapshot_kimg(entry: dict) -> float:
    """The snapshot kimg of a metric-*.jsonl line; -1 when it names no network-snapshot-KKKKKK[_NNN].pkl."""
    kimg = snapshot_file_kimg(str(entry.get("snapshot_pkl") or ""))
    return -1 if kimg is None else kimg


def _drop_lines(path: str, drop: Callable[[dict], bool], what: str) -> list[str]:
    """Rewrite the JSON-lines file `path` without the entries for which `drop(entry)` holds and without a final
    line cut short; other lines, even unparseable ones, are kept as they are. Returns the note, or []."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    torn = lines.pop() != b""  # Text after the last newline: a line whose write was interrupted.
    kept = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not (isinstance(entry, dict) and drop(entry)):
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped == 0 and not torn:
        return []
    atomic_write(path, lambda f: f.write(b"".join(line + b"\n" for line in kept)))
    cut = " and a line cut short" if torn else ""
    return [f"{os.path.basename(path)}: dropped {dropped} lines ({what}){cut}, logged after the state continued from"]


def tensorboard_step(kimg: float) -> int:
    """TensorBoard's integer step for a point of training: images shown (the published int(kimg) put every tick of
    a fractional --tick on the same step)."""
    return round(kimg * 1000)


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
    tiled = tile(images, grid)
    c = tiled.shape[2]
    image = PIL.Image.fromarray(tiled[:, :, 0] if c == 1 else tiled, "L" if c == 1 else "RGB")
    atomic_write(path, lambda f: image.save(f, format="PNG"))
