"""Unit tests for the pieces of the training loop: gradient reduction, EMA, logging, image grids, checkpoints."""

import copy
import dataclasses
import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

from torch_utils import training_stats
from training import checkpoint, run_log
from training.config import PRESETS, TrainingConfig, construct_networks
from training.training_loop import (
    GeneratorEma,
    Progress,
    Trainer,
    build_augmentation,
    build_loss,
    build_phases,
    chunk_seed,
    reduce_gradients,
    run_phase,
)


def tiny_training(cfg: str, fp32: bool = False):
    """Config, G, D, phases and loss of a tiny 8x8 unconditional run of preset `cfg` (batch 4, one round)."""
    preset = PRESETS[cfg]
    mult = preset.G_channel_mult
    c = TrainingConfig(
        outdir="unused",
        cfg=cfg,
        data="unused",
        batch_size=4,
        batch_gpu=4,
        z_dim=8,
        w_dim=8,
        cbase=64,
        cmax=8,
        map_depth=1,
        fp32=fp32,
        style_mixing_prob=preset.style_mixing_prob,
        pl_weight=preset.pl_weight,
        G_reg_interval=preset.G_reg_interval,
        G_kwargs=dict(channel_base=64 * mult, channel_max=8 * mult),
        aug="noaug",
    )
    torch.manual_seed(0)
    G, D = construct_networks(c, resolution=8, num_channels=3, label_dim=0)
    G, D = G.train().requires_grad_(False), D.train().requires_grad_(False)
    return c, G, D, build_phases(c, G, D), build_loss(c, G, D, augment_pipe=None)


def run_step(c, loss, phases, on_phase=None):
    """Run every phase of step 0 on random reals; call on_phase(runner) after each."""
    reals = [(torch.randn(c.batch_gpu, 3, 8, 8), torch.zeros(c.batch_gpu, 0))]
    for index, runner in enumerate(phases):
        run_phase(runner, index, loss, reals, torch.zeros(1, 0), c.z_dim, c, Progress())
        if on_phase is not None:
            on_phase(runner)


def test_reduce_gradients_maps_and_counts_nonfinite_values():
    net = torch.nn.Linear(3, 2)
    net.weight.grad = torch.tensor([[1.0, float("nan"), 2.0], [float("inf"), 3.0, -float("inf")]])
    net.bias.grad = None  # A parameter that got no gradient keeps none.
    collector = training_stats.Collector(regex="Progress/nonfinite_grads/G")
    reduce_gradients(net, "G")
    collector.update()
    # As published: nan_to_num(nan=0, posinf=1e5, neginf=-1e5).
    assert torch.equal(net.weight.grad, torch.tensor([[1.0, 0.0, 2.0], [1e5, 3.0, -1e5]]))
    assert net.bias.grad is None
    assert collector.mean("Progress/nonfinite_grads/G") == 3


def test_adam_skips_a_parameter_without_gradient():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1, betas=(0.0, 0.99))
    net(torch.ones(1, 3)).sum().backward()
    reduce_gradients(net, "D")
    opt.step()
    bias_before, exp_avg_sq = net.bias.detach().clone(), opt.state[net.bias]["exp_avg_sq"].clone()
    step_before = float(opt.state[net.bias]["step"])

    opt.zero_grad(set_to_none=True)
    net.weight.square().sum().backward()  # A phase whose loss does not reach the bias (like Dreg and b4.out.bias).
    reduce_gradients(net, "D")
    assert net.bias.grad is None
    opt.step()
    assert torch.equal(net.bias, bias_before)  # No update from its stale first moment...
    assert torch.equal(opt.state[net.bias]["exp_avg_sq"], exp_avg_sq)  # ...and no decay of its moments.
    assert float(opt.state[net.bias]["step"]) == step_before
    assert float(opt.state[net.weight]["step"]) == step_before + 1


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
    assert tensorboard.scalars == [("Loss/G/loss", 0.5, 12000)]  # Steps are images, so fractional ticks differ.


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


@pytest.mark.parametrize("cfg, updating_phases", [("creps", ["Gmain", "Greg"]), ("stylegan2", ["Dmain"])])
def test_w_avg_advances_in_the_published_phases(cfg, updating_phases):
    c, G, _, phases, loss = tiny_training(cfg)
    assert [runner.phase.value for runner in phases] == ["Gmain", "Greg", "Dmain", "Dreg"]
    changed = []
    previous = [G.mapping.w_avg.clone()]

    def check(runner):
        if not torch.equal(G.mapping.w_avg, previous[0]):
            changed.append(runner.phase.value)
        previous[0] = G.mapping.w_avg.clone()

    run_step(c, loss, phases, check)
    # CREPS's published mapping updates w_avg in training mode unless update_emas: G's phases. StyleGAN2/3 pass
    # update_emas=True in Dmain only.
    assert changed == updating_phases


def test_parameters_a_phase_does_not_reach_keep_no_gradient():
    c, G, D, phases, loss = tiny_training("stylegan2")
    optimizers = {runner.phase.network: runner.opt for runner in phases}
    seen = {}

    def check(runner):
        bias = G.synthesis.b8.torgb.bias if runner.phase.network == "G" else D.b4.out.bias
        state = optimizers[runner.phase.network].state.get(bias, {})
        seen[runner.phase.value] = (bias.grad is not None, float(state.get("step", 0)))

    run_step(c, loss, phases, check)
    # The path length and R1 penalties do not depend on these biases: no gradient, so Adam's step count stays.
    assert seen == {"Gmain": (True, 1.0), "Greg": (False, 1.0), "Dmain": (True, 1.0), "Dreg": (False, 1.0)}


def tiny_ada_trainer() -> Trainer:
    """A Trainer of the tiny stylegan2 run with --aug=ada, whose loss feeds the ADA controller."""
    c, G, D, phases, _ = tiny_training("stylegan2")
    c = dataclasses.replace(c, aug="ada")
    pipe, ada = build_augmentation(c, torch.device("cpu"))
    loss = build_loss(c, G, D, pipe, ada)
    ema = GeneratorEma(copy.deepcopy(G).eval(), c.ema_kimg, c.ema_rampup)
    return Trainer(G, D, ema, phases, loss, Progress(), pipe, ada, c.batch_gpu)


def test_a_state_with_the_pending_signs_in_the_loss_state_resumes_them_in_ada():
    # Training states written before the ADA controller owned its signs kept them as the loss's "real_signs".
    old = tiny_ada_trainer().state_dict()
    old["loss"] = {"pl_mean": torch.tensor(1.5), "real_signs": torch.tensor([-3.0, 8.0], dtype=torch.float64)}
    old["ada"] = dict(target=0.6, interval=4, ada_kimg=100.0, num_updates=7)
    old["augment_pipe"] = {"p": torch.tensor(0.25)}
    t = tiny_ada_trainer()
    t.load_state_dict(old)
    assert t.augment_p == 0.25 and float(t.loss.pl_mean) == 1.5
    assert t.ada.num_updates == 7 and t.ada.ada_kimg == 100.0
    assert t.ada.take_real_sign_mean() == -3 / 8

    t.load_state_dict(old)
    new = t.state_dict()  # Written back in the new layout: the signs are ADA's alone.
    assert "real_signs" not in new["loss"] and float(new["loss"]["pl_mean"]) == 1.5
    assert new["ada"]["real_signs"].tolist() == [-3.0, 8.0] and new["ada"]["num_updates"] == 7
    assert torch.equal(new["augment_pipe"]["p"], torch.tensor(0.25))
    again = tiny_ada_trainer()
    again.load_state_dict(new)
    assert torch.equal(again.state_dict()["ada"]["real_signs"], new["ada"]["real_signs"])


def test_construct_networks_precision_per_preset():
    _, G, D, _, _ = tiny_training("creps")
    synthesis = G.synthesis
    # As published: line blocks in float32 (num_fp16_res 0), the two final image blocks in float16, all clamped
    # at 256; D mixed precision with clamp 256.
    assert synthesis.num_fp16_res == 0 and not any(getattr(synthesis, f"b{r}").use_fp16 for r in (4, 8))
    assert synthesis.block0.use_fp16 and synthesis.block1.use_fp16
    clamps = {m.fc_clamp for name, m in synthesis.named_modules() if hasattr(m, "fc_clamp")}
    assert clamps == {256}
    assert D.b8.use_fp16 and D.b8.conv0.conv_clamp == 256
    _, G, D, _, _ = tiny_training("creps", fp32=True)
    assert not G.synthesis.block0.use_fp16 and not G.synthesis.block1.use_fp16
    assert {m.fc_clamp for name, m in G.synthesis.named_modules() if hasattr(m, "fc_clamp")} == {256}
    assert not D.b8.use_fp16 and D.b8.conv0.conv_clamp is None

    _, G, D, _, _ = tiny_training("stylegan2")
    assert G.synthesis.b8.use_fp16 and G.synthesis.b8.conv1.conv_clamp == 256 and D.b8.conv0.conv_clamp == 256
    _, G, D, _, _ = tiny_training("stylegan2", fp32=True)
    assert not G.synthesis.b8.use_fp16 and G.synthesis.b8.conv1.conv_clamp is None
    assert G.synthesis.b8.torgb.conv_clamp is None and D.b8.conv0.conv_clamp is None


def test_tick_line_speed_fields_start_up_then_eta():
    from training.training_loop import speed_fields

    [(name, value, _)] = speed_fields(0, tick_sec=2.5, tick_kimg=0.004, kimg_left=10.0, total_sec=130.0)
    assert (name, value) == ("start-up", "2m 10s")  # Not 2.5 s / 0.004 kimg = 625 s/kimg.
    (speed, sec_per_kimg, _), (eta, left, _) = speed_fields(
        3, tick_sec=40.0, tick_kimg=4.0, kimg_left=100.0, total_sec=500.0
    )
    assert (speed, sec_per_kimg, eta, left) == ("sec/kimg", 10.0, "eta", "16m 40s")  # 100 kimg at 10 s/kimg.
    assert speed_fields(3, tick_sec=40.0, tick_kimg=4.0, kimg_left=-0.5, total_sec=500.0)[1][1] == "0s"
