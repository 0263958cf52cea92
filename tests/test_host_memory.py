"""torch_utils.host_memory: freed blocks stay in the process, so reallocating them faults no pages in again."""

import subprocess
import sys

import pytest
from helpers import ROOT

# Minor page faults of five forward and backward passes of a small StyleGAN2 generator on the CPU (the pattern of a
# training step: activation-sized tensors allocated and freed in a different order every pass), optionally after
# the call. One thread, so that only glibc's main arena is involved.
PROBE = """
import resource, sys, torch
from torch_utils import host_memory
from training.networks_stylegan2 import Generator
torch.set_num_threads(1)
applied = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
G = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=2),
              channel_base=2048, channel_max=64)
z = torch.randn(16, 32)
def one_pass():
    G(z, None).square().sum().backward()
one_pass()  # The first pass faults its pages in either way.
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    one_pass()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def page_faults(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_without_faulting_their_pages_in_again():
    applied, kept = page_faults("keep")
    _, default = page_faults("default")
    assert applied == "True"
    assert kept * 3 < default, (kept, default)  # glibc maps big blocks afresh and trims the heap by default.


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_the_users_own_malloc_tunables_are_left_alone():
    applied, _ = page_faults("keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000")
    assert applied == "False"
