"""progress.png: a run's health at a glance, drawn from its stats.jsonl and metric-*.jsonl with matplotlib.

Panels, each over kimg, drawn when the run has the statistics: G and D losses, the R1 and path length penalties,
the augmentation probability (unless --aug=noaug), seconds per kimg, and one panel per metric. The training loop
redraws it with every snapshot; for any run directory (a finished one, another machine's, a run still going):

    python -m training.plots runs/00000-stylegan2-shapes-32-gpus1-batch16-gamma0.0128
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Iterable
from typing import Any

import click

import dnnlib
from training.run_log import read_jsonl, snapshot_kimg

AUGMENT_PANEL = "Augmentation probability"  # Left out for a run with --aug=noaug.
# Panel title -> (statistic in stats.jsonl, legend label) of each line it draws.
STAT_PANELS: dict[str, list[tuple[str, str]]] = {
    "Losses": [("Loss/G/loss", "G"), ("Loss/D/loss", "D")],
    "Regularization": [("Loss/r1_penalty", "R1 penalty"), ("Loss/pl_penalty", "path length penalty")],
    AUGMENT_PANEL: [("Progress/augment", "p")],
    "Speed (s/kimg)": [("Timing/sec_per_kimg", "s/kimg")],
}


def run_option(run_dir: str, name: str) -> Any:
    """Option `name` of the run's training_options.json; None when the file or the option is missing or unreadable."""
    try:
        with open(os.path.join(run_dir, "training_options.json")) as f:
            return json.load(f).get(name)
    except (OSError, ValueError, AttributeError):
        return None


def stat_series(ticks: Iterable[dict[str, Any]], name: str) -> tuple[list[float], list[float]]:
    """(kimg, mean) of statistic `name` over the ticks that reported it."""
    xs, ys = [], []
    for tick in ticks:
        if name in tick and "Progress/kimg" in tick:
            xs.append(tick["Progress/kimg"]["mean"])
            ys.append(tick[name]["mean"])
    return xs, ys


def metric_series(run_dir: str) -> dict[str, tuple[list[float], list[float]]]:
    """Each metric result over the kimg of its snapshot: {result name: (kimg, value)}."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "metric-*.jsonl"))):
        for record in read_jsonl(path):
            kimg = snapshot_kimg(record)
            if kimg < 0:
                continue
            for name, value in record.get("results", {}).items():
                xs, ys = series.setdefault(name, ([], []))
                xs.append(kimg)
                ys.append(value)
    return series


def write_progress(run_dir: str, output: str | None = None) -> list[str]:
    """Draw progress.png (or `output`) for a run directory, atomically; return the titles of the panels drawn."""
    import matplotlib

    matplotlib.use("Agg")  # Files only: no display is needed (or wanted) on a training machine.
    import matplotlib.pyplot as plt

    stats_path = os.path.join(run_dir, "stats.jsonl")
    ticks = read_jsonl(stats_path) if os.path.isfile(stats_path) else []
    panels = []  # (title, [(label, xs, ys)])
    for title, lines in STAT_PANELS.items():
        if title == AUGMENT_PANEL and run_option(run_dir, "aug") == "noaug":
            continue  # A p of 0 throughout says nothing; the panel's place goes to the metrics.
        drawn = [(label, *stat_series(ticks, name)) for name, label in lines]
        drawn = [(label, xs, ys) for label, xs, ys in drawn if xs]
        if drawn:
            panels.append((title, drawn))
    panels += [(f"Metric: {name}", [(name, xs, ys)]) for name, (xs, ys) in metric_series(run_dir).items()]
    if not panels:
        raise ValueError(f"{run_dir}: nothing to plot (no stats.jsonl or metric-*.jsonl with numbers in it)")

    columns = 2
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(12, 3.2 * rows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels, strict=False):
        for label, xs, ys in lines:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("kimg")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend()
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(os.path.basename(os.path.normpath(run_dir)))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    path = output or os.path.join(run_dir, "progress.png")
    dnnlib.util.atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return [title for title, _ in panels]


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--output", metavar="FILE", type=click.Path(dir_okay=False), help="Where to write  [default: RUN_DIR/progress.png]."
)
def main(run_dir: str, output: str | None) -> None:
    """Draw RUN_DIR/progress.png: losses, penalties, augmentation, speed and metrics over kimg."""
    try:
        titles = write_progress(run_dir, output)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"Wrote {output or os.path.join(run_dir, 'progress.png')}: {', '.join(titles)}")


if __name__ == "__main__":
    main()
