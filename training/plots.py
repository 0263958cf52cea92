"""progress.png: a run's health at a glance, drawn from its stats.jsonl and metric-*.jsonl with matplotlib.

Panels over one shared kimg axis, drawn when the run has the statistics: G and D losses, the R1 and path length
penalties, the augmentation probability (unless --aug=noaug), seconds per kimg, and one panel per metric. The training
loop redraws it with every snapshot; for any run directory (a finished one, another machine's, a run still going):

    python -m training.plots runs/00000-stylegan2-shapes-32-gpus1-batch16-gamma0.0128
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import click

import dnnlib
from training.run_log import read_jsonl, snapshot_kimg

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn: importing the training loop stays quick.
    from matplotlib.figure import Figure

AUGMENT_PANEL = "Augmentation probability"  # Left out for a run with --aug=noaug.
# On a log scale. The path length penalty (l - m)^2 starts near l^2, about 2.2, because its target m is a running
# mean of the lengths that starts at 0 (training/loss.py) and catches up over the first ticks: 2.15, 0.60, 0.22,
# 0.13, 0.06 over the quick start's first 2 kimg. On a linear scale that start flattens the rest of the curve;
# clipping the y range to the ticks after tick 0 is not enough (tick 1 then flattens it) and sends the first segments
# off the panel's top, where they read as a fault. A log scale shows the start-up and the later ticks alike, and the
# R1 penalty, one or two orders of magnitude smaller, beside them; both are squared norms, whose changes by a factor
# are what matter. The losses need none of this: at tick 0 they are the size of later ones (G 1.66 and D 1.37, then
# 0.8 to 1.6 over the next 3 kimg), and a metric's first value is a full measurement.
PENALTY_PANEL = "Regularization"
# Panel title -> (statistic in stats.jsonl, legend label) of each line it draws.
STAT_PANELS: dict[str, list[tuple[str, str]]] = {
    "Losses": [("Loss/G/loss", "G"), ("Loss/D/loss", "D")],
    PENALTY_PANEL: [("Loss/r1_penalty", "R1 penalty"), ("Loss/pl_penalty", "path length penalty")],
    AUGMENT_PANEL: [("Progress/augment", "p")],
    "Speed (s/kimg)": [("Timing/sec_per_kimg", "s/kimg")],
}
Line = tuple[str, list[float], list[float]]  # (legend label, kimg, values) of one line in a panel.


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


def progress_figure(run_dir: str) -> Figure:
    """The figure of progress.png for a run directory: one titled panel (an Axes) per statistic group and metric."""
    from matplotlib.figure import Figure

    stats_path = os.path.join(run_dir, "stats.jsonl")
    ticks = read_jsonl(stats_path) if os.path.isfile(stats_path) else []
    panels: list[tuple[str, list[Line]]] = []
    for title, names in STAT_PANELS.items():
        if title == AUGMENT_PANEL and run_option(run_dir, "aug") == "noaug":
            continue  # A p of 0 throughout says nothing; the panel's place goes to the metrics.
        lines = [(label, *stat_series(ticks, name)) for name, label in names]
        lines = [(label, xs, ys) for label, xs, ys in lines if xs]
        if lines:
            panels.append((title, lines))
    panels += [(f"Metric: {name}", [(name, xs, ys)]) for name, (xs, ys) in metric_series(run_dir).items()]
    if not panels:
        raise ValueError(f"{run_dir}: nothing to plot (no stats.jsonl or metric-*.jsonl with numbers in it)")

    columns = 2
    rows = (len(panels) + columns - 1) // columns
    # A Figure of its own rather than pyplot's: nothing global to switch (no display on a training machine) or close.
    figure = Figure(figsize=(12, 3.2 * rows))
    axes = list(figure.subplots(rows, columns, squeeze=False).flat)
    for ax in axes[len(panels) :]:
        ax.remove()
    for ax, (title, lines) in zip(axes, panels, strict=False):
        # One kimg axis for all panels (autoscaled over every panel's points), so they line up: a metric computed
        # once, at the last snapshot, is a point at the right end rather than alone in the middle of 76-84 kimg.
        if ax is not axes[0]:
            ax.sharex(axes[0])
        for label, xs, ys in lines:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        if title == PENALTY_PANEL and not any(y <= 0 for _, _, ys in lines for y in ys):
            ax.set_yscale("log")  # Linear for a 0 (a D whose output ignores its input), which log cannot show.
        ax.set_title(title)
        ax.set_xlabel("kimg")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend()
    figure.suptitle(os.path.basename(os.path.normpath(run_dir)))
    figure.tight_layout()
    return figure


def write_progress(run_dir: str, output: str | None = None) -> list[str]:
    """Draw progress.png (or `output`) for a run directory, atomically; return the titles of the panels drawn."""
    figure = progress_figure(run_dir)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    path = output or os.path.join(run_dir, "progress.png")
    dnnlib.util.atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return [ax.get_title() for ax in figure.axes]


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
