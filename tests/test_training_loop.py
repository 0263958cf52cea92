"""Unit tests for the pieces of the training loop: gradient reduction, EMA, logging, image grids, checkpoints."""

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

from torch_utils import training_stats
from training import checkpoint, run_log
from training.training_loop import GeneratorEma, Progress, chunk_seed, reduce_gradients


def test_reduce_gradients_zeroes_and_counts_nonfinite_values():
    net = torch.nn.Linear(3, 2)
    net.weight.grad = torch.tensor([[1.0, float("nan"), 2.0], [float("inf"), 3.0, -float("inf")]])
    net.bias.grad = None  # A parameter that got no gradient is reduced as zeros.
    collector = training_stats.Collector(regex="Progress/nonfinite_grads/G")
    reduce_gradients(net, "G")
    collector.update()
    assert torch.equal(net.weight.grad, torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]]))
    assert torch.equal(net.bias.grad, torch.zeros(2))
    assert collector.mean("Progress/nonfinite_grads/G") == 3


def test_generator_ema_half_life_and_rampup():
    G, G_ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    G.weight.data.fill_(1.0)
    G_ema.weight.data.fill_(0.0)
    ema = GeneratorEma(G_ema, ema_kimg=10, ema_rampup=None)
    ema.update(G, cur_nimg=10**6, batch_size=10_000)  # One half-life's worth of images: halfway.
    assert G_ema.weight.item() == pytest.approx(0.5)
    ramped = GeneratorEma(G_ema, ema_kimg=10, ema_rampup=0.05)
    G_ema.weight.data.fill_(0.0)
    ramped.update(G, cur_nimg=0, batch_size=32)  # No images seen yet: the average starts as a copy of G.
    assert G_ema.weight.item() == pytest.approx(1.0)
    G_ema.weight.data.fill_(0.0)
    ramped.update(G, cur_nimg=20_000, batch_size=1000)  # Half-life capped at 5% of 20k = 1k images.
    assert G_ema.weight.item() == pytest.approx(0.5)


def test_chunk_seeds_differ_and_repeat():
    seeds = {chunk_seed(0, step, phase, chunk) for step in range(3) for phase in range(4) for chunk in range(2)}
    assert len(seeds) == 24
    assert chunk_seed(5, 1, 2, 3) == chunk_seed(5, 1, 2, 3)


def test_run_log_writes_log_stats_and_tensorboard(tmp_path, tensorboard, capsys):
    log = run_log.RunLog(str(tmp_path))
    try:
        print("tick 0  kimg 0.0")
        log.write_stats({"Loss/G/loss": {"num": 4, "mean": 0.5, "std": 0.1}}, global_step_kimg=12.0)
    finally:
        log.close()
    assert "tick 0  kimg 0.0" in (tmp_path / "log.txt").read_text()
    assert "tick 0  kimg 0.0" in capsys.readouterr().out  # Still shown on the console.
    [line] = (tmp_path / "stats.jsonl").read_text().splitlines()
    stats = json.loads(line)
    assert stats["Loss/G/loss"] == {"num": 4, "mean": 0.5, "std": 0.1} and "timestamp" in stats
    assert tensorboard.scalars == [("Loss/G/loss", 0.5, 12)]


def test_save_image_grid_layout(tmp_path):
    images = np.zeros([6, 3, 2, 2], dtype=np.float32) - 1
    images[4, 0] = 1  # Image 4 is the first of the second row in a 3x2 grid: red.
    path = tmp_path / "grid.png"
    run_log.save_image_grid(images, str(path), drange=(-1, 1), grid=(3, 2))
    pixels = np.asarray(PIL.Image.open(path))
    assert pixels.shape == (4, 6, 3)
    assert (pixels[2:4, 2:4] == [255, 0, 0]).all()
    assert (pixels[:2] == 0).all() and (pixels[2:4, :2] == 0).all()
    assert run_log.grid_shape(8) == (16, 16) and run_log.grid_shape(1024) == (4, 4)


def test_checkpoint_files_are_atomic_and_pruned(tmp_path):
    for kimg in range(4):
        state = {"progress": Progress(cur_nimg=kimg * 1000).state_dict(), "x": torch.full([2], float(kimg))}
        checkpoint.save_state(checkpoint.state_path(str(tmp_path), kimg), state)
    assert sorted(os.listdir(tmp_path)) == ["training-state-000002.pt", "training-state-000003.pt"]
    state = checkpoint.load_state(str(tmp_path / "training-state-000003.pt"))
    assert state["progress"]["cur_nimg"] == 3000 and torch.equal(state["x"], torch.full([2], 3.0))

    def fail(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.atomic_write(str(tmp_path / "network-snapshot-000004.pkl"), fail)
    assert sorted(os.listdir(tmp_path)) == ["training-state-000002.pt", "training-state-000003.pt"]
    with pytest.raises(ValueError, match="not a readable network snapshot"):
        (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
        checkpoint.load_snapshot(str(tmp_path / "bad.pkl"))
