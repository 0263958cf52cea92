"""Where a training step's time goes: torch.profiler over real steps of one configuration.

The configuration comes from train.py's own option parsing (the same presets and recipe arithmetic), the trainer from
`training_loop.build_trainer` and each step from `training_loop.train_step`, on a demo:shapes dataset made at the
resolution asked for. After --warmup steps (cuDNN autotuning, kernel builds), --steps steps are timed without the
profiler, then profiled. A multiple of 16 steps runs every lazily regularized phase in its share (R1 every 16 steps,
path length every 4). Printed: milliseconds per step (wall), the device's busy time per step (GPU only: kernel time
over wall time says how much the host leaves it idle), and the ops with the most self time.

Examples:

    # On a GPU: the published configuration of issue 12.
    python -m benchmarks.step_profile --cfg=stylegan3-t --resolution=256 --batch=32 --batch-gpu=16

    # On the CPU (host overheads, or the CPU path itself).
    python -m benchmarks.step_profile --cfg=stylegan2 --resolution=32 --batch=8 --cbase=2048 --cmax=64
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import click
import torch

import dnnlib
import train
from benchmarks.train_speed import make_dataset
from torch_utils import distributed
from training import training_loop
from training.config import PRESETS
from training.dataset import ImageFolderDataset


def build(cfg: str, data: Path, outdir: Path, train_args: list[str]) -> tuple:
    """(config, trainer, data iterator, labels, device) exactly as train.py and the training loop would make them."""
    args = [f"--outdir={outdir}", f"--cfg={cfg}", f"--data={data}", "--gpus=1", "--metrics=none", *train_args]
    with train.main.make_context("train.py", args) as ctx:
        c = train.build_config(dnnlib.EasyDict(ctx.params))
    device = distributed.select_device()
    torch.backends.cudnn.benchmark = c.cudnn_benchmark
    dataset = ImageFolderDataset(**training_loop.training_set_kwargs(c))
    labels = torch.stack([torch.from_numpy(dataset.get_label(i)) for i in range(len(dataset))]).to(device)
    t = training_loop.build_trainer(c, dataset, device)
    data_iter = training_loop.make_data_iterator(c, dataset, 0, device)
    return c, t, data_iter, labels, device


def run_steps(c, t, data_iter, labels, device: torch.device, count: int) -> float:
    """Run `count` training steps; return the wall milliseconds per step (device work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        training_loop.train_step(t, c, [next(data_iter) for _ in range(c.rounds)], labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000 / count


def profile_steps(c, t, data_iter, labels, device: torch.device, count: int, top: int) -> dict:
    """Profile `count` steps: the `top` ops by self time on the device (CPU without a GPU), per step."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        run_steps(c, t, data_iter, labels, device, count)
    events = prof.key_averages()
    on_device = device.type == "cuda"

    def self_us(event) -> float:
        return event.self_device_time_total if on_device else event.self_cpu_time_total

    rows = sorted(events, key=self_us, reverse=True)[:top]
    busy_ms = sum(self_us(e) for e in events) / 1000 / count if on_device else None
    return dict(
        device_busy_ms_per_step=busy_ms,
        ops=[
            dict(
                name=e.key,
                self_ms_per_step=self_us(e) / 1000 / count,
                calls_per_step=e.count / count,
                self_cpu_ms_per_step=e.self_cpu_time_total / 1000 / count,
            )
            for e in rows
        ],
    )


@click.command(context_settings=dict(max_content_width=120))
@click.option(
    "--cfg",
    metavar="NAME",
    type=click.Choice(list(PRESETS)),
    default="stylegan3-t",
    show_default=True,
    help="Configuration.",
)
@click.option(
    "--resolution",
    metavar="INT",
    type=click.IntRange(min=8),
    default=256,
    show_default=True,
    help="Image resolution (a power of two).",
)
@click.option("--batch", metavar="INT", type=click.IntRange(min=1), default=32, show_default=True, help="Total batch.")
@click.option("--batch-gpu", metavar="INT", type=click.IntRange(min=1), help="Batch per pass  [default: --batch].")
@click.option(
    "--cbase", metavar="INT", type=click.IntRange(min=1), default=32768, show_default=True, help="Capacity multiplier."
)
@click.option(
    "--cmax", metavar="INT", type=click.IntRange(min=1), default=512, show_default=True, help="Max. feature maps."
)
@click.option(
    "--warmup", metavar="INT", type=click.IntRange(min=0), default=16, show_default=True, help="Steps before timing."
)
@click.option(
    "--steps",
    metavar="INT",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Steps timed, then profiled.",
)
@click.option("--top", metavar="INT", type=click.IntRange(min=1), default=25, show_default=True, help="Ops listed.")
@click.option("--json", "json_path", metavar="FILE", type=click.Path(dir_okay=False), help="Also write the figures.")
def main(
    cfg: str,
    resolution: int,
    batch: int,
    batch_gpu: int | None,
    cbase: int,
    cmax: int,
    warmup: int,
    steps: int,
    top: int,
    json_path: str | None,
) -> None:
    """Time and profile training steps of one configuration; print the ops with the most self time."""
    train_args = [f"--batch={batch}", "--gamma=2", f"--cbase={cbase}", f"--cmax={cmax}", "--workers=1"]
    train_args += [f"--batch-gpu={batch_gpu}"] if batch_gpu else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_dataset(tmp, resolution, max_images=max(64, batch))
        c, t, data_iter, labels, device = build(cfg, data, tmp / "runs", train_args)
        run_steps(c, t, data_iter, labels, device, warmup)
        wall_ms = run_steps(c, t, data_iter, labels, device, steps)
        figures = profile_steps(c, t, data_iter, labels, device, steps, top)
    figures.update(
        cfg=cfg,
        resolution=resolution,
        batch=batch,
        batch_gpu=c.batch_gpu,
        device=str(device),
        wall_ms_per_step=wall_ms,
        sec_per_kimg=wall_ms / batch,
    )
    print(
        f"\n{cfg} {resolution}x{resolution}, batch {batch} ({c.batch_gpu} per pass) on {device}: "
        f"{wall_ms:.1f} ms per step = {wall_ms / batch:.2f} s/kimg"
    )
    if figures["device_busy_ms_per_step"] is not None:
        busy = figures["device_busy_ms_per_step"]
        print(f"GPU busy {busy:.1f} ms per step ({100 * busy / wall_ms:.0f} % of the wall time)")
    print(f"\n{'self ms/step':>12} {'calls/step':>10} {'CPU ms/step':>11}  op")
    for op in figures["ops"]:
        print(
            f"{op['self_ms_per_step']:>12.2f} {op['calls_per_step']:>10.1f} {op['self_cpu_ms_per_step']:>11.2f}  "
            f"{op['name']}"
        )
    if json_path is not None:
        Path(json_path).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
