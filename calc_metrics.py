"""Compute quality metrics of a network snapshot: check the options, print them, launch the processes."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import click
import torch

import dnnlib
import metrics
from dnnlib.util import bool_option
from torch_utils import distributed, stop_signals
from training import checkpoint
from training.dataset import DatasetError, ImageFolderDataset
from training.inference import load_network, network_option


@dataclasses.dataclass
class MetricsConfig:
    """Everything the metric processes need; built and checked once in the launching process."""

    network_pkl: str  # Snapshot pickle path or URL (a --network run directory's newest snapshot).
    metric_names: list[str]  # Registered metric names, in the order given.
    dataset_kwargs: dict | None  # ImageFolderDataset arguments; None when no metric needs a dataset.
    run_dir: str | None  # Where metric-<name>.jsonl goes; None prints the results.
    gpus: int  # Number of processes.
    verbose: bool  # Progress bars and details.
    detector_dir: str | None  # Searched for detector files before the download cache.
    batch_size: int  # Images per batch per process.
    num_gen: int | None  # Override of the generated image count; None: the protocol's.
    max_real: int | None  # Override of the real image count; None: the protocol's.
    workers: int  # DataLoader worker processes per process.


def parse_metric_names(text: str) -> list[str]:
    """'fid50k_full,kid50k_full' -> the names, refusing unknown ones with the list of registered metrics."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise click.ClickException(f"--metrics is empty; choose from: {', '.join(metrics.list_metrics())}")
    for name in names:
        try:
            metrics.get_metric(name)
        except metrics.UnknownMetricError as error:
            raise click.ClickException(f"--metrics: {error}") from None
    return names


def run_dir_of(network_pkl: str) -> str | None:
    """The run directory holding the snapshot (it has training_options.json), else None."""
    if dnnlib.util.is_url(network_pkl):
        return None
    folder = os.path.dirname(os.path.abspath(network_pkl))
    return folder if os.path.isfile(os.path.join(folder, "training_options.json")) else None


def resolve_dataset_kwargs(
    snapshot: dict, run_dir: str | None, data: str | None, mirror: bool | None, G: torch.nn.Module
) -> dict:
    """The dataset to compare against: --data/--mirror, else the snapshot's training set, else the run's options."""
    kwargs = dict(snapshot.get("training_set_kwargs") or {})
    if not kwargs and run_dir is not None:
        with open(os.path.join(run_dir, "training_options.json")) as f:
            options = json.load(f)
        kwargs = dict(path=options["data"], use_labels=options.get("cond", False), xflip=options.get("mirror", False))
    if data is not None:
        kwargs["path"] = data
    if mirror is not None:
        kwargs["xflip"] = mirror
    if "path" not in kwargs:
        raise click.ClickException(
            "These metrics compare against a dataset, and the snapshot does not record one: pass --data=ZIP|DIR"
        )
    kwargs.setdefault("use_labels", G.c_dim > 0)
    kwargs.setdefault("xflip", False)
    kwargs["resolution"] = G.img_resolution
    try:  # Open it once here, so a bad path is one clear message instead of a failure in every process.
        with ImageFolderDataset(**kwargs) as dataset:
            if dataset.num_channels not in (1, 3):
                raise DatasetError(f"{dataset.path}: {dataset.num_channels} channels; metrics need 1 or 3")
    except (DatasetError, OSError) as error:
        origin = "--data" if data is not None else "the dataset recorded in the snapshot (override with --data)"
        raise click.ClickException(f"{origin}: {error}") from None
    return kwargs


def build_config(opts: dnnlib.EasyDict) -> MetricsConfig:
    """Check the options against the registry, the snapshot, the dataset and the detectors; ClickException if bad."""
    names = parse_metric_names(opts.metrics)
    if (problem := distributed.process_count_error(opts.gpus)) is not None:
        raise click.ClickException(problem)
    network_pkl, snapshot = load_network(opts.network)
    G = snapshot["G_ema"]
    try:
        metrics.check_metrics_available(names, detector_dir=opts.detector_dir, G=G)
    except metrics.MetricError as error:
        raise click.ClickException(str(error)) from None
    run_dir = run_dir_of(network_pkl)
    needs_data = G.c_dim > 0 or any(metrics.get_metric(name).uses_reals for name in names)
    dataset_kwargs = resolve_dataset_kwargs(snapshot, run_dir, opts.data, opts.mirror, G) if needs_data else None
    return MetricsConfig(
        network_pkl=network_pkl,
        metric_names=names,
        dataset_kwargs=dataset_kwargs,
        run_dir=run_dir,
        gpus=opts.gpus,
        verbose=opts.verbose,
        detector_dir=opts.detector_dir,
        batch_size=opts.batch,
        num_gen=opts.num_gen,
        max_real=opts.max_real,
        workers=opts.workers,
    )


def print_config(c: MetricsConfig) -> None:
    """Say what will be measured and where the results go."""
    distributed.print0(f"Network:       {c.network_pkl}")
    distributed.print0(f"Metrics:       {', '.join(c.metric_names)}")
    distributed.print0(f"Dataset:       {json.dumps(c.dataset_kwargs)}")
    distributed.print0(f"Processes:     {c.gpus}")
    if c.num_gen is not None or c.max_real is not None:
        distributed.print0(f"Sample counts: num_gen={c.num_gen}, max_real={c.max_real} (not the standard protocol)")
    where = os.path.join(c.run_dir, "metric-<name>.jsonl") if c.run_dir else "printed (not in a run directory)"
    distributed.print0(f"Results:       {where}")


def run(c: MetricsConfig) -> None:
    """Body of every process. A stop signal (SIGTERM from SLURM or `timeout`, Ctrl-C), to this process or its whole
    group, abandons the metric being computed, ends the data loading workers and exits 143 / 130."""
    try:
        with stop_signals.StopOnSignal():
            measure(c)
    except stop_signals.Stopped as stopped:
        distributed.print0(f"Stopped by {stopped}: the metrics finished before it are recorded, the rest are not.")
        sys.exit(stopped.status)


def measure(c: MetricsConfig) -> None:
    """Load the network, compute each metric, rank 0 records it."""
    device = distributed.select_device()
    G = checkpoint.load_snapshot(c.network_pkl)["G_ema"]
    for name in c.metric_names:
        try:
            result = metrics.calc_metric(
                name,
                G,
                c.dataset_kwargs,
                device,
                dataset_factory=ImageFolderDataset,
                detector_dir=c.detector_dir,
                progress=c.verbose,
                num_gen=c.num_gen,
                max_real=c.max_real,
                batch_size=c.batch_size,
                num_workers=c.workers,
            )
        except metrics.MetricError as error:  # E.g. a corrupt detector file: a message, not a stack trace.
            raise click.ClickException(f"{name}: {error}") from None
        metrics.report_metric(result, run_dir=c.run_dir, snapshot_pkl=c.network_pkl)


@click.command(context_settings=dict(terminal_width=120, max_content_width=120))
@network_option()
@click.option(
    "--metrics",
    metavar="LIST",
    default="fid50k_full",
    show_default=True,
    help=f"Comma-separated metrics: {', '.join(metrics.list_metrics())}.",
)
@click.option("--data", metavar="[ZIP|DIR]", help="Dataset to compare against  [default: the snapshot's].")
@bool_option("--mirror", help="Include x-flipped reals  [default: the snapshot's].")
@click.option("--gpus", metavar="INT", type=click.IntRange(min=1), default=1, show_default=True, help="Processes.")
@bool_option("--verbose", default=True, show_default=True, help="Show progress.")
@click.option(
    "--detector-dir",
    metavar="DIR",
    type=click.Path(exists=True),
    help="Folder with detector files (inception-2015-12-05.pkl, vgg16.pkl), for machines without network.",
)
@click.option(
    "--batch",
    metavar="INT",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Images per batch per process.",
)
@click.option(
    "--num-gen",
    metavar="INT",
    type=click.IntRange(min=2),
    help="Generated images instead of the protocol's (quick checks; not comparable).",
)
@click.option(
    "--max-real",
    metavar="INT",
    type=click.IntRange(min=2),
    help="Real images instead of the protocol's (quick checks; not comparable).",
)
@click.option(
    "--workers",
    metavar="INT",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Data loading processes per process.",
)
def main(**kwargs) -> None:
    """Compute quality metrics of a network snapshot.

    Results go to metric-<name>.jsonl next to the snapshot when it is in a run directory (with
    training_options.json), else they are printed as JSON lines. The dataset defaults to the one the
    snapshot was trained on. Detector networks are downloaded once into $DNNLIB_CACHE_DIR; offline, pass
    --detector-dir. See docs/metrics.md.

    Examples:

    \b
    python calc_metrics.py --metrics=fid50k_full,kid50k_full \\
        --network=runs/00000-stylegan3-t-ffhq-gpus8-batch32-gamma8.2/network-snapshot-000400.pkl
    \b
    # The newest snapshot of a run:
    python calc_metrics.py --metrics=fid50k_full --network=runs/00000-stylegan3-t-ffhq-gpus8-batch32-gamma8.2
    \b
    # Against another dataset, with 2 GPUs:
    python calc_metrics.py --metrics=pr50k3_full --network=sg2.pkl --data=datasets/ffhq-256.zip --mirror=1 --gpus=2
    \b
    # Offline, with detector files copied to a folder:
    python calc_metrics.py --metrics=fid50k_full --network=sg2.pkl --detector-dir=detectors
    \b
    # Equivariance of a StyleGAN3 network (no dataset or detector needed):
    python calc_metrics.py --metrics=eqt50k_int,eqt50k_frac,eqr50k --network=sg3-r.pkl
    """
    c = build_config(dnnlib.EasyDict(kwargs))
    print_config(c)
    distributed.launch(run, (c,), num_processes=c.gpus)  # Exits 143 / 130 when a process was stopped by a signal.


if __name__ == "__main__":
    main()
