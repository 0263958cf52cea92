"""progress.png's data: statistics and metric results over kimg, torn lines skipped, the command line."""

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
