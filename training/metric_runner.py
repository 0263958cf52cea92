"""Quality metrics of each network snapshot during training (`train.py --metrics`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

import dnnlib
import metrics
from torch_utils import distributed
from training.dataset import ImageFolderDataset
from training.run_log import RunLog, read_jsonl


class MetricRunner:
    """Evaluates the run's metrics on a snapshot's G_ema on every rank; rank 0 appends them to
    `run_dir/metric-<name>.jsonl` and logs them as TensorBoard scalars `Metrics/<result>`."""

    def __init__(
        self,
        names: list[str],
        dataset_kwargs: dict[str, Any],
        run_dir: str,
        device: torch.device,
        detector_dir: str | None = None,
        num_workers: int = 3,
        log: RunLog | None = None,
    ):
        self.names = list(names)  # Registered metric names; empty: nothing to do.
        self.dataset_kwargs = dict(dataset_kwargs)  # The training set, as the snapshots record it.
        self.run_dir = run_dir  # Where metric-<name>.jsonl go.
        self.device = device  # This rank's device.
        self.detector_dir = detector_dir  # Searched for detector files before the download cache.
        self.num_workers = num_workers  # DataLoader processes reading real images.
        self.log = log  # Rank 0's run log (TensorBoard); None on the other ranks.

    def evaluate(self, G_ema: torch.nn.Module, snapshot_pkl: str, kimg: float) -> list[dict[str, Any]]:
        """Compute every metric of G_ema (a collective call: all ranks take part), record and return the results."""
        results = []
        for name in self.names:
            result = metrics.calc_metric(
                name,
                G_ema,
                self.dataset_kwargs,
                self.device,
                dataset_factory=ImageFolderDataset,
                detector_dir=self.detector_dir,
                num_workers=self.num_workers,
            )
            metrics.report_metric(result, run_dir=self.run_dir, snapshot_pkl=snapshot_pkl)
            if self.log is not None:
                self.log.write_scalars({f"Metrics/{key}": value for key, value in result["results"].items()}, kimg)
            results.append(result)
        return results


class BestSnapshot:
    """best-<metric>.pkl: a copy of the snapshot with the best first result of a metric so far, and the number of
    evaluations since it last improved (for --stop-patience).

    The record is the run's own metric-<metric>.jsonl, so a continued run (whose logs were cut back to its training
    state) picks up the best value and the count where they were, with nothing else to save.
    """

    def __init__(self, run_dir: str, metric: str):
        self.run_dir = run_dir
        self.metric = metric
        self.higher_is_better = metrics.get_metric(metric).higher_is_better
        self.path = os.path.join(run_dir, f"best-{metric}.pkl")
        self.best: float | None = None  # The best first result so far; None before the first evaluation.
        self.best_snapshot: str | None = None  # The snapshot it came from, as the log names it.
        self.since_best = 0  # Evaluations since the best one.
        log_path = os.path.join(run_dir, f"metric-{metric}.jsonl")
        for record in read_jsonl(log_path) if os.path.isfile(log_path) else []:
            self._account(next(iter(record["results"].values())), record.get("snapshot_pkl"))

    def _account(self, value: float, snapshot: str | None) -> bool:
        """Count one evaluation; True when it is the best so far."""
        better = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if better and math.isfinite(value):
            self.best, self.best_snapshot, self.since_best = value, snapshot, 0
            return True
        self.since_best += 1
        return False

    def update(self, result: dict[str, Any], snapshot_pkl: str) -> None:
        """Account for a new result of the metric; on improvement copy the snapshot to best-<metric>.pkl (rank 0)."""
        if self._account(next(iter(result["results"].values())), os.path.basename(snapshot_pkl)):
            if distributed.is_main():
                data = Path(snapshot_pkl).read_bytes()
                dnnlib.util.atomic_write(self.path, lambda f: f.write(data))
                print(f"New best {self.metric}: {self.best:g}; copied to {os.path.basename(self.path)}")

    def describe(self) -> str:
        """The best value and where it is kept."""
        return f"best {self.metric} {self.best:g} from {self.best_snapshot}, kept as {self.path}"
