"""Test-wide settings."""

import pytest
import torch

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
