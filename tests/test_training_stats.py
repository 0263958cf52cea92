"""Tests for torch_utils.training_stats, in one process and across two gloo processes."""

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from torch_utils import distributed, training_stats


def test_collector_mean_std_num_over_intervals():
    recorder = training_stats.StatsRecorder()
    collector = training_stats.Collector(regex="Loss/.*", recorder=recorder)
    dropping = training_stats.Collector(regex="Loss/.*", keep_previous=False, recorder=recorder)
    values = np.array([1.0, 2.0, 4.0, 7.0])
    recorder.report("Loss/G", torch.tensor(values[:2]))
    recorder.report("Loss/G", values[2:])
    recorder.report("Timing/tick", 3.0)  # Not matched by the regex.
    collector.update()
    assert collector.names() == ["Loss/G"]
    assert collector.num("Loss/G") == 4
    assert collector.mean("Loss/G") == pytest.approx(values.mean())
    assert collector.std("Loss/G") == pytest.approx(values.std())
    assert collector["Loss/G"] == pytest.approx(3.5)

    # The next interval only sees what was reported after the update.
    recorder.report("Loss/G", 10.0)
    collector.update()
    assert collector.num("Loss/G") == 1 and collector.mean("Loss/G") == 10.0 and collector.std("Loss/G") == 0.0

    # No reports: keep_previous keeps the last interval's value, keep_previous=False drops it.
    dropping.update()
    assert dropping.num("Loss/G") == 5
    collector.update()
    dropping.update()
    assert collector.mean("Loss/G") == 10.0
    assert dropping.names() == [] and math.isnan(dropping.mean("Loss/G"))
    assert collector.as_dict() == {"Loss/G": {"num": 1, "mean": 10.0, "std": 0.0}}


def test_report_returns_value_and_ignores_empty():
    recorder = training_stats.StatsRecorder()
    x = torch.ones(3, requires_grad=True)
    assert recorder.report("a", x) is x
    recorder.report("b", torch.zeros(0))
    assert recorder.names() == ["a"]
    assert recorder.cumulative("a").tolist() == [3.0, 3.0, 3.0]


def test_module_level_report_and_report0():
    collector = training_stats.Collector(regex="test_module_level/.*")
    training_stats.report("test_module_level/x", [1.0, 3.0])
    training_stats.report0("test_module_level/y", 5.0)
    collector.update()
    assert collector.mean("test_module_level/x") == 2.0
    assert collector.mean("test_module_level/y") == 5.0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_rank_worker(rank, port, result_queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    distributed.init(backend="gloo")
    try:
        collector = training_stats.Collector(regex="Loss/.*")
        # Rank 0 reports [0, 1], rank 1 reports [10, 11, 12]; only rank 1 reports "Loss/only_rank1".
        training_stats.report("Loss/shared", torch.arange(2 + rank, dtype=torch.float32) + 10 * rank)
        if rank == 1:
            training_stats.report("Loss/only_rank1", 4.0)
        training_stats.report0("Loss/rank0", float(rank + 1))
        collector.update()
        result_queue.put((rank, collector.as_dict()))
    finally:
        distributed.shutdown()


def test_collector_reduces_across_two_ranks():
    ctx = mp.get_context("spawn")
    result_queue = ctx.Queue()
    mp.start_processes(_two_rank_worker, args=(_free_port(), result_queue), nprocs=2, start_method="spawn")
    results = dict(result_queue.get(timeout=60) for _ in range(2))
    shared = np.array([0.0, 1.0, 10.0, 11.0, 12.0])
    for rank in range(2):
        stats = results[rank]
        assert stats["Loss/shared"]["num"] == 5
        assert stats["Loss/shared"]["mean"] == pytest.approx(shared.mean())
        assert stats["Loss/shared"]["std"] == pytest.approx(shared.std())
        assert stats["Loss/only_rank1"] == {"num": 1, "mean": 4.0, "std": 0.0}
        assert stats["Loss/rank0"] == {"num": 1, "mean": 1.0, "std": 0.0}


def test_a_new_collector_ignores_earlier_reports():
    recorder = training_stats.StatsRecorder()
    recorder.report("Loss/x", 100.0)  # Before the collector exists, e.g. an earlier run in this process.
    collector = training_stats.Collector(recorder=recorder)
    recorder.report("Loss/x", 1.0)
    collector.update()
    assert collector.num("Loss/x") == 1 and collector.mean("Loss/x") == 1.0
