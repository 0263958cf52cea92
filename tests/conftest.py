"""Test-wide settings."""

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
def shapes8(tmp_path_factory) -> Path:
    """The tiny end-to-end runs' data: a 64-image, 8x8, labelled demo:shapes zip made by dataset_tool.py."""
    path = tmp_path_factory.mktemp("shapes8") / "shapes8.zip"
    args = ["--source=demo:shapes", f"--dest={path}", "--resolution=8x8", "--max-images=64", "--workers=1"]
    result = CliRunner().invoke(dataset_tool.main, args)
    assert result.exit_code == 0, result.output
    return path
