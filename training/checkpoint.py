"""Network snapshots (what users load) and training states (what resume loads), both written atomically.

A snapshot `network-snapshot-KKKKKK.pkl` is a pickle of a dict with the modules `G`, `D`, `G_ema` (eval mode,
on the CPU, requires_grad off), `augment_pipe` and the dict `training_set_kwargs`. Unpickling it needs only
this package importable; our tools read it (and the published formats) with a restricted unpickler.
A training state `training-state-KKKKKK.pt` holds state dicts, optimizer states and
counters, readable with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import copy
import glob
import os
import pickle
import re
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

import torch

from training import legacy

STATE_VERSION = 1  # Bump when the layout of training states changes.
KEEP_STATES = 2  # Training states kept per run; older ones are deleted once a newer one is complete.


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` on a temporary file next to `path`, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def snapshot_path(run_dir: str, kimg: int) -> str:
    """`run_dir/network-snapshot-KKKKKK.pkl`."""
    return os.path.join(run_dir, f"network-snapshot-{kimg:06d}.pkl")


def state_path(run_dir: str, kimg: int) -> str:
    """`run_dir/training-state-KKKKKK.pt`."""
    return os.path.join(run_dir, f"training-state-{kimg:06d}.pt")


def frozen_copy(module: torch.nn.Module | None) -> torch.nn.Module | None:
    """A CPU copy in eval mode with requires_grad off, as snapshots store modules."""
    if module is None:
        return None
    return copy.deepcopy(module).eval().requires_grad_(False).cpu()


def save_snapshot(
    path: str,
    G: torch.nn.Module,
    D: torch.nn.Module,
    G_ema: torch.nn.Module,
    augment_pipe: torch.nn.Module | None,
    training_set_kwargs: dict[str, Any] | None,
) -> None:
    """Write a network snapshot pickle atomically.

    Args:
        training_set_kwargs: The dataset's ImageFolderDataset arguments; None when unknown (converted networks).
    """
    snapshot = {
        "G": frozen_copy(G),
        "D": frozen_copy(D),
        "G_ema": frozen_copy(G_ema),
        "augment_pipe": frozen_copy(augment_pipe),
        "training_set_kwargs": None if training_set_kwargs is None else dict(training_set_kwargs),
    }
    atomic_write(path, lambda f: pickle.dump(snapshot, f, protocol=pickle.HIGHEST_PROTOCOL))


def load_snapshot(path_or_url: str) -> dict[str, Any]:
    """Read a network snapshot from a path or URL: ours, a published PyTorch pickle or a TensorFlow StyleGAN2 one.

    Every pickle goes through the restricted unpickler of `training.safe_pickle`, so nothing the file carries
    runs; published networks are rebuilt as our classes (`training.legacy`). Errors (ValueError) name the file
    and the problem. Published pickles add the entry `source` saying what they were.
    """
    loaded = legacy.load_network_pkl(path_or_url)
    snapshot = dict(loaded.snapshot)
    if loaded.source_format != "ganforge":
        snapshot["source"] = loaded.source_format
    return snapshot


def save_state(path: str, state: dict[str, Any]) -> None:
    """Write a training state atomically, then delete all but the newest KEEP_STATES of its run."""
    state = {"version": STATE_VERSION, **state}
    atomic_write(path, lambda f: torch.save(state, f))
    for old in list_states(os.path.dirname(path))[:-KEEP_STATES]:
        os.remove(old)


def load_state(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training state written by `save_state`."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path} has training state version {state.get('version')}; expected {STATE_VERSION}")
    return state


def list_states(run_dir: str) -> list[str]:
    """The training states of a run, oldest first."""
    paths = glob.glob(os.path.join(run_dir, "training-state-*.pt"))
    return sorted(p for p in paths if re.fullmatch(r"training-state-\d+\.pt", os.path.basename(p)))


def state_next_to_snapshot(pkl_path: str) -> str | None:
    """The training state written with a local snapshot pickle, if it is still there."""
    match = re.fullmatch(r"network-snapshot-(\d+)\.pkl", os.path.basename(pkl_path))
    if match is None or not os.path.isfile(pkl_path):
        return None
    candidate = os.path.join(os.path.dirname(pkl_path), f"training-state-{match.group(1)}.pt")
    return candidate if os.path.isfile(candidate) else None
