"""Train a GAN on a dataset made by dataset_tool.py: parse the options, build one config, print it, launch."""

from __future__ import annotations

import sys

import click
import torch

import dnnlib
import metrics
from dnnlib.util import FiniteFloatRange, bool_option
from torch_utils import distributed
from training import checkpoint, runs, training_loop
from training.config import (
    PRESETS,
    ConfigError,
    TrainingConfig,
    batch_advice,
    fine_tuning,
    gamma_advice,
    recipe_settings,
    recommended_gamma,
    validate,
)
from training.dataset import DatasetError, ImageFolderDataset


def build_config(
    opts: dnnlib.EasyDict, given: set[str] = frozenset(), dataset_info: dict | None = None
) -> TrainingConfig:
    """Turn the command-line options into a validated TrainingConfig; bad input raises click.ClickException.

    Args:
        opts:         The parsed options.
        given:        Names of the options the user typed (the others have their defaults).
        dataset_info: `inspect_dataset(opts.data, opts.cond)` when the caller has it already.
    """
    preset = PRESETS[opts.cfg]
    if "p" in given and opts.aug != "fixed":
        raise click.ClickException(f"--p sets the probability of --aug=fixed; with --aug={opts.aug} it has no effect")
    if "target" in given and opts.aug != "ada":
        raise click.ClickException(f"--target is the goal of --aug=ada; with --aug={opts.aug} it has no effect")
    gpus = opts.gpus
    if (problem := distributed.process_count_error(gpus)) is not None:
        raise click.ClickException(problem)

    if dataset_info is None:
        dataset_info = inspect_dataset(opts.data, use_labels=opts.cond)
    gamma = opts.gamma
    if gamma == "auto":  # Rounded to 4 digits: the value the run directory's name shows.
        gamma = float(f"{recommended_gamma(opts.cfg, dataset_info['resolution'], opts.batch)[0]:.4g}")

    c = TrainingConfig(
        outdir=opts.outdir,
        cfg=opts.cfg,
        data=opts.data,
        desc=opts.desc,
        cond=opts.cond,
        mirror=opts.mirror,
        workers=opts.workers,
        gpus=gpus,
        batch_size=opts.batch,
        batch_gpu=opts.batch // gpus if opts.batch_gpu in (None, "auto") else opts.batch_gpu,
        batch_gpu_auto=opts.batch_gpu == "auto",
        cbase=opts.cbase,
        cmax=opts.cmax,
        map_depth=opts.map_depth or preset.map_depth,
        mbstd_group=opts.mbstd_group,
        fp32=opts.fp32,
        glr=preset.glr if opts.glr is None else opts.glr,
        dlr=opts.dlr,
        gamma=gamma,
        gamma_auto=opts.gamma == "auto",
        style_mixing_prob=preset.style_mixing_prob,
        pl_weight=preset.pl_weight,
        G_reg_interval=preset.G_reg_interval,
        blur_init_sigma=preset.blur_init_sigma,
        **recipe_settings(opts.cfg, opts.batch, opts.cbase, opts.cmax),
        aug=opts.aug,
        p=opts.p,
        target=opts.target,
        freezed=opts.freezed,
        total_kimg=opts.kimg,
        tick_kimg=opts.tick,
        snap_ticks=opts.snap,
        state_min=opts.state_min,
        state_kimg=opts.state_kimg,
        timeout_min=opts.timeout_min,
        seed=opts.seed,
        cudnn_benchmark=not opts.nobench,
        metrics=parse_metrics(opts.metrics),
        detector_dir=opts.detector_dir,
        stop_patience=opts.stop_patience,
        resume=opts.resume,
    )
    try:
        c = runs.resolve_resume(c)
        if c.resume_pkl is not None:
            c = fine_tuning(c)
        validate(c, dataset_info)
        runs.check_before_launch(c, dataset_info)
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    check_metrics(c, download=not opts.get("dry_run", False))
    return c


def check_metrics(c: TrainingConfig, download: bool = True) -> None:
    """Make sure the detector files of --metrics are at hand (downloading them now), not hours into the run.

    Args:
        download: False (--dry-run) only looks: a missing detector is a note, since a real run would fetch it.
    """
    try:
        metrics.check_metrics_available(c.metrics, detector_dir=c.detector_dir, download=download)
    except metrics.DetectorUnavailableError as error:
        if download:
            raise click.ClickException(
                f"--metrics={','.join(c.metrics)}: {error}\nOr train without them: --metrics=swd needs no download, "
                f"and --metrics=none measures nothing (calc_metrics.py can measure the snapshots later)."
            ) from None
        distributed.print0(f"Note: --metrics={','.join(c.metrics)} needs detector files a real run would download:")
        distributed.print0(f"  {error}")
    except metrics.MetricError as error:
        raise click.ClickException(f"--metrics={','.join(c.metrics)}: {error}") from None


def parse_metrics(metrics: str) -> list[str]:
    """'fid50k_full,kid50k' -> ['fid50k_full', 'kid50k']; 'none' -> []."""
    names = [name.strip() for name in metrics.split(",") if name.strip()]
    return [] if names in ([], ["none"]) else names


def inspect_dataset(path: str, use_labels: bool) -> dict:
    """Open the dataset as training will, for the checks in `validate`; unreadable data is a ClickException.

    Labels are read only for a conditional run, so a damaged dataset.json cannot stop an unconditional one.
    """
    try:
        with ImageFolderDataset(path, use_labels=use_labels, check_headers=True) as dataset:
            return dict(
                resolution=dataset.resolution,
                num_channels=dataset.num_channels,
                label_dim=dataset.label_dim,
                has_labels=dataset.has_labels,
                num_images=len(dataset),
            )
    except (DatasetError, OSError) as error:
        raise click.ClickException(f"--data={path}: {error}") from None


class OrAuto:
    """Mixin for a click type: also accept the word 'auto' (any case), passed on as "auto"."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return super().convert(value, param, ctx)


class GammaParam(OrAuto, FiniteFloatRange):
    """--gamma: a finite number in range, or 'auto'."""


class BatchGpuParam(OrAuto, click.IntRange):
    """--batch-gpu: an integer in range, or 'auto'."""


def print_config(c: TrainingConfig, dataset_info: dict) -> None:
    """Print the configuration and where the run will go (rank 0), and warn about a dataset smaller than a batch.

    Args:
        dataset_info: `inspect_dataset(c.data, c.cond)`.
    """
    num_images, resolution = dataset_info["num_images"], dataset_info["resolution"]
    distributed.print0()
    distributed.print0("Training options:")
    distributed.print0(c.to_json())
    distributed.print0()
    if c.resume_state is not None and c.run_dir is not None:
        distributed.print0(f"Continuing run:      {c.run_dir}")
    else:
        distributed.print0(f"Output directory:    {runs.next_run_dir(c)}")
    distributed.print0(f"Number of GPUs:      {c.gpus}")
    split = f"{c.batch_gpu} per GPU x {c.rounds} rounds"
    if c.batch_gpu_auto:
        split = f"--batch-gpu=auto: at most {c.batch_gpu} per GPU, chosen at the start"
    distributed.print0(f"Batch size:          {c.batch_size} images ({split})")
    distributed.print0(f"Training duration:   {c.total_kimg:g} kimg")
    distributed.print0(f"Dataset path:        {c.data} ({num_images} images, {resolution}x{resolution})")
    distributed.print0(f"Conditional model:   {c.cond}")
    distributed.print0(f"Dataset x-flips:     {c.mirror}")
    distributed.print0(f"Metrics:             {', '.join(c.metrics) or 'none'}")
    if c.metrics and not torch.cuda.is_available():
        distributed.print0("Note: no GPU, so each snapshot's metrics will take long; --metrics=none skips them.")
    if num_images < c.batch_size:
        distributed.print0(
            f"Warning: the dataset has {num_images} images, fewer than --batch={c.batch_size}, so every batch repeats "
            f"some of them; add images or lower --batch."
        )
    distributed.print0()


def print_advice(c: TrainingConfig, resolution: int) -> None:
    """Say what --gamma=auto chose, and warn (rank 0, once) where --gamma or --batch departs from the published
    recipes' rules of thumb."""
    if c.gamma_auto:
        rule = recommended_gamma(c.cfg, resolution, c.batch_size)[1]
        distributed.print0(f"--gamma=auto: {c.gamma:g}, from {rule} at {resolution}x{resolution}.")
    for advice in (gamma_advice(c.cfg, c.gamma, resolution, c.batch_size), batch_advice(c.batch_size)):
        if advice is not None:
            distributed.print0(f"Advice: {advice}.")


def launch(c: TrainingConfig) -> None:
    """Start the training processes: --gpus local processes, or this one under torchrun."""
    try:
        distributed.launch(train_process, (c,), num_processes=c.gpus, timeout_sec=c.timeout_min * 60)
    except torch.multiprocessing.ProcessExitedException as error:  # A spawned process printed why, then exited.
        how = f"was killed by {error.signal_name}" if error.signal_name else f"stopped with exit code {error.exit_code}"
        raise click.ClickException(f"training process {error.error_index} {how}; see its message above") from None


def train_process(c: TrainingConfig) -> None:
    """Body of every training process: a failed write (disk full, folder no longer writable), divergence or a rank
    that stopped answering ends the process with the sentence that says what happened, not a traceback."""
    try:
        training_loop.run(c)
    except (checkpoint.WriteError, DatasetError, training_loop.TrainingStopped, distributed.RankTimeout) as error:
        if distributed.is_main() or isinstance(error, distributed.RankTimeout):  # The others would say the same.
            click.echo(f"Error: {error}", err=True)
        sys.exit(1)
    except RuntimeError as error:
        if not training_loop.is_worker_death(error):
            raise
        click.echo(f"Error: {training_loop.describe_worker_death(error, c)}", err=True)
        sys.exit(1)


@click.command(context_settings=dict(terminal_width=120, max_content_width=120))
# Required.
@click.option("--outdir", metavar="DIR", required=True, help="Where to make the run directory.")
@click.option(
    "--cfg",
    metavar="NAME",
    type=click.Choice(list(PRESETS)),
    required=True,
    help=f"Base configuration: {', '.join(PRESETS)}.",
)
@click.option("--data", metavar="ZIP|DIR", required=True, help="Training data, made by dataset_tool.py.")
@click.option("--gpus", metavar="INT", type=click.IntRange(min=1), required=True, help="Number of GPUs (processes).")
@click.option("--batch", metavar="INT", type=click.IntRange(min=1), required=True, help="Total batch size.")
@click.option(
    "--gamma",
    metavar="FLOAT|auto",
    type=GammaParam(min=0),
    required=True,
    help="R1 regularization weight; auto: the published rule of thumb for the resolution (docs/training.md).",
)
# Optional features.
@bool_option("--cond", default=False, show_default=True, help="Train a conditional model.")
@bool_option("--mirror", default=False, show_default=True, help="Enable dataset x-flips.")
@click.option(
    "--aug",
    metavar="MODE",
    type=click.Choice(["noaug", "ada", "fixed"]),
    default="ada",
    show_default=True,
    help="Augmentation mode: noaug, ada or fixed.",
)
@click.option(
    "--resume",
    metavar="[PKL|URL|DIR|latest]",
    help="New run from a snapshot's weights (PKL, URL), or continue a run exactly (DIR; latest: the newest run, or "
    "a new one if none has a state yet).",
)
@click.option(
    "--freezed",
    metavar="INT",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Freeze first layers of D.",
)
# Misc hyperparameters.
@click.option(
    "--p",
    metavar="FLOAT",
    type=FiniteFloatRange(min=0, max=1),
    default=0.2,
    show_default=True,
    help="Probability for --aug=fixed.",
)
@click.option(
    "--target",
    metavar="FLOAT",
    type=FiniteFloatRange(min=0, max=1),
    default=0.6,
    show_default=True,
    help="Target value for --aug=ada.",
)
@click.option(
    "--batch-gpu",
    metavar="INT|auto",
    type=BatchGpuParam(min=1),
    help="Limit batch size per GPU; auto: the largest that fits, halved on out-of-memory  [default: batch/gpus].",
)
@click.option(
    "--cbase", metavar="INT", type=click.IntRange(min=1), default=32768, show_default=True, help="Capacity multiplier."
)
@click.option(
    "--cmax", metavar="INT", type=click.IntRange(min=1), default=512, show_default=True, help="Max. feature maps."
)
@click.option("--glr", metavar="FLOAT", type=FiniteFloatRange(min=0), help="G learning rate  [default: varies].")
@click.option(
    "--dlr", metavar="FLOAT", type=FiniteFloatRange(min=0), default=0.002, show_default=True, help="D learning rate."
)
@click.option(
    "--map-depth", metavar="INT", type=click.IntRange(min=1), help="Mapping network depth  [default: varies]."
)
@click.option(
    "--mbstd-group",
    metavar="INT",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Minibatch std group size.",
)
# Misc settings.
@click.option("--desc", metavar="STR", help="String to include in result dir name.")
@click.option(
    "--metrics",
    metavar="[NAME|A,B,C|none]",
    default="fid50k_full",
    show_default=True,
    help="Quality metrics at each snapshot.",
)
@click.option(
    "--detector-dir",
    metavar="DIR",
    type=click.Path(exists=True),
    help="Folder with the metrics' detector files, for offline machines.",
)
@click.option(
    "--kimg",
    metavar="KIMG",
    type=FiniteFloatRange(min=0, min_open=True),
    default=25000,
    show_default=True,
    help="Total training duration.",
)
@click.option(
    "--tick",
    metavar="KIMG",
    type=FiniteFloatRange(min=0, min_open=True),
    default=4,
    show_default=True,
    help="How often to print progress.",
)
@click.option(
    "--snap",
    metavar="TICKS",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="How often to save snapshots.",
)
@click.option(
    "--stop-patience",
    metavar="INT",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Stop when the first of --metrics has not improved for this many snapshots (0: never).",
)
@click.option(
    "--state-min",
    metavar="MIN",
    type=FiniteFloatRange(min=0),
    default=10,
    show_default=True,
    help="Also save a training state every this many minutes (0: only with snapshots).",
)
@click.option(
    "--state-kimg",
    metavar="KIMG",
    type=FiniteFloatRange(min=0),
    default=0,
    show_default=True,
    help="Also save a training state every this many kimg (0: off).",
)
@click.option(
    "--timeout-min",
    metavar="MIN",
    type=FiniteFloatRange(min=0, min_open=True),
    default=10,
    show_default=True,
    help="How long processes wait for each other before stopping.",
)
@click.option("--seed", metavar="INT", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed.")
@bool_option("--fp32", default=False, show_default=True, help="Disable mixed-precision.")
@bool_option("--nobench", default=False, show_default=True, help="Disable cuDNN benchmarking.")
@click.option(
    "--workers",
    metavar="INT",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="DataLoader worker processes.",
)
@click.option("-n", "--dry-run", is_flag=True, help="Print training options and exit.")
def main(**kwargs) -> None:
    """Train a GAN using the techniques of StyleGAN2-ADA, StyleGAN3 and CREPS.

    Examples:

    \b
    # A small StyleGAN2 on the built-in 32x32 demo dataset, sized for a CPU (the README's quick start: 80 kimg in
    # 8-20 minutes on two cores; no metrics, which take minutes per snapshot on a CPU).
    python dataset_tool.py --source=demo:shapes --dest=datasets/shapes-32.zip --resolution=32x32
    python train.py --outdir=runs --cfg=stylegan2 --data=datasets/shapes-32.zip --gpus=1 --batch=16 \\
        --gamma=auto --metrics=none --aug=noaug --cbase=2048 --cmax=32 --map-depth=2 --kimg=80 --tick=4 --snap=4 \\
        --workers=1

    \b
    # CREPS on 8 GPUs with x-flips and FID at every snapshot; continue the newest run after an interruption.
    python train.py --outdir=runs --cfg=creps --data=datasets/ffhq-256.zip --gpus=8 --batch=64 \\
        --gamma=1 --mirror=1
    python train.py --outdir=runs --cfg=creps --data=datasets/ffhq-256.zip --gpus=8 --batch=64 \\
        --gamma=1 --mirror=1 --resume=latest

    \b
    # Fine-tune StyleGAN3-R from a snapshot with FreezeD; FID, KID and rotation equivariance, offline.
    python train.py --outdir=runs --cfg=stylegan3-r --data=datasets/metfaces-256.zip --gpus=8 --batch=32 \\
        --gamma=6.6 --mirror=1 --freezed=10 --metrics=fid50k_full,kid50k_full,eqr50k --detector-dir=detectors \\
        --resume=runs/00002-stylegan3-r-ffhq/network-snapshot-005000.pkl

    \b
    # Two machines with eight GPUs each (run on every machine).
    torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py \\
        --outdir=runs --cfg=stylegan2 --data=datasets/ffhq-256.zip --gpus=16 --batch=64 --gamma=1

    A BOOL option takes 1 or 0 (also true/false, yes/no, on/off); alone, as in --mirror, it means 1.
    """
    opts = dnnlib.EasyDict(kwargs)
    context = click.get_current_context()
    given = {name for name in kwargs if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    dataset_info = inspect_dataset(opts.data, use_labels=opts.cond)
    try:
        config = build_config(opts, given, dataset_info)
    except runs.RunComplete as complete:  # Re-running a finished run: say so, write nothing, succeed.
        distributed.print0(complete)
        return
    print_config(config, dataset_info)
    print_advice(config, dataset_info["resolution"])
    if opts.dry_run:
        distributed.print0("Dry run; exiting.")
        return
    launch(config)


if __name__ == "__main__":
    main()
