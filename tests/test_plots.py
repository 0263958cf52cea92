"""progress.png: statistics and metric results over kimg, torn lines skipped, the command line, and panels that line
up and are not flattened by tick 0."""

import json

import PIL.Image
from click.testing import CliRunner

from training import plots, run_log


def _tick(kimg: float, **means: float) -> str:
    return (
        json.dumps(
            {
                "Progress/kimg": {"num": 1, "mean": kimg, "std": 0},
                **{name: {"num": 4, "mean": value, "std": 0} for name, value in means.items()},
            }
        )
        + "\n"
    )


def test_series_and_panels_from_the_logs(tmp_path):
    (tmp_path / "stats.jsonl").write_text(
        _tick(0.0, **{"Loss/G/loss": 2.0})
        + _tick(1.0, **{"Loss/G/loss": 1.5, "Loss/D/loss": 0.5})
        + '{"Progress/kimg": {"num'  # A line cut short by a kill.
    )
    (tmp_path / "metric-swd.jsonl").write_text(
        "".join(
            json.dumps({"results": {"swd": v}, "snapshot_pkl": f"network-snapshot-{k:06d}.pkl"}) + "\n"
            for k, v in ((0, 30.0), (4, 12.5))
        )
    )
    ticks = run_log.read_jsonl(str(tmp_path / "stats.jsonl"))
    assert len(ticks) == 2
    assert plots.stat_series(ticks, "Loss/D/loss") == ([1.0], [0.5])
    assert plots.metric_series(str(tmp_path)) == {"swd": ([0, 4], [30.0, 12.5])}

    result = CliRunner().invoke(plots.main, [str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Losses, Metric: swd" in result.output
    with PIL.Image.open(tmp_path / "progress.png") as image:
        assert image.size == (960, 256)  # One row of two panels at 80 dpi.


def test_augmentation_panel_only_when_the_run_augments(tmp_path):
    (tmp_path / "stats.jsonl").write_text(_tick(0.0, **{"Loss/G/loss": 2.0, "Progress/augment": 0.0}))
    assert plots.write_progress(str(tmp_path)) == ["Losses", "Augmentation probability"]  # Options unknown.
    (tmp_path / "training_options.json").write_text(json.dumps({"aug": "ada"}))
    assert plots.write_progress(str(tmp_path)) == ["Losses", "Augmentation probability"]
    (tmp_path / "training_options.json").write_text(json.dumps({"aug": "noaug"}))
    assert plots.write_progress(str(tmp_path)) == ["Losses"]


def test_nothing_to_plot_is_a_sentence(tmp_path):
    result = CliRunner().invoke(plots.main, [str(tmp_path)])
    assert result.exit_code == 1 and "nothing to plot" in result.output.lower()
    assert not (tmp_path / "progress.png").exists()


def _quick_start_run(run_dir) -> None:
    """A run directory like the README's quick start (80 kimg, --tick=4, --aug=noaug) with swd computed afterwards
    for the last snapshot: stats.jsonl as RunLog.write_stats writes it, metric-swd.jsonl as report_metric does.
    Tick 0's values are the quick start's; after it each penalty swings by a factor of 3."""
    (run_dir / "training_options.json").write_text(json.dumps({"aug": "noaug", "kimg": 80, "tick": 4}))
    lines = []
    for tick in range(21):
        swing = tick % 2  # 0 or 1, alternately.
        means = {
            "Progress/tick": tick,
            "Progress/kimg": 0.016 if tick == 0 else 4.0 * tick,  # Tick 0 is a single step of 16 images.
            "Loss/G/loss": 1.66 if tick == 0 else 0.9 + 0.3 * swing,
            "Loss/D/loss": 1.37 if tick == 0 else 1.2 - 0.2 * swing,
            "Loss/r1_penalty": 0.002 if tick == 0 else 0.07 * 3**swing,
            "Loss/pl_penalty": 2.15 if tick == 0 else 0.02 * 3**swing,  # 2.15 while the mean of lengths is 0.
            "Progress/augment": 0.0,
        }
        if tick > 0:
            means["Timing/sec_per_kimg"] = 6.0 + 0.3 * swing  # Tick 0 reports its start-up time instead.
        stats = {name: {"num": 1, "mean": value, "std": 0.0} for name, value in means.items()}
        lines.append(json.dumps({**stats, "timestamp": 1.7e9 + 30 * tick}) + "\n")
    (run_dir / "stats.jsonl").write_text("".join(lines))
    swd = {"results": {"swd": 79.5}, "metric": "swd", "snapshot_pkl": "network-snapshot-000080.pkl", "timestamp": 0}
    (run_dir / "metric-swd.jsonl").write_text(json.dumps(swd) + "\n")


def _height_share(ax, lo: float, hi: float) -> float:
    """The share of the panel's height between the values lo and hi, on its scale and y limits."""
    (_, bottom), (_, top) = (ax.transScale + ax.transLimits).transform([(0, lo), (0, hi)])
    return top - bottom


def test_every_panel_spans_the_runs_kimg(tmp_path):
    _quick_start_run(tmp_path)
    figure = plots.progress_figure(str(tmp_path))
    panels = {ax.get_title(): ax for ax in figure.axes}
    assert list(panels) == ["Losses", "Regularization", "Speed (s/kimg)", "Metric: swd"]
    lo, hi = panels["Losses"].get_xlim()
    assert lo <= 0.016 and hi >= 80
    # The one swd point (at 80 kimg) sits at the right end of the same axis, not alone in the middle of 76-84; the
    # speed, first reported at tick 1, starts where the others do.
    for title, ax in panels.items():
        assert ax.get_xlim() == (lo, hi), title


def test_tick_0_does_not_flatten_the_penalties(tmp_path):
    _quick_start_run(tmp_path)
    panels = {ax.get_title(): ax for ax in plots.progress_figure(str(tmp_path)).axes}
    penalties = panels["Regularization"]
    lo, hi = penalties.get_ylim()
    assert penalties.get_yscale() == "log" and lo <= 0.002 and hi >= 2.15  # Tick 0 is drawn, inside the panel.
    # Each penalty's swing by 3 after tick 0 takes a tenth of the height or more; on a linear scale from 0 to tick 0's
    # 2.15 the path length penalty's took 2%, a flat line.
    assert _height_share(penalties, 0.02, 0.06) > 0.1 and _height_share(penalties, 0.07, 0.21) > 0.1
    # The losses at tick 0 are the size of later ones: a linear scale over all of them.
    assert panels["Losses"].get_yscale() == "linear" and panels["Losses"].get_ylim()[1] >= 1.66


def test_a_penalty_of_0_keeps_a_linear_scale(tmp_path):
    (tmp_path / "stats.jsonl").write_text(
        _tick(0.016, **{"Loss/r1_penalty": 0.002, "Loss/pl_penalty": 2.15})
        + _tick(4.0, **{"Loss/r1_penalty": 0.0, "Loss/pl_penalty": 0.03})  # D's output ignores its input.
    )
    [penalties] = plots.progress_figure(str(tmp_path)).axes
    assert penalties.get_yscale() == "linear" and penalties.get_ylim()[0] < 0  # The 0 is drawn, not left out.
