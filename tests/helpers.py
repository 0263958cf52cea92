"""What the tests share: the repository root, the tiny debug configuration's options, running the root scripts in a
fresh interpreter as users do (and waiting for a process group to end), and generators small enough for the CPU.
Fixtures (the demo datasets) are in conftest.py."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from training import checkpoint, networks_stylegan2, networks_stylegan3

ROOT = Path(__file__).resolve().parents[1]

# The tiny debug configuration of every end-to-end run: a StyleGAN2 of a few thousand parameters at 8x8, no
# metrics (the 50k-image protocols take hours on a CPU) and a fixed R1 weight, so a tick takes seconds on a CPU.
TINY_OPTIONS = dict(cfg="stylegan2", gamma=1, aug="noaug", metrics="none", cbase=64, cmax=8, map_depth=1)


def tiny(**changes: object) -> list[str]:
    """train.py's options for the tiny configuration; `changes` replace or add options (`map_depth=2` gives
    `--map-depth=2`), and None leaves an option out (train.py's default then applies)."""
    options = {**TINY_OPTIONS, **changes}
    return [f"--{name.replace('_', '-')}={value}" for name, value in options.items() if value is not None]


TINY = tiny()


def readme_quick_start() -> list[str]:
    """The commands of the README's quick start, in order (each one line)."""
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [command.strip() for command in re.findall(r"```bash\n(.+?)\n *```", section, re.S)]


def quick_start_options(**changes: object) -> list[str]:
    """The train.py options of the README's quick start without --outdir and --data; `changes` replace or add
    options as in `tiny`."""
    [command] = [part for part in readme_quick_start()[0].split(" && ") if "train.py" in part]
    options = dict(arg[2:].split("=", 1) for arg in shlex.split(command)[2:])
    options = {name.replace("-", "_"): value for name, value in options.items() if name not in ("outdir", "data")}
    options.update(changes)
    return [f"--{name.replace('_', '-')}={value}" for name, value in options.items() if value is not None]


def script_env(**extra: str) -> dict[str, str]:
    """The environment for a root script in a subprocess: one OpenMP thread, as the test processes use one intra-op
    thread (conftest.py), so that two processes on two cores do not contend."""
    return dict(os.environ, OMP_NUM_THREADS="1", **extra)


def group_is_gone(pgid: int, timeout_sec: float = 15) -> bool:
    """Whether every process of group `pgid` (DataLoader workers included) has ended within `timeout_sec`."""
    deadline = time.time() + timeout_sec
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run one of the root scripts in a fresh interpreter and fail with its output if it fails."""
    command = [sys.executable, str(ROOT / script), *args]
    result = subprocess.run(command, cwd=cwd, env=script_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result


def run_dirs(outdir: Path) -> list[Path]:
    """The run directories train.py made under `outdir`, oldest first."""
    return sorted(p for p in outdir.iterdir() if p.is_dir())


def final_state(outdir: Path) -> dict:
    """The newest training state of the one run under `outdir`."""
    [run_dir] = run_dirs(outdir)
    return checkpoint.load_state(checkpoint.list_states(str(run_dir))[-1])


def assert_identical(a: dict, b: dict) -> None:
    """Two training states at the same image count with bit-identical networks and optimizer states."""
    assert a["progress"]["cur_nimg"] == b["progress"]["cur_nimg"]
    for net in ("G", "D", "G_ema"):
        for name in a[net]:
            assert torch.equal(a[net][name], b[net][name]), f"{net}.{name} differs"
    for opt in ("G_opt", "D_opt"):
        for index, slot in a[opt]["state"].items():
            for key, value in slot.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[opt]["state"][index][key])), (opt, key)


def assert_states_close(a: dict, b: dict, atol: float, rtol: float = 0.0) -> None:
    """Two training states at the same image count whose networks agree within `atol` + `rtol` * |b|."""
    assert a["progress"]["cur_nimg"] == b["progress"]["cur_nimg"]
    for net in ["G", "D", "G_ema"]:
        assert a[net].keys() == b[net].keys()
        for name in a[net]:
            torch.testing.assert_close(a[net][name], b[net][name], atol=atol, rtol=rtol, msg=f"{net}.{name}")


def tiny_stylegan2(resolution: int = 8, map_depth: int = 1, c_dim: int = 0, **kwargs) -> networks_stylegan2.Generator:
    """A StyleGAN2 generator with a few thousand parameters (z and w of 8, 8 channels), in training mode."""
    return networks_stylegan2.Generator(
        z_dim=8,
        c_dim=c_dim,
        w_dim=8,
        img_resolution=resolution,
        img_channels=3,
        mapping_kwargs=dict(num_layers=map_depth),
        channel_base=64,
        channel_max=8,
        **kwargs,
    )


def tiny_stylegan3(resolution: int = 16, **kwargs) -> networks_stylegan3.Generator:
    """A StyleGAN3-T generator small enough for the CPU (z and w of 16, at most 32 channels, float32 unclamped)."""
    return networks_stylegan3.Generator(
        z_dim=16,
        c_dim=0,
        w_dim=16,
        img_resolution=resolution,
        img_channels=3,
        mapping_kwargs=dict(num_layers=2),
        channel_base=512,
        channel_max=32,
        num_fp16_res=0,
        conv_clamp=None,
        **kwargs,
    )
