"""Test-wide settings."""

import torch

# The tests use tiny tensors, where a second intra-op thread only adds contention (and 100x slowdowns when the
# other core is busy, e.g. under the two-process tests).
torch.set_num_threads(1)
