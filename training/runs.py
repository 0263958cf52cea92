"""Run directories and resuming: where a run writes, and what --resume continues or starts from.

Layout. Each new run gets `outdir/NNNNN-<cfg>-<data>-gpus<N>-batch<B>-gamma<G>[-desc]`, numbered one past the
highest number under `outdir` (`next_run_dir`). Rank 0 writes into it `training_options.json` (the TrainingConfig,
before the first step), `log.txt`, `stats.jsonl` and TensorBoard events (run_log.py), `reals.png`, `fakes_init.png`
and `fakesKKKKKK.png`, `network-snapshot-KKKKKK.pkl` (the weights users load) with `training-state-KKKKKK.pt` beside
it (everything needed to continue exactly; also written between snapshots, per --state-min and --state-kimg),
`metric-<name>.jsonl`, `best-<metric>.pkl` and `progress.png`. KKKKKK is the image count in whole kimg; a second
snapshot within the same kimg is `network-snapshot-KKKKKK_NNN.pkl` (checkpoint.new_snapshot_path), never a
replacement.

What --resume means (`resolve_resume`, before any process starts):
- `--resume=RUN_DIR` continues that run in place from its newest training state: same directory, counters and
  schedule, with its logs first cut back to that state (`prepare_run_dir`), so it computes what the uninterrupted
  run computes. The directory needs `training_options.json` and a `training-state-*.pt`, and the options of
  FIXED_WHEN_CONTINUING must equal the saved ones (`changed_options` names those that differ). A run whose newest
  state has reached --kimg (the total) is complete: `RunComplete` says so, and train.py writes nothing.
- `--resume=latest` does the same with the highest-numbered run under --outdir that has a training state, and
  starts a new run when there is none: one command for the first start and every restart.
- `--resume=PKL` (or a URL) starts a new run directory from the snapshot's weights (`resume` copies the tensors
  whose name and shape match), at kimg 0 with the fine-tuning settings (config.fine_tuning). A training state
  beside the pickle only earns a note naming the --resume=RUN_DIR that would continue that run instead.

What is checked before launch (`check_before_launch`), so that a bad start fails in seconds with a sentence (a
ConfigError, which train.py prints): --outdir, or the run directory continued, can be written; a snapshot shares
at least one tensor with this run's networks; a training state is readable and fits the networks of the options.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import tempfile
from typing import TYPE_CHECKING

import torch

import dnnlib
from torch_utils import distributed, misc
from training import checkpoint, run_log
from training.config import FIXED_WHEN_CONTINUING, ConfigError, TrainingConfig, construct_networks

if TYPE_CHECKING:
    from training.training_loop import Trainer

# ----------------------------------------------------------------------------
# Before launch (train.py): what --resume means, and the checks.


def resolve_resume(c: TrainingConfig) -> TrainingConfig:
    """Decide what --resume means: a run directory or `latest` continues that run in place; a snapshot pickle
    or URL always starts a new run from its weights, as in the published tools (kimg 0, fine-tuning settings)."""
    if c.resume is None:
        return c
    if c.resume == "latest":
        run_dir = latest_run_dir(c.outdir)
        if run_dir is None:  # One command for the first start and every restart (a requeued job, say).
            distributed.print0(f"--resume=latest: no run under {c.outdir} has a training state yet; starting one.")
            return c
        return continue_in_place(c, run_dir)
    if os.path.isdir(c.resume):
        return continue_in_place(c, c.resume)
    if run_log.STATE_NAME.fullmatch(os.path.basename(c.resume)) and os.path.isfile(c.resume):
        raise ConfigError(
            f"--resume={c.resume} is a training state: to continue its run exactly, pass its run directory, "
            f"--resume={os.path.dirname(c.resume) or '.'} (which continues from the run's newest state); to start a "
            f"new run from weights, pass a network-snapshot-*.pkl"
        )
    state = checkpoint.state_next_to_snapshot(c.resume)
    if state is not None:
        run_dir = os.path.dirname(os.path.abspath(state))
        changed = changed_options(c, run_dir)
        condition = f" with its options ({changed})" if changed else ""
        distributed.print0(
            f"Note: {os.path.basename(state)} sits next to this snapshot, but a pickle only gives weights (kimg "
            f"starts at 0); to continue that run exactly, pass --resume={run_dir}{condition}"
        )
    return dataclasses.replace(c, resume_pkl=c.resume)


def latest_run_dir(outdir: str) -> str | None:
    """The highest-numbered run directory under `outdir` that has a training state; None if there is none."""
    runs = sorted(
        glob.glob(os.path.join(outdir, "[0-9]*-*")), key=lambda p: int(re.match(r"\d+", os.path.basename(p))[0])
    )
    runs = [run for run in runs if checkpoint.list_states(run)]
    return runs[-1] if runs else None


def continue_in_place(c: TrainingConfig, run_dir: str) -> TrainingConfig:
    """Continue `run_dir` from its newest training state, refusing option changes that would alter the run."""
    states = checkpoint.list_states(run_dir)
    if not os.path.isfile(os.path.join(run_dir, "training_options.json")) or not states:
        raise ConfigError(
            f"--resume={c.resume}: {run_dir} has no training_options.json and training-state-*.pt to continue; to "
            f"start from one of its snapshots' weights, pass --resume=<network-snapshot pkl>"
        )
    try:
        saved = TrainingConfig.load(run_dir)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(
            f"--resume={c.resume}: cannot read {os.path.join(run_dir, 'training_options.json')} ({error})"
        ) from None
    details = changed_options(c, run_dir)
    if details:
        raise ConfigError(
            f"--resume={c.resume}: these options differ from the run being continued ({details}). Run the same "
            f"command as before, or start a new run from a snapshot with --resume=<network-snapshot pkl>"
        )
    trained_nimg = state_nimg(states[-1])
    if trained_nimg is not None and trained_nimg >= c.total_kimg * 1000:
        raise RunComplete(
            f"{run_dir} is complete: it has trained {trained_nimg / 1000:g} kimg of --kimg={c.total_kimg:g} (--kimg "
            f"is the total, not an amount to add). Nothing was written. To train further, raise --kimg (for example "
            f"--kimg={suggested_kimg(trained_nimg / 1000)}); to start a new run, leave out --resume."
        )
    return dataclasses.replace(c, run_dir=run_dir, outdir=saved.outdir, resume_state=states[-1])


class RunComplete(Exception):
    """--resume names a run that has already trained --kimg: there is nothing to do (not an error; train.py exits
    with status 0). The message says so and how to train further."""


def state_nimg(path: str) -> int | None:
    """The image count a training state was saved at; None when it cannot be read (check_state says why)."""
    try:
        return int(checkpoint.load_state(path, mmap=True)["progress"]["cur_nimg"])
    except Exception:  # noqa: BLE001 - torch.load raises many types for a damaged file; check_state reports it.
        return None


def suggested_kimg(trained_kimg: float) -> int:
    """A round --kimg to suggest for training further: twice what was trained, at two significant digits."""
    return int(float(f"{2 * max(trained_kimg, 1):.2g}"))


def changed_options(c: TrainingConfig, run_dir: str) -> str:
    """'cmax: 8 -> 16, ...' for the options of FIXED_WHEN_CONTINUING in which `c` differs from the run in
    `run_dir` (its training_options.json); '' when they agree or the run's options cannot be read."""
    try:
        saved = TrainingConfig.load(run_dir)
    except (OSError, ValueError, TypeError):
        return ""
    changed = [name for name in FIXED_WHEN_CONTINUING if getattr(saved, name) != getattr(c, name)]
    if saved.batch_gpu_auto and c.batch_gpu_auto:  # The run chose batch_gpu itself; its training state keeps it.
        changed = [name for name in changed if name != "batch_gpu"]
    return ", ".join(f"{name}: {getattr(saved, name)!r} -> {getattr(c, name)!r}" for name in changed)


def check_before_launch(c: TrainingConfig, dataset_info: dict) -> None:
    """Refuse (ConfigError) an unwritable output folder and a snapshot or training state that the run could not
    start from, before any process starts.

    Args:
        dataset_info: The dataset's resolution, num_channels and label_dim (train.inspect_dataset).
    """
    check_outdir(c)
    if c.resume_pkl is not None:
        check_transfer(c, dataset_info)
    if c.resume_state is not None:
        check_state(c, dataset_info)


def check_outdir(c: TrainingConfig) -> None:
    """Refuse an --outdir (or the run directory being continued) that cannot be created or written, now rather than
    after the processes have started."""
    option, folder = ("--resume", c.run_dir) if c.resume_state is not None else ("--outdir", c.outdir)
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):  # The folders still to be made go into the nearest existing one.
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{option}={folder}: {existing} is a file, so no folder can be made there")
    try:
        # A real write: permission bits do not tell about read-only mounts, ACLs or root.
        with tempfile.TemporaryFile(dir=existing, prefix=".tmp-probe-"):
            pass
    except OSError as error:
        raise ConfigError(
            f"{option}={folder}: cannot write in {existing} ({error.strerror or error}); choose a writable folder "
            f"or fix its permissions"
        ) from None


def check_transfer(c: TrainingConfig, dataset_info: dict) -> None:
    """Refuse --resume=PKL when none of its tensors fits this run's networks (it would silently train from scratch)."""
    try:
        snapshot = checkpoint.load_snapshot(c.resume_pkl)
    except (OSError, ValueError) as error:
        raise ConfigError(f"--resume={c.resume}: {error}") from None
    label_dim = dataset_info["label_dim"] if c.cond else 0
    G, D = construct_networks(c, dataset_info["resolution"], dataset_info["num_channels"], label_dim)
    matches = sum(len(transfer_weights(snapshot[name], net)[0]) for name, net in [("G", G), ("D", D)])
    if matches == 0:
        raise ConfigError(
            f"--resume={c.resume}: no tensor of its G or D has the name and shape of one in this run's networks "
            f"(--cfg={c.cfg}, {dataset_info['resolution']}x{dataset_info['resolution']}, --cbase={c.cbase}, "
            f"--cmax={c.cmax}); training would start from scratch. Check --cfg, --cbase, --cmax and the snapshot."
        )


def check_state(c: TrainingConfig, dataset_info: dict) -> None:
    """Refuse to continue from a training state that is unreadable or does not fit the networks these options
    build, before any process starts (it would otherwise fail in load_state_dict, mid-start)."""
    try:
        state = checkpoint.load_state(c.resume_state, mmap=True)  # Mapped: only shapes and counters are read.
    except Exception as error:  # torch.load raises many types for a damaged file; all mean the same here.
        raise ConfigError(
            f"--resume={c.resume}: cannot read {c.resume_state} ({type(error).__name__}: {error}). If it is damaged, "
            f"move it away to continue from the run's previous training state"
        ) from None
    label_dim = dataset_info["label_dim"] if c.cond else 0
    G, D = construct_networks(c, dataset_info["resolution"], dataset_info["num_channels"], label_dim)
    mismatches = checkpoint.state_mismatches(state, {"G": G, "D": D, "G_ema": G})
    if mismatches:
        shown = "; ".join(mismatches[:4]) + (f"; and {len(mismatches) - 4} more" if len(mismatches) > 4 else "")
        raise ConfigError(
            f"--resume={c.resume}: {c.resume_state} does not fit the networks of these options (--cfg={c.cfg}, "
            f"--cbase={c.cbase}, --cmax={c.cmax}, --map-depth={c.map_depth}, {dataset_info['resolution']}px, "
            f"label_dim={label_dim}): {shown}. It was written with other options than the run's "
            f"training_options.json says; put back that run's own files, or start a new run from a snapshot's "
            f"weights with --resume=<network-snapshot pkl>"
        )


# ----------------------------------------------------------------------------
# At launch (every process): the run directory, and loading what --resume names.


def prepare_run_dir(c: TrainingConfig) -> TrainingConfig:
    """Create the run directory and training_options.json on rank 0 (unless continuing in place); every rank
    returns the config with `run_dir` set.

    Continuing in place from a training state, the per-tick and per-snapshot logs are first cut back to that state
    (`run_log.drop_entries_after`), so they read as one uninterrupted run.

    Raises:
        dnnlib.util.WriteError: the run directory or its options file cannot be written (the message names it); a
            run directory made here is removed again, so no empty run is left behind.
    """
    if distributed.is_main():
        continuing = c.run_dir is not None and os.path.isdir(c.run_dir)
        if not continuing:
            for _ in range(100):
                c = dataclasses.replace(c, run_dir=next_run_dir(c))
                try:
                    os.makedirs(c.run_dir)
                    break
                except FileExistsError:
                    continue  # Another job took this number since we listed the folder: take the next one.
                except OSError as error:
                    raise dnnlib.util.WriteError(dnnlib.util.describe_write_failure(c.run_dir, error)) from error
            else:
                raise dnnlib.util.WriteError(f"Could not make a new run directory in {c.outdir}: every name was taken")
        try:
            write_training_options(c)
        except dnnlib.util.WriteError:
            if not continuing:
                os.rmdir(c.run_dir)  # Still empty: the failed write left no file.
            raise
        if continuing and c.resume_state is not None:
            progress = checkpoint.load_state(c.resume_state, mmap=True)["progress"]
            for note in run_log.drop_entries_after(c.run_dir, progress["cur_tick"], progress["cur_nimg"] / 1000):
                print(note)
    return distributed.broadcast_object(c)


def next_run_dir(c: TrainingConfig) -> str:
    """outdir/NNNNN-<cfg>-<data>-gpus<N>-batch<B>-gamma<G>[-desc], numbered after the existing runs."""
    existing = [name for name in os.listdir(c.outdir)] if os.path.isdir(c.outdir) else []
    numbers = [int(m.group(1)) for m in (re.match(r"^(\d+)-", name) for name in existing) if m]
    data_name = os.path.splitext(os.path.basename(os.path.normpath(c.data)))[0]
    desc = f"{c.cfg}-{data_name}-gpus{c.gpus}-batch{c.batch_size}-gamma{c.gamma:g}"
    if c.desc:
        desc += f"-{c.desc}"
    return os.path.join(c.outdir, f"{max(numbers, default=-1) + 1:05d}-{desc}")


def write_training_options(c: TrainingConfig) -> None:
    """Write `run_dir/training_options.json` atomically (call on rank 0)."""
    checkpoint.atomic_write(os.path.join(c.run_dir, "training_options.json"), lambda f: f.write(c.to_json().encode()))


def resume(c: TrainingConfig, t: Trainer) -> bool:
    """Load the training state or snapshot weights `c` names, if any. Returns whether counters carried over."""
    if c.resume_state is not None:
        distributed.print0(f"Continuing from {c.resume_state}")
        t.load_state_dict(checkpoint.load_state(c.resume_state, map_location=next(t.G.parameters()).device))
        return True
    if c.resume_pkl is not None:
        snapshot = checkpoint.load_snapshot(c.resume_pkl)
        source = snapshot.get("source", "our snapshot format")
        distributed.print0(f"Starting a new run from the weights of {c.resume_pkl} ({source}; kimg starts at 0)")
        for name, module in [("G", t.G), ("D", t.D), ("G_ema", t.ema.module)]:
            if snapshot.get(name) is None:
                distributed.print0(f"{name}: the snapshot has none; every tensor starts at its initialization")
                continue
            copied, _ = transfer_weights(snapshot[name], module)
            names = [tensor_name for tensor_name, _ in misc.named_params_and_buffers(module)]
            summary = describe_transfer(names, copied)
            distributed.print0(f"{name}: copied {len(copied)} of {len(names)} tensors; {summary}")
    return False


def transfer_weights(src: torch.nn.Module, dst: torch.nn.Module) -> tuple[list[str], list[str]]:
    """Copy the tensors of `src` whose name and shape exist in `dst`; return the copied and the other names."""
    copied = misc.copy_params_and_buffers(src, dst, skip_mismatched=True)
    left = [name for name, _ in misc.named_params_and_buffers(dst) if name not in set(copied)]
    return copied, left


def describe_transfer(names: list[str], copied: list[str]) -> str:
    """Which parts of a network were copied, by layer block in the network's order (`mapping`, `synthesis.b16`,
    `synthesis.L3_52_512`, D's `b64`): 'all of mapping, synthesis.b4; 3 of 9 of synthesis.b16; none of b32'."""
    totals: dict[str, list[int]] = {}  # block -> [copied, total]
    copied_set = set(copied)
    for name in names:
        parts = name.split(".")
        block = ".".join(parts[:2]) if parts[0] == "synthesis" and len(parts) > 2 else parts[0]
        counts = totals.setdefault(block, [0, 0])
        counts[0] += name in copied_set
        counts[1] += 1
    full = [block for block, (n, total) in totals.items() if n == total]
    partial = [f"{n} of {total} of {block}" for block, (n, total) in totals.items() if 0 < n < total]
    empty = [block for block, (n, _) in totals.items() if n == 0]
    summary = [f"all of {', '.join(full)}"] if full else []
    summary += partial + ([f"none of {', '.join(empty)}"] if empty else [])
    return "; ".join(summary)
