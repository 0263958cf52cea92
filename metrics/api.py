"""What the training loop and calc_metrics.py call: check, compute and record a metric."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import dnnlib
from metrics import detectors
from metrics.features import MetricContext, RealDataset, all_ranks
from metrics.registry import MetricError, MetricSpec, check_network, get_metric
from torch_utils import distributed


def needed_detectors(specs: list[MetricSpec]) -> dict[detectors.DetectorSpec, list[str]]:
    """Detector -> names of the metrics among `specs` that load it."""
    needed: dict[detectors.DetectorSpec, list[str]] = {}
    for spec in specs:
        for detector in spec.detectors:
            needed.setdefault(detector, []).append(spec.name)
    return needed


def check_metrics_available(
    names: list[str], detector_dir: str | None = None, G: torch.nn.Module | None = None, download: bool = True
) -> None:
    """Check, without computing anything, that the metrics exist, their detectors can be had, and G fits them.

    Missing detectors are downloaded into the cache when `download` (so a later offline run finds them).

    Args:
        names:        Metric names, e.g. ['fid50k_full', 'kid50k_full'].
        detector_dir: Folder (or file) searched for detector files before the download cache.
        G:            The generator to be measured; None skips the network checks (equivariance needs StyleGAN3).
        download:     Try the detectors' URLs for files found neither in `detector_dir` nor in the cache.

    Raises:
        UnknownMetricError:       a name is not registered (the message lists the registered ones).
        IncompatibleNetworkError: G cannot be measured by one of the metrics.
        DetectorUnavailableError: detector files are missing; the message names each file, its URL, and where to
                                  put it (all of them ValueError subclasses).
    """
    specs = [get_metric(name) for name in names]
    if G is not None:
        for spec in specs:
            check_network(spec, G)
    detectors.require(needed_detectors(specs), detector_dir, download=download)


def calc_metric(
    name: str,
    G: torch.nn.Module,
    dataset_kwargs: dict[str, Any] | None,
    device: torch.device,
    dataset_factory: Callable[..., RealDataset] | None = None,
    detector_dir: str | None = None,
    progress: bool = False,
    cache: bool = True,
    num_gen: int | None = None,
    max_real: int | None = None,
    batch_size: int = 64,
    num_workers: int = 3,
) -> dict[str, Any]:
    """Compute one metric of generator G. With several processes, every rank calls this and gets the result.

    Args:
        name:            A registered metric name (`list_metrics()`).
        G:               The generator (e.g. G_ema); it is copied, so the caller's module is not changed.
        dataset_kwargs:  ImageFolderDataset arguments of the real data (the snapshot's `training_set_kwargs`);
                         None is allowed for metrics without reals and an unconditional G.
        device:          This rank's device.
        dataset_factory: Opens the real data when called with dataset_kwargs (use_labels overridden): the
                         training set's class, `training.dataset.ImageFolderDataset`. Needed with dataset_kwargs.
        detector_dir:    Folder (or file) searched for detector files before the download cache.
        progress:        Show progress bars (rank 0).
        cache:           Reuse and write dataset statistics under `$DNNLIB_CACHE_DIR/gan-metrics`.
        num_gen:         Override the protocol's number of generated images (samples); None: the protocol's
                         (50k, or 16k for swd). For quick checks and tests; results are then not comparable.
        max_real:        Override the protocol's number of real images; None: the protocol's (all for *_full).
        batch_size:      Images per batch on each rank.
        num_workers:     DataLoader processes reading real images; 0 reads in this process.

    Returns:
        {'results': {result name: value}, 'metric': name, 'total_time': seconds, 'total_time_str': '1m 05s',
        'num_gpus': processes, 'num_gen': images generated, 'max_real': the protocol's limit on real images,
        'num_real': real images measured, 'snapshot_pkl': None, 'timestamp': unix time}.
    """
    if dataset_kwargs is not None and dataset_factory is None:
        raise ValueError("dataset_kwargs need a dataset_factory to open them, e.g. training.dataset.ImageFolderDataset")
    spec = get_metric(name)
    check_network(spec, G)
    start = time.time()
    paths = _locate_detectors(spec, detector_dir, device)
    ctx = MetricContext(
        G=copy.deepcopy(G).eval().requires_grad_(False).to(device),
        dataset_kwargs=dataset_kwargs,
        device=device,
        num_gen=spec.num_gen if num_gen is None else num_gen,
        max_real=spec.max_real if max_real is None else max_real,
        detector_paths=paths,
        dataset_factory=dataset_factory,
        batch_size=batch_size,
        num_workers=num_workers,
        cache=cache,
        progress=progress,
    )
    results = spec.fn(ctx)
    total_time = time.time() - start
    return {
        "results": {key: float(value) for key, value in results.items()},
        "metric": name,
        "total_time": total_time,
        "total_time_str": dnnlib.util.format_time(total_time),
        "num_gpus": distributed.get_world_size(),
        "num_gen": ctx.num_gen if ctx.num_gen_used is None else ctx.num_gen_used,  # What was generated.
        "max_real": ctx.max_real if spec.uses_reals else None,  # The protocol's limit (None: the whole dataset).
        "num_real": ctx.num_real_used if spec.uses_reals else None,  # What was measured.
        "snapshot_pkl": None,
        "timestamp": time.time(),
    }


def _locate_detectors(spec: MetricSpec, detector_dir: str | None, device: torch.device) -> dict:
    """Detector files of `spec`: rank 0 finds or downloads them first, then the other ranks (maybe from its cache)."""
    if not spec.detectors:
        return {}
    needed = needed_detectors([spec])
    paths, error = {}, None
    if distributed.is_main():
        try:
            paths = detectors.require(needed, detector_dir)
        except MetricError as caught:
            error = caught
    ok = all_ranks(error is None, device)  # Only rank 0 can fail here; also makes the others wait for it.
    if error is not None:
        raise error
    if not ok:
        raise detectors.DetectorUnavailableError("Rank 0 could not get the detector files; see its error message")
    # The other ranks find rank 0's download on shared storage, or download it to their machine's cache.
    return paths if distributed.is_main() else detectors.require(needed, detector_dir)


def report_metric(result: dict[str, Any], run_dir: str | None = None, snapshot_pkl: str | None = None) -> None:
    """Append the result as one JSON line to `run_dir/metric-<name>.jsonl` and print a summary line, or print the
    JSON line when run_dir is None.

    Only rank 0 writes or prints. `snapshot_pkl` is recorded relative to `run_dir` when inside it.
    """
    if not distributed.is_main():
        return
    result = dict(result)
    if snapshot_pkl is not None and run_dir is not None and not dnnlib.util.is_url(snapshot_pkl):
        relative = os.path.relpath(snapshot_pkl, run_dir)
        snapshot_pkl = relative if not relative.startswith("..") else snapshot_pkl
    result["snapshot_pkl"] = snapshot_pkl
    line = json.dumps(result)
    if run_dir is None:
        print(line)
        return
    # Rewritten whole and atomically (the file holds one short line per snapshot): a full disk leaves the old file
    # and a WriteError naming it, never a torn line.
    path = os.path.join(run_dir, f"metric-{result['metric']}.jsonl")
    previous = Path(path).read_bytes() if os.path.isfile(path) else b""
    dnnlib.util.atomic_write(path, lambda f: f.write(previous + (line + "\n").encode()))
    print(f"{result['metric']}: {json.dumps(result['results'])} ({result['total_time_str']})")
