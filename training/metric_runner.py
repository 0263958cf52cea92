"""Quality metrics of each network snapshot during training (`train.py --metrics`)."""

from __future__ import annotations

from typing import Any

import torch

import metrics
from training.run_log import RunLog


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

    def evaluate(self, G_ema: torch.nn.Module, snapshot_pkl: str, kimg: float) -> None:
        """Compute every metric of G_ema (a collective call: all ranks take part) and record the results."""
        for name in self.names:
            result = metrics.calc_metric(
                name, G_ema, self.dataset_kwargs, self.device, detector_dir=self.detector_dir,
                num_workers=self.num_workers,
            )  # fmt: skip
            metrics.report_metric(result, run_dir=self.run_dir, snapshot_pkl=snapshot_pkl)
            if self.log is not None:
                self.log.write_scalars({f"Metrics/{key}": value for key, value in result["results"].items()}, kimg)
