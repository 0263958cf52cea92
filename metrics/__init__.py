"""Quality metrics: FID, KID, precision/recall, IS, PPL, equivariance (EQ-T, EQ-R) and SWD.

Every metric registers itself (`metrics.registry.register_metric`); `list_metrics()` names them. The training
loop and calc_metrics.py use four functions:

    check_metrics_available(names, detector_dir)   # before training: unknown names, missing detector files
    result = calc_metric(name, G, dataset_kwargs, device, dataset_factory=ImageFolderDataset)   # on every rank
    report_metric(result, run_dir, snapshot_pkl)   # rank 0 appends to run_dir/metric-<name>.jsonl

Metrics import no training code: the caller passes the generator, and the class that opens its dataset
(`training.dataset.ImageFolderDataset`). See docs/metrics.md for the protocols.
"""

# Importing the metric modules registers their metrics.
from metrics import (  # noqa: F401
    equivariance,
    frechet_inception_distance,
    inception_score,
    kernel_inception_distance,
    perceptual_path_length,
    precision_recall,
    sliced_wasserstein,
)
from metrics.api import calc_metric, check_metrics_available, report_metric
from metrics.detectors import DetectorLoadError, DetectorUnavailableError
from metrics.registry import IncompatibleNetworkError, MetricError, UnknownMetricError, get_metric, list_metrics

__all__ = [
    "DetectorLoadError",
    "DetectorUnavailableError",
    "IncompatibleNetworkError",
    "MetricError",
    "UnknownMetricError",
    "calc_metric",
    "check_metrics_available",
    "get_metric",
    "list_metrics",
    "report_metric",
]
