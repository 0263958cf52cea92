"""The published training step against ours, phase by phase, on the same weights, data, latents and noise.

Part of benchmarks/published_parity.py (run that). For StyleGAN2 and CREPS networks built and pickled by the
published code, both sides run five training steps of the lazy-regularization schedule (Gmain, Greg every 4
steps, Dmain, Dreg every 16: steps 0-4 include Greg twice and Dreg once) with Adam set up as in the published
loop, one process, one accumulation round, style mixing and augmentation off (their random draws are made
differently), and torch reseeded identically before every phase, so the synthesis noise and the path-length
noise are the same (the published CREPS runs its two final blocks in float16 even on the CPU; `report` runs
them in float32 on both sides, `report_float16` in float16 on both). Each of our phases starts from the
published side's networks, Adam states and path-length mean just before that phase, so float rounding cannot
compound from step to step. After every phase we compare the gradients, which parameters got none, the weights
after the optimizer step, the tracked w average, the path-length mean and the losses logged in that phase.
"""

from __future__ import annotations

import contextlib
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

STEPS = 5
SCHEDULE = [("Gmain", "G", 1), ("Greg", "G", 4), ("Dmain", "D", 1), ("Dreg", "D", 16)]  # (phase, network, interval)
LOSS_STATS = ("Loss/G/loss", "Loss/pl_penalty", "Loss/D/loss", "Loss/r1_penalty")
R1_GAMMA = 1.0


def phase_inputs(step: int, phase_index: int, z_dim: int, resolution: int) -> dict[str, torch.Tensor]:
    """The reals and latents of one phase (4 samples), and the torch seed set before it; the same on both sides."""
    rng = np.random.RandomState(1000 * step + phase_index)
    return dict(
        real_img=torch.from_numpy(rng.uniform(-1, 1, [4, 3, resolution, resolution]).astype(np.float32)),
        gen_z=torch.from_numpy(rng.randn(4, z_dim).astype(np.float32)),
        seed=torch.tensor(int(rng.randint(2**31))),
    )


# Runs inside the published repository. Mirrors the published training loop's phase handling.
PEER_STEPS = textwrap.dedent(
    """
    import sys, numpy as np, torch, legacy
    from torch_utils import training_stats
    from training.loss import StyleGAN2Loss
    sys.path.insert(0, sys.argv[3])
    from published_step_parity import SCHEDULE, STEPS, LOSS_STATS, R1_GAMMA, phase_inputs
    with open(sys.argv[1], 'rb') as f:
        data = legacy.load_network_pkl(f)
    G, D = data['G'].train().requires_grad_(False), data['D'].train().requires_grad_(False)
    for name in ('block0', 'block1'):  # CREPS runs these in float16 even on the CPU; float32 unless asked.
        if hasattr(G.synthesis, name) and sys.argv[4] != 'float16':
            getattr(G.synthesis, name).use_fp16 = False
    loss = StyleGAN2Loss(torch.device('cpu'), G, D, r1_gamma=R1_GAMMA, pl_weight=2, style_mixing_prob=0)
    opts = {}
    for name, module, interval in [('G', G, 4), ('D', D, 16)]:
        ratio = interval / (interval + 1)
        opts[name] = torch.optim.Adam(module.parameters(), lr=0.002 * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)
    modules = dict(G=G, D=D)
    out = {}
    collector = training_stats.Collector(regex='Loss/.*', keep_previous=False)
    for step in range(STEPS):
        for index, (phase, net, interval) in enumerate(SCHEDULE):
            if step % interval:
                continue
            x = phase_inputs(step, index, G.z_dim, G.img_resolution)
            module, opt = modules[net], opts[net]
            key = f'{step}/{phase}'
            for other, other_module in modules.items():  # The state this phase starts from, for our side.
                for name, t in other_module.state_dict().items():
                    out[f'{key}/pre/{other}/{name}'] = t.numpy().copy()
                for name, p in other_module.named_parameters():
                    for field, value in opts[other].state.get(p, {}).items():
                        out[f'{key}/adam/{other}/{name}/{field}'] = value.numpy().copy()
            out[f'{key}/pre/pl_mean'] = loss.pl_mean.numpy().copy()
            torch.manual_seed(int(x['seed']))
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            loss.accumulate_gradients(phase=phase, real_img=x['real_img'], real_c=torch.zeros([4, 0]),
                                      gen_z=x['gen_z'], gen_c=torch.zeros([4, 0]), gain=interval, cur_nimg=0)
            module.requires_grad_(False)
            params = [p for p in module.parameters() if p.grad is not None]
            flat = torch.cat([p.grad.flatten() for p in params])
            flat = torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5)
            for p, g in zip(params, flat.split([p.numel() for p in params])):
                p.grad = g.reshape(p.shape)
            for name, p in module.named_parameters():
                out[f'{key}/grad/{name}'] = (p.grad if p.grad is not None else torch.full([], float('nan'))).numpy()
            opt.step()
            for name, p in module.named_parameters():
                out[f'{key}/weight/{name}'] = p.detach().numpy().copy()
            out[f'{key}/w_avg'] = G.mapping.w_avg.numpy().copy()
            out[f'{key}/pl_mean'] = loss.pl_mean.numpy().copy()
            collector.update()
            for stat in LOSS_STATS:
                if collector.num(stat):
                    out[f'{key}/stat/{stat}'] = np.array(collector.mean(stat))
    np.savez(sys.argv[2], **out)
    """
)


def load_published_state(theirs: dict, key: str, modules: dict, opts: dict, loss: torch.nn.Module) -> None:
    """Set our networks, Adam states and path-length mean to what the published side had before phase `key`."""
    for net, module in modules.items():
        state = {name: torch.from_numpy(theirs[f"{key}/pre/{net}/{name}"]) for name in module.state_dict()}
        module.load_state_dict(state)
        for name, p in module.named_parameters():
            prefix = f"{key}/adam/{net}/{name}/"
            fields = {k[len(prefix) :]: torch.from_numpy(v.copy()) for k, v in theirs.items() if k.startswith(prefix)}
            if fields:
                opts[net].state[p] = fields
            else:
                opts[net].state.pop(p, None)
    loss.pl_mean.copy_(torch.from_numpy(theirs[f"{key}/pre/pl_mean"]))


@contextlib.contextmanager
def cpu_float16() -> Iterator[None]:
    """Our float16 blocks in real float16 on the CPU while inside (training.layers reads the variable per call)."""
    from training.layers import CPU_FP16_ENV

    before = os.environ.get(CPU_FP16_ENV)
    os.environ[CPU_FP16_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[CPU_FP16_ENV]
        else:
            os.environ[CPU_FP16_ENV] = before


def published_steps(peer: Path, repo: str, pkl: Path, dest: Path, precision: str = "float32") -> dict:
    """Run PEER_STEPS in the published repository `repo` on `pkl`; its results. precision 'float16' leaves the
    published CREPS's final blocks in float16 (as it runs them on the CPU), 'float32' turns them off."""
    from benchmarks.published_parity import run_peer  # One thread, as ours: both reduce in the same order.

    run_peer(peer / repo, PEER_STEPS, str(pkl), str(dest), str(Path(__file__).parent), precision)
    return dict(np.load(dest))


def our_steps(pkl: str, cfg: str, theirs: dict, float16: bool = False) -> dict[str, np.ndarray]:
    """Our loss, gradient reduction and optimizer steps on the same schedule and inputs as PEER_STEPS, each phase
    starting from the published side's state before it (so rounding differences do not compound over steps).

    With `float16`, G's float16 blocks (CREPS: the two final ones) run in float16 on the CPU, as the published
    CREPS runs them; D stays in float32 as the published D does on the CPU (it forces float32 off CUDA)."""
    from training import checkpoint

    snapshot = checkpoint.load_snapshot(pkl)
    G, D = snapshot["G"].train().requires_grad_(False), snapshot["D"].train().requires_grad_(False)
    if not float16:
        return _our_steps(G, D, cfg, theirs)
    for module in D.modules():
        if hasattr(module, "use_fp16"):
            module.use_fp16 = False
    with cpu_float16():
        return _our_steps(G, D, cfg, theirs)


def _our_steps(G: torch.nn.Module, D: torch.nn.Module, cfg: str, theirs: dict) -> dict[str, np.ndarray]:
    """our_steps on networks already loaded."""
    from torch_utils import training_stats
    from training.config import PRESETS
    from training.loss import Chunk, Phase, StyleGAN2Loss
    from training.training_loop import reduce_gradients

    loss = StyleGAN2Loss(
        G, D, r1_gamma=R1_GAMMA, pl_weight=2, style_mixing_prob=0, G_stats_network=PRESETS[cfg].G_stats_network
    )
    opts = {}
    for name, module, interval in [("G", G, 4), ("D", D, 16)]:
        ratio = interval / (interval + 1)
        opts[name] = torch.optim.Adam(module.parameters(), lr=0.002 * ratio, betas=(0.0, 0.99**ratio), eps=1e-8)
    modules = dict(G=G, D=D)
    out = {}
    collector = training_stats.Collector(regex="Loss/.*", keep_previous=False)
    for step in range(STEPS):
        for index, (phase, net, interval) in enumerate(SCHEDULE):
            if step % interval:
                continue
            x = phase_inputs(step, index, G.z_dim, G.img_resolution)

            def make_chunk(_: int, x: dict = x) -> Chunk:
                torch.manual_seed(int(x["seed"]))
                return Chunk(x["real_img"], torch.zeros([4, 0]), x["gen_z"], torch.zeros([4, 0]))

            module, opt = modules[net], opts[net]
            key = f"{step}/{phase}"
            load_published_state(theirs, key, modules, opts, loss)
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            loss.accumulate_gradients(Phase[phase], make_chunk, 1, gain=interval, cur_nimg=0)
            reduce_gradients(module, net)
            module.requires_grad_(False)
            for name, p in module.named_parameters():
                out[f"{key}/grad/{name}"] = (p.grad if p.grad is not None else torch.full([], float("nan"))).numpy()
            opt.step()
            for name, p in module.named_parameters():
                out[f"{key}/weight/{name}"] = p.detach().numpy().copy()
            out[f"{key}/w_avg"] = G.mapping.w_avg.numpy().copy()
            out[f"{key}/pl_mean"] = loss.pl_mean.numpy().copy()
            collector.update()
            for stat in LOSS_STATS:
                if collector.num(stat):
                    out[f"{key}/stat/{stat}"] = np.array(collector.mean(stat))
    return out


def relative_difference(ours: dict, theirs: dict, prefix: str, kind: str) -> tuple[float, int]:
    """max |ours - theirs| / max |theirs| over the tensors `prefix/kind/*`, and how many lack a gradient on one
    side only (a NaN stands for 'no gradient')."""
    worst, scale, one_sided = 0.0, 0.0, 0
    for key, value in theirs.items():
        if not key.startswith(f"{prefix}/{kind}/"):
            continue
        mine = ours[key]
        if np.isnan(value).all() or np.isnan(mine).all():
            one_sided += int(np.isnan(value).all() != np.isnan(mine).all())
            continue
        worst = max(worst, float(np.abs(mine - value).max()))
        scale = max(scale, float(np.abs(value).max()))
    return worst / max(scale, 1e-30), one_sided


def report(peer: Path, work: Path) -> None:
    """Print, per network and phase, how far our step is from the published one."""
    torch.set_num_threads(1)
    print()
    print(f"Training step: {STEPS} steps of Gmain/Greg/Dmain/Dreg, one process, same inputs and noise, float32 CPU")
    print(
        f"{'network':<10}{'phase':<10}{'grad rel':>10}{'no-grad':>9}{'weights rel':>13}{'w_avg':>10}"
        f"{'pl_mean':>10}  logged losses (ours - theirs)"
    )
    for cfg, repo in [("stylegan2", "stylegan3"), ("creps", "creps")]:
        pkl = work / f"{cfg}.pkl"  # Written by published_parity.compare_loading.
        theirs = published_steps(peer, repo, pkl, work / f"{cfg}-steps.npz")
        ours = our_steps(str(pkl), cfg, theirs)
        for step in range(STEPS):
            for phase, _, interval in SCHEDULE:
                if step % interval:
                    continue
                key = f"{step}/{phase}"
                grad, no_grad = relative_difference(ours, theirs, key, "grad")
                weights, _ = relative_difference(ours, theirs, key, "weight")
                w_avg = float(np.abs(ours[f"{key}/w_avg"] - theirs[f"{key}/w_avg"]).max())
                pl_mean = float(abs(ours[f"{key}/pl_mean"] - theirs[f"{key}/pl_mean"]))
                stats = [
                    f"{stat.split('/', 1)[1]} {float(ours[f'{key}/stat/{stat}'] - theirs[f'{key}/stat/{stat}']):.1e}"
                    for stat in LOSS_STATS
                    if f"{key}/stat/{stat}" in theirs
                ]
                print(
                    f"{cfg:<10}{key:<10}{grad:>10.1e}{no_grad:>9d}{weights:>13.1e}{w_avg:>10.1e}{pl_mean:>10.1e}  "
                    f"{', '.join(stats)}"
                )


def gradient_agreement(ours: dict, theirs: dict, key: str) -> tuple[dict[str, float], float]:
    """Per parameter tensor of phase `key`, max |ours - theirs| / max |theirs|; and over all of them together,
    |ours - theirs| / |theirs| (L2 norms). Tensors without a gradient on either side are left out."""
    per_tensor, diff_sq, norm_sq = {}, 0.0, 0.0
    prefix = f"{key}/grad/"
    for name, value in theirs.items():
        if not name.startswith(prefix) or np.isnan(value).all() or np.isnan(ours[name]).all():
            continue
        diff = ours[name].astype(np.float64) - value
        per_tensor[name[len(prefix) :]] = float(np.abs(diff).max() / max(np.abs(value).max(), 1e-30))
        diff_sq += float(np.square(diff).sum())
        norm_sq += float(np.square(value.astype(np.float64)).sum())
    return per_tensor, (diff_sq / max(norm_sq, 1e-60)) ** 0.5


def report_float16(peer: Path, work: Path) -> bool:
    """CREPS with its final blocks in float16 on both sides: print, per phase, how far our gradients are from the
    published ones, next to how far float16 itself moves them (our float32 step from the same state). True when
    ours is within float16's own error in every phase, overall and in the worst tensor."""
    torch.set_num_threads(1)
    pkl = work / "creps.pkl"  # Written by published_parity.compare_loading.
    theirs = published_steps(peer, "creps", pkl, work / "creps-float16-steps.npz", precision="float16")
    ours = our_steps(str(pkl), "creps", theirs, float16=True)
    ours32 = our_steps(str(pkl), "creps", theirs)  # The same states and inputs, in float32: float16's own error.
    print()
    print(f"CREPS training step, final blocks in float16 (ours: GANFORGE_CPU_FP16=1), {STEPS} steps as above")
    print("  G and D gradients, ours - published, relative to |published| (norm: all tensors together; worst:")
    print("  the largest max|diff| / max|tensor| of one tensor); float16 error: our float32 gradients - published")
    print(f"  {'phase':<10}{'norm':>10}{'worst':>10}  {'(tensor)':<38}{'f16 norm':>10}{'f16 worst':>11}")
    ok = True
    for step in range(STEPS):
        for phase, _, interval in SCHEDULE:
            if step % interval:
                continue
            key = f"{step}/{phase}"
            per_tensor, norm = gradient_agreement(ours, theirs, key)
            f16_per_tensor, f16_norm = gradient_agreement(ours32, theirs, key)
            worst = max(per_tensor, key=per_tensor.get)
            f16_worst = max(f16_per_tensor.values())
            ok &= norm <= f16_norm and per_tensor[worst] <= f16_worst
            print(f"  {key:<10}{norm:>10.1e}{per_tensor[worst]:>10.1e}  {worst:<38}{f16_norm:>10.1e}{f16_worst:>11.1e}")
    per_tensor, _ = gradient_agreement(ours, theirs, "0/Gmain")
    f16_per_tensor, _ = gradient_agreement(ours32, theirs, "0/Gmain")
    print("  0/Gmain, the 8 tensors furthest from the published ones:")
    for name in sorted(per_tensor, key=per_tensor.get, reverse=True)[:8]:
        print(f"    {name:<44}{per_tensor[name]:>10.1e}  (float16 error {f16_per_tensor[name]:.1e})")
    verdict = "within" if ok else "BEYOND"
    print(f"  Every phase: ours {verdict} float16's own error (norm and worst tensor).")
    return ok
