"""Test-wide settings and the shared fixtures (plain helpers are in helpers.py)."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import dataset_tool
from training import run_log

# The tests use tiny tensors, where a second intra-op thread only adds contention (and 100x slowdowns when the
# other core is busy, e.g. under the two-process tests).
torch.set_num_threads(1)


class RecordingTensorBoard:
    """Stands in for torch.utils.tensorboard's SummaryWriter: records add_scalar calls as (tag, value, step)."""

    def __init__(self):
        self.scalars = []

    def add_scalar(self, name, value, global_step, walltime):
        self.scalars.append((name, value, global_step))

    def flush(self):
        pass

    def close(self):
        pass


@pytest.fixture
def tensorboard(monkeypatch) -> RecordingTensorBoard:
    """Make RunLog write its TensorBoard scalars to a RecordingTensorBoard (tensorboard need not be installed)."""
    writer = RecordingTensorBoard()
    monkeypatch.setattr(run_log, "_open_tensorboard", lambda run_dir: writer)
    return writer


@pytest.fixture(scope="session")
def demo_shapes(tmp_path_factory) -> Callable[..., Path]:
    """Make a labelled demo:shapes zip with dataset_tool.py: `demo_shapes(resolution, max_images=64)` returns
    `shapes<resolution>.zip`, made once per test process and shared (tests only read it)."""
    made: dict[tuple[int, int], Path] = {}

    def make(resolution: int, max_images: int = 64) -> Path:
        if (resolution, max_images) not in made:
            path = tmp_path_factory.mktemp(f"shapes{resolution}") / f"shapes{resolution}.zip"
            args = ["--source=demo:shapes", f"--dest={path}", f"--resolution={resolution}x{resolution}", "--workers=1"]
            result = CliRunner().invoke(dataset_tool.main, [*args, f"--max-images={max_images}"])
            assert result.exit_code == 0, result.output
            made[resolution, max_images] = path
        return made[resolution, max_images]

    return make


@pytest.fixture(scope="session")
def shapes8(demo_shapes) -> Path:
    """The tiny end-to-end runs' data: a 64-image, 8x8, labelled demo:shapes zip made by dataset_tool.py."""
    return demo_shapes(8)


@pytest.fixture(scope="session")
def data(shapes8: Path) -> Path:
    """The dataset of the end-to-end runs, shapes8 (a test file may override it with its own)."""
    return shapes8
