"""best-<metric>.pkl and --stop-patience, with a deterministic stand-in metric in a real tiny run."""

import dataclasses
import json

import pytest
from click.testing import CliRunner
from helpers import tiny

import train
from metrics import registry
from training.metric_runner import BestSnapshot

TINY = tiny(metrics=None, workers=0)  # Each test names its metrics.


@pytest.fixture
def standin(monkeypatch) -> list[float]:
    """Register metric 'standin' (lower is better) whose results are popped from the returned list, in order."""
    values: list[float] = []

    def standin_metric(ctx) -> dict[str, float]:
        """A stand-in metric: the next value of a list."""
        return {"standin": values.pop(0)}

    spec = dataclasses.replace(
        registry.get_metric("swd"),
        name="standin",
        fn=standin_metric,
        description="stand-in",
        uses_reals=False,
        detectors=(),
        higher_is_better=False,
    )
    monkeypatch.setitem(registry._METRICS, "standin", spec)
    return values


@pytest.mark.slow
def test_best_snapshot_is_replaced_only_on_improvement_and_the_run_stops(tmp_path, data, standin):
    standin.extend([5.0, 3.0, 4.0, 3.5, 1.0])  # Evaluations at the snapshots of kimg 0, 1, 2, 3 (and 4).
    outdir = tmp_path / "runs"
    args = [f"--outdir={outdir}", f"--data={data}", *TINY, "--gpus=1", "--batch=8", "--kimg=4", "--tick=1", "--snap=1"]
    result = CliRunner().invoke(train.main, [*args, "--metrics=standin", "--stop-patience=2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [run_dir] = list(outdir.iterdir())
    assert (
        "Early stop: standin has not improved for 2 evaluations (best standin 3 from network-snapshot-000001.pkl"
        in result.output
    )
    snapshots = sorted(p.name for p in run_dir.glob("network-snapshot-*.pkl"))
    assert snapshots == [f"network-snapshot-00000{k}.pkl" for k in range(4)] and standin == [1.0]  # Stopped at 3.
    best = (run_dir / "best-standin.pkl").read_bytes()
    assert best == (run_dir / "network-snapshot-000001.pkl").read_bytes()
    assert result.output.count("New best standin") == 2  # 5.0, then 3.0; never for 4.0 or 3.5.

    # A continued run reads the record back: the same best value and count.
    tracker = BestSnapshot(str(run_dir), "standin")
    assert (tracker.best, tracker.best_snapshot, tracker.since_best) == (3.0, "network-snapshot-000001.pkl", 2)


def test_higher_is_better_and_non_finite_values(tmp_path, monkeypatch):
    spec = dataclasses.replace(registry.get_metric("swd"), name="score", higher_is_better=True)
    monkeypatch.setitem(registry._METRICS, "score", spec)
    lines = [
        {"results": {"score": v, "score_other": 0.0}, "snapshot_pkl": f"network-snapshot-{k:06d}.pkl"}
        for k, v in enumerate([1.0, 2.0, float("nan"), 1.5])
    ]
    (tmp_path / "metric-score.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    tracker = BestSnapshot(str(tmp_path), "score")
    assert (tracker.best, tracker.best_snapshot, tracker.since_best) == (2.0, "network-snapshot-000001.pkl", 2)


def test_stop_patience_needs_a_metric(tmp_path, data):
    outdir = tmp_path / "runs"
    args = [f"--outdir={outdir}", f"--data={data}", *TINY, "--gpus=1", "--batch=8", "--metrics=none"]
    result = CliRunner().invoke(train.main, [*args, "--stop-patience=3"])
    assert result.exit_code != 0 and "--stop-patience=3" in result.output and "--metrics=swd" in result.output
    assert not outdir.exists()
