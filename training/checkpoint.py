"""Network snapshots (what users load) and training states (what resume loads), both written atomically.

Writes go through `dnnlib.util.atomic_write`: a failed write (disk full, read-only folder) raises
`dnnlib.util.WriteError`, which names the file, and leaves neither a partial file nor a temporary one.

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
from typing import Any

import torch

# Re-exported: the training loop writes run-directory files through this module.
from dnnlib.util import WriteError as WriteError
from dnnlib.util import atomic_write as atomic_write
from training import legacy, run_log

STATE_VERSION = 1  # Bump when the layout of training states changes.
KEEP_STATES = 2  # Training states kept per run; older ones are deleted once a newer one is complete.


def snapshot_path(run_dir: str, kimg: int) -> str:
    """`run_dir/network-snapshot-KKKKKK.pkl`."""
    return os.path.join(run_dir, f"network-snapshot-{kimg:06d}.pkl")


def new_snapshot_path(run_dir: str, cur_nimg: int) -> str:
    """The path of the snapshot taken at `cur_nimg` images, chosen so that no snapshot is ever replaced.

    The name is the whole kimg, as published (network-snapshot-000084.pkl). When that file exists (a second snapshot
    within one kimg: ticks shorter than 1 kimg, or a --kimg that ends a tick early), the images past the whole kimg
    follow: network-snapshot-000084_500.pkl at 84500 images, which sorts after the first. If even that exists, it is
    a snapshot of the same image count from an earlier session of the run; its path is returned, and the caller keeps
    the file as it is.
    """
    kimg, extra_nimg = divmod(cur_nimg, 1000)
    whole = snapshot_path(run_dir, kimg)
    if not os.path.exists(whole):
        return whole
    return os.path.join(run_dir, f"network-snapshot-{kimg:06d}_{extra_nimg:03d}.pkl")


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

    def write(f) -> None:
        try:
            torch.save(state, f)
        except RuntimeError as error:
            # torch.save reports a failed write of its zip container as a RuntimeError ("[enforce fail at
            # inline_container.cc] ... file write failed"); atomic_write turns an OSError into a WriteError. Any
            # other RuntimeError (a DataLoader worker's death, reported wherever this process happens to be) is not
            # the disk's fault and goes on as it is.
            if not is_write_failure(error):
                raise
            raise OSError(f"torch.save failed: {str(error).splitlines()[0]}") from error

    atomic_write(path, write)
    for old in list_states(os.path.dirname(path))[:-KEEP_STATES]:
        os.remove(old)


def is_write_failure(error: RuntimeError) -> bool:
    """Whether a RuntimeError of torch.save is its zip writer failing to write (disk full, file system gone)."""
    text = str(error)
    return "PytorchStreamWriter" in text or "inline_container" in text or "file write failed" in text


def load_state(path: str, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a training state written by `save_state`.

    Args:
        mmap: Map the tensors' storage instead of reading it, for a quick look at counters and shapes.
    """
    state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path} has training state version {state.get('version')}; expected {STATE_VERSION}")
    return state


def list_states(run_dir: str) -> list[str]:
    """The training states of a run, oldest first."""
    paths = glob.glob(os.path.join(run_dir, "training-state-*.pt"))
    return sorted(p for p in paths if run_log.STATE_NAME.fullmatch(os.path.basename(p)))


def state_next_to_snapshot(pkl_path: str) -> str | None:
    """The training state written with a local snapshot pickle, if it is still there."""
    match = run_log.SNAPSHOT_NAME.fullmatch(os.path.basename(pkl_path))
    if match is None or not os.path.isfile(pkl_path):
        return None
    candidate = os.path.join(os.path.dirname(pkl_path), f"training-state-{match.group(1)}.pt")
    return candidate if os.path.isfile(candidate) else None


def state_mismatches(state: dict[str, Any], modules: dict[str, torch.nn.Module]) -> list[str]:
    """How the networks in a training state differ from `modules` ({'G': ..., 'D': ..., 'G_ema': ...}), one line
    per tensor that is missing, extra or of another shape; [] when the state loads into them."""
    mismatches = []
    for name, module in modules.items():
        saved = state.get(name)
        if not isinstance(saved, dict):
            mismatches.append(f"{name}: not in the file")
            continue
        expected = module.state_dict()
        for key in sorted(expected.keys() - saved.keys()):
            mismatches.append(f"{name}.{key}: not in the file")
        for key in sorted(saved.keys() - expected.keys()):
            mismatches.append(f"{name}.{key}: in the file, not in these networks")
        for key in sorted(saved.keys() & expected.keys()):
            a, b = tuple(saved[key].shape), tuple(expected[key].shape)
            if a != b:
                mismatches.append(f"{name}.{key}: {list(a)} in the file, {list(b)} for these options")
    return mismatches
