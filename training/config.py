"""One typed, serializable configuration per training run, the preset table, the networks a config builds, and
their validation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import torch

import metrics
from training import networks_creps, networks_stylegan2, networks_stylegan3

# StyleGAN2/3 (and D for every preset): float16 in the 4 highest resolutions with outputs clamped to +-256;
# --fp32 computes everything in float32 without clamping, as the published train.py does.
STYLEGAN_MIXED_PRECISION = dict(num_fp16_res=4, conv_clamp=256)
STYLEGAN_FP32 = dict(num_fp16_res=0, conv_clamp=None)


@dataclasses.dataclass(frozen=True)
class Preset:
    """What a `--cfg` value sets: the generator and the published hyper-parameters that go with it."""

    G_class: type[torch.nn.Module]  # Generator class; D is the StyleGAN2 discriminator for every preset.
    map_depth: int  # Mapping network layers unless --map-depth is given.
    glr: float  # G learning rate unless --glr is given.
    style_mixing_prob: float = 0.0  # Probability of mixing two latents in a generated sample.
    pl_weight: float = 0.0  # Path length regularization weight; 0 disables it.
    G_reg_interval: int = 0  # Run path length regularization every this many G steps; 0: no separate phase.
    G_channel_mult: int = 1  # G uses --cbase and --cmax times this.
    G_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # Further generator options.
    magnitude_ema: bool = False  # G tracks layer input magnitudes with decay 0.5 ** (batch / 20k) per step.
    blur_init_sigma: float = 0.0  # Blur the images D sees with this sigma (pixels) at the start...
    blur_fade_kimg_per_32: float = 0.0  # ...fading out over batch / 32 times this many kimg.
    # G's precision options with mixed precision, and with --fp32 (D's are fixed: see construct_networks).
    G_mixed_precision: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(STYLEGAN_MIXED_PRECISION))
    G_fp32: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(STYLEGAN_FP32))
    # Whose training phases advance G's tracked statistics (w_avg, layer magnitudes) as the published code does:
    # "D" (StyleGAN2/3: the D phase's fakes, update_emas=True) or "G" (CREPS: its mapping network updates w_avg
    # whenever it runs in training mode without update_emas, i.e. in Gmain and Greg).
    G_stats_network: str = "D"


# The published training configurations (the StyleGAN3 and CREPS repositories' train.py).
PRESETS: dict[str, Preset] = {
    "creps": Preset(
        G_class=networks_creps.Generator,
        map_depth=8,
        glr=0.002,
        pl_weight=2.0,
        G_reg_interval=4,
        G_channel_mult=2,
        # The published CREPS train.py leaves num_fp16_res at 0 (line blocks in float32) and its SynthesisNetwork
        # always runs the two final image blocks in float16, every layer clamped to +-256. Its --fp32 path
        # crashes; ours runs those two blocks in float32 and keeps the clamps, so float32 numerics (the CPU)
        # equal the published network's.
        G_mixed_precision=dict(num_fp16_res=0, fc_clamp=256, fp16_final_blocks=True),
        G_fp32=dict(num_fp16_res=0, fc_clamp=256, fp16_final_blocks=False),
        G_stats_network="G",
    ),
    "stylegan3-t": Preset(G_class=networks_stylegan3.Generator, map_depth=2, glr=0.0025, magnitude_ema=True),
    "stylegan3-r": Preset(
        G_class=networks_stylegan3.Generator,
        map_depth=2,
        glr=0.0025,
        magnitude_ema=True,
        G_channel_mult=2,
        G_kwargs=dict(conv_kernel=1, use_radial_filters=True),
        blur_init_sigma=10,
        blur_fade_kimg_per_32=200,
    ),
    "stylegan2": Preset(
        G_class=networks_stylegan2.Generator,
        map_depth=8,
        glr=0.002,
        style_mixing_prob=0.9,
        pl_weight=2.0,
        G_reg_interval=4,
    ),
}

# ----------------------------------------------------------------------------
# The published recipes' rules of thumb for the R1 weight and the batch (the StyleGAN3 training-configurations
# guide and StyleGAN2-ADA's automatic configuration), for --gamma=auto and the start-up advice.

RECIPE_BATCH = 32  # The batch of every published StyleGAN3 and CREPS recipe (tuned for 8 GPUs).
GAMMA_FAR_FACTOR = 5  # Warn when --gamma is more than this factor from the rule: over one resolution doubling.


def recommended_gamma(cfg: str, resolution: int, batch: int) -> tuple[float, str]:
    """The R1 weight the published rule of thumb gives, and the rule in words.

    It grows with the square of the resolution. StyleGAN3 and CREPS: the guide's table gives 0.5 at 128x128, 2 at
    256x256, 8 at 512x512 and 32 at 1024x1024 (batch 32, the same for -T and -R), i.e. resolution**2 / 32768.
    StyleGAN2 needs considerably less: StyleGAN2-ADA's automatic configuration uses 0.0002 * resolution**2 / batch.
    """
    if cfg == "stylegan2":
        return 0.0002 * resolution**2 / batch, "StyleGAN2-ADA's rule 0.0002 * resolution^2 / batch"
    return resolution**2 / 32768, "the StyleGAN3 guide's rule resolution^2 / 32768 (2 at 256x256)"


def gamma_advice(cfg: str, gamma: float, resolution: int, batch: int) -> str | None:
    """A warning when `gamma` is far from the rule of thumb for this resolution and config, else None."""
    rule, how = recommended_gamma(cfg, resolution, batch)
    if gamma == 0:
        return f"--gamma=0 turns R1 regularization off; {how} gives {rule:.4g} at {resolution}x{resolution}"
    if max(gamma / rule, rule / gamma) <= GAMMA_FAR_FACTOR:
        return None
    side = "above" if gamma > rule else "below"
    return (
        f"--gamma={gamma:g} is {max(gamma / rule, rule / gamma):.0f}x {side} {how}, which gives {rule:.4g} at "
        f"{resolution}x{resolution}; fine if deliberate (fine-tuning often uses less R1), else try --gamma=auto"
    )


def batch_advice(batch: int) -> str | None:
    """The guide's advice when --batch differs from the published recipes' batch, else None."""
    if batch == RECIPE_BATCH:
        return None
    if batch < RECIPE_BATCH:
        return (
            f"--batch={batch} is smaller than the published recipes' {RECIPE_BATCH}; the training guide advises a "
            f"larger --gamma and/or a lower learning rate, most importantly --dlr"
        )
    return (
        f"--batch={batch} is larger than the published recipes' {RECIPE_BATCH}; the training guide warns that "
        f"changing --batch needs experimenting with --gamma and the learning rates"
    )


# The published recipes' arithmetic: settings tuned at batch RECIPE_BATCH that train.py scales with --batch, and
# the changes for fine-tuning from a snapshot's weights.
EMA_KIMG_AT_RECIPE_BATCH = 10  # G_ema's half-life at batch 32; batch * 10 / 32 kimg in general.
MAGNITUDE_EMA_NIMG = 20_000  # StyleGAN3's layer magnitudes: decay 0.5 ** (batch / 20_000) per step.
FINE_TUNING_ADA_KIMG = 100  # ADA's p may go from 0 to 1 in this many kimg when fine-tuning (500 from scratch).


def recipe_settings(cfg: str, batch: int, cbase: int, cmax: int) -> dict[str, Any]:
    """The TrainingConfig fields that preset `cfg` derives from the batch and the capacity options: G's options
    (channel counts times the preset's multiplier, StyleGAN3's magnitude decay), the G_ema half-life and the
    StyleGAN3-R blur fade, as the published train.py computes them."""
    preset = PRESETS[cfg]
    G_kwargs = dict(
        channel_base=cbase * preset.G_channel_mult, channel_max=cmax * preset.G_channel_mult, **preset.G_kwargs
    )
    if preset.magnitude_ema:
        G_kwargs["magnitude_ema_beta"] = 0.5 ** (batch / MAGNITUDE_EMA_NIMG)
    return dict(
        G_kwargs=G_kwargs,
        ema_kimg=batch * EMA_KIMG_AT_RECIPE_BATCH / RECIPE_BATCH,
        blur_fade_kimg=batch * preset.blur_fade_kimg_per_32 / RECIPE_BATCH,
    )


def fine_tuning(c: TrainingConfig) -> TrainingConfig:
    """`c` for a run that starts from a snapshot's weights (the published recipe): ADA reacts 5x faster, the EMA
    half-life does not ramp up, and StyleGAN3-R's blur starts off."""
    return dataclasses.replace(c, ada_kimg=FINE_TUNING_ADA_KIMG, ema_rampup=None, blur_init_sigma=0.0)


# Options that change what is computed. Continuing a run in place (--resume=RUN_DIR / latest) must keep them.
FIXED_WHEN_CONTINUING = (
    "cfg",
    "data",
    "cond",
    "mirror",
    "gpus",
    "batch_size",
    "batch_gpu",
    "gamma",
    "cbase",
    "cmax",
    "map_depth",
    "mbstd_group",
    "glr",
    "dlr",
    "fp32",
    "seed",
    "aug",
    "p",
    "target",
    "freezed",
    "batch_gpu_auto",
)


@dataclasses.dataclass
class TrainingConfig:
    """Everything one training run needs, written to `run_dir/training_options.json` before the first step."""

    # Where and what.
    outdir: str  # Parent folder of run directories.
    cfg: str  # Preset name, a key of PRESETS.
    data: str  # Dataset zip or folder made by dataset_tool.py.
    desc: str | None = None  # Appended to the run directory name; None adds nothing.
    run_dir: str | None = None  # Set at launch: outdir/NNNNN-<cfg>-<data>-gpus<N>-batch<B>-gamma<G>[-desc].

    # Data.
    cond: bool = False  # Train a conditional model on the dataset's labels.
    mirror: bool = False  # Double the dataset with x-flips.
    workers: int = 3  # DataLoader worker processes per rank.

    # Batch and processes.
    gpus: int = 1  # Number of processes (one per GPU), across all machines.
    batch_size: int = 32  # Total batch over all processes, in images per step.
    batch_gpu: int = 32  # Images per process per accumulation round; batch_size / gpus when not given.
    # --batch-gpu=auto: batch_gpu is at most batch_size / gpus; before the first step the run sets it to the largest
    # candidate (batch_gpu_candidates) that a memory probe finds fitting, and halves it after running out of memory.
    # training_options.json then holds the value in effect, and the training state keeps it for continuing.
    batch_gpu_auto: bool = False

    # Networks.
    z_dim: int = 512  # Latent size.
    w_dim: int = 512  # Intermediate latent size.
    cbase: int = 32768  # Channel base: resolution r gets min(cbase // r, cmax) channels.
    cmax: int = 512  # Maximum channels per layer.
    map_depth: int = 8  # Mapping network layers.
    mbstd_group: int = 4  # Minibatch standard deviation group size.
    fp32: bool = False  # Disable mixed precision (see Preset.G_mixed_precision, G_fp32 and construct_networks).
    G_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # Generator options beyond the above.

    # Optimization.
    glr: float = 0.002  # G learning rate.
    dlr: float = 0.002  # D learning rate.
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas for both networks.
    eps: float = 1e-8  # Adam epsilon.
    gamma: float = 10.0  # R1 regularization weight.
    gamma_auto: bool = False  # gamma came from --gamma=auto (recommended_gamma).
    style_mixing_prob: float = 0.9  # Probability of mixing two latents in a generated sample.
    pl_weight: float = 2.0  # Path length regularization weight; 0 disables it.
    pl_batch_shrink: int = 2  # Path length regularization runs on batch / pl_batch_shrink samples.
    pl_decay: float = 0.01  # Decay of the running path length mean.
    G_reg_interval: int = 4  # Lazy regularization: path length every this many G steps; 0 fuses it in.
    D_reg_interval: int = 16  # Lazy regularization: R1 every this many D steps; 0 fuses it in.
    blur_init_sigma: float = 0.0  # Blur the images D sees with this sigma (pixels) at the start; 0: no blur.
    blur_fade_kimg: float = 0.0  # Fade the blur out over this many kimg.
    ema_kimg: float = 10.0  # Half-life of G's exponential moving average, in kimg (batch * 10 / 32).
    ema_rampup: float | None = 0.05  # EMA half-life is at most this fraction of the images seen; None: no ramp-up.

    # Augmentation (the 'bgc' pipe of StyleGAN2-ADA) and transfer learning.
    aug: str = "ada"  # Augmentation mode: ada (adaptive p), fixed (p = --p) or noaug.
    p: float = 0.2  # Augmentation probability for --aug=fixed.
    target: float = 0.6  # ADA target for E[sign(D(reals))].
    ada_interval: int = 4  # Adjust p every this many steps.
    ada_kimg: float = 500  # p can go from 0 to 1 in this many kimg (100 when fine-tuning from a snapshot).
    freezed: int = 0  # Freeze the first this-many layers of D.

    # Schedule.
    total_kimg: float = 25000  # Training length, in thousands of real images shown to D.
    tick_kimg: float = 4  # Progress report interval, in kimg.
    snap_ticks: int = 50  # Snapshot interval, in ticks.
    state_min: float = 10.0  # Also write a training state every this many minutes of training; 0: only snapshots'.
    state_kimg: float = 0.0  # Also write a training state every this many kimg; 0: only by state_min and snapshots.
    timeout_min: float = 10.0  # How long ranks wait for each other in a collective before the run stops.
    seed: int = 0  # Random seed of initialization, data order and every sampled latent.
    cudnn_benchmark: bool = True  # Let cuDNN pick the fastest convolution algorithms.
    metrics: list[str] = dataclasses.field(default_factory=list)  # Metrics evaluated at every snapshot; [] none.
    stop_patience: int = 0  # Stop when the first metric has not improved for this many evaluations; 0: never.
    detector_dir: str | None = None  # Folder searched for metric detector files first; None: the download cache.

    # Resume.
    resume: str | None = None  # What --resume said: a snapshot pickle or URL, a run directory, or "latest".
    resume_pkl: str | None = None  # Start from this snapshot's weights, counters at 0; None: fresh weights.
    resume_state: str | None = None  # Continue exactly from this training state; None: start a new schedule.

    @property
    def preset(self) -> Preset:
        """The preset named by `cfg`."""
        return PRESETS[self.cfg]

    @property
    def rounds(self) -> int:
        """Gradient accumulation rounds per step on each process."""
        return self.batch_size // (self.batch_gpu * self.gpus)

    def to_json(self) -> str:
        """The config as indented JSON, as written to training_options.json."""
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        """Rebuild a config from training_options.json's contents."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown training options: {', '.join(unknown)}")
        values = dict(values)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    @classmethod
    def load(cls, run_dir: str) -> TrainingConfig:
        """Read `run_dir/training_options.json`."""
        with open(os.path.join(run_dir, "training_options.json")) as f:
            return cls.from_dict(json.load(f))


def construct_networks(
    c: TrainingConfig, resolution: int, num_channels: int, label_dim: int
) -> tuple[torch.nn.Module, networks_stylegan2.Discriminator]:
    """G (per the preset and c.G_kwargs) and the StyleGAN2 D for images of the given shape, on the CPU.

    Precision follows the published train.py: G per the preset (`G_mixed_precision`, or `G_fp32` with --fp32), D
    in float16 in its 4 highest resolutions clamped to +-256, or in float32 unclamped with --fp32.
    """
    G_precision = c.preset.G_fp32 if c.fp32 else c.preset.G_mixed_precision
    G = c.preset.G_class(
        z_dim=c.z_dim,
        c_dim=label_dim,
        w_dim=c.w_dim,
        img_resolution=resolution,
        img_channels=num_channels,
        mapping_kwargs=dict(num_layers=c.map_depth),
        **G_precision,
        **c.G_kwargs,
    )
    D = networks_stylegan2.Discriminator(
        c_dim=label_dim,
        img_resolution=resolution,
        img_channels=num_channels,
        channel_base=c.cbase,
        channel_max=c.cmax,
        epilogue_kwargs=dict(mbstd_group_size=c.mbstd_group),
        **(STYLEGAN_FP32 if c.fp32 else STYLEGAN_MIXED_PRECISION),
    )
    return G, D


def batch_gpu_candidates(per_gpu: int, mbstd_group: int) -> list[int]:
    """The per-GPU batches --batch-gpu=auto may use, largest first: the divisors of `per_gpu` (the images of one
    process per step) that are multiples of `mbstd_group` (D's minibatch-std groups must not straddle rounds)."""
    return [b for b in range(per_gpu, 0, -1) if per_gpu % b == 0 and b % mbstd_group == 0]


class ConfigError(ValueError):
    """A combination of options that cannot train; the message names the options and the fix."""


# The train.py float options and the config fields they set; messages name the option, or else the field.
FLOAT_OPTIONS = {
    "gamma": "--gamma",
    "glr": "--glr",
    "dlr": "--dlr",
    "p": "--p",
    "target": "--target",
    "total_kimg": "--kimg",
    "tick_kimg": "--tick",
}


def non_finite_values(c: TrainingConfig) -> list[str]:
    """'name=value' for every NaN or infinite number in the config, including inside tuples and G_kwargs.

    NaN slips through every range check (it compares false with any bound) and training then misbehaves without
    a word: gamma=nan turns R1 off, total_kimg=nan never stops.
    """
    found = []
    for field in dataclasses.fields(c):
        value = getattr(c, field.name)
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, item in items:
            numbers = item if isinstance(item, (tuple, list)) else [item]
            if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
                label = FLOAT_OPTIONS.get(field.name, field.name) if key is None else f"{field.name}[{key!r}]"
                found.append(f"{label}={item!r}")
    return found


def validate(c: TrainingConfig, dataset_info: dict[str, Any] | None = None) -> None:
    """Refuse bad combinations in one place. `dataset_info` (resolution, has_labels) enables the data checks."""
    non_finite = non_finite_values(c)
    if non_finite:
        raise ConfigError(f"{', '.join(non_finite)}: every number must be finite (not NaN or infinite)")
    if c.cfg not in PRESETS:
        raise ConfigError(f"--cfg={c.cfg} is not supported; choose one of: {', '.join(PRESETS)}")
    if c.batch_size % c.gpus != 0:
        raise ConfigError(f"--batch={c.batch_size} must be a multiple of --gpus={c.gpus}")
    if c.batch_gpu_auto and not batch_gpu_candidates(c.batch_size // c.gpus, c.mbstd_group):
        raise ConfigError(
            f"--batch-gpu=auto chooses a divisor of --batch / --gpus = {c.batch_size // c.gpus} that is a multiple "
            f"of --mbstd-group={c.mbstd_group}, and there is none; change --batch, --gpus or --mbstd-group"
        )
    if c.batch_gpu < 1 or c.batch_size % (c.batch_gpu * c.gpus) != 0:
        raise ConfigError(
            f"--batch={c.batch_size} must be a multiple of --batch-gpu={c.batch_gpu} times --gpus={c.gpus}"
        )
    if c.batch_gpu < c.mbstd_group:
        raise ConfigError(
            f"--batch-gpu={c.batch_gpu} is smaller than --mbstd-group={c.mbstd_group}; raise --batch-gpu or "
            f"lower --mbstd-group"
        )
    if c.batch_gpu % c.mbstd_group != 0:
        raise ConfigError(f"--batch-gpu={c.batch_gpu} must be a multiple of --mbstd-group={c.mbstd_group}")
    if c.aug not in ("ada", "fixed", "noaug"):
        raise ConfigError(f"--aug={c.aug} is not supported; choose ada, fixed or noaug")
    for name in c.metrics:
        try:
            spec = metrics.get_metric(name)
        except metrics.UnknownMetricError as error:
            raise ConfigError(f"--metrics: {error}, or none") from None
        if spec.needs_input_transform and not hasattr(c.preset.G_class.synthesis_class, "set_input_transform"):
            raise ConfigError(
                f"--metrics={name} measures the equivariance of StyleGAN3 generators; --cfg={c.cfg} has none. "
                f"Use --cfg=stylegan3-t or stylegan3-r, or drop {name}"
            )
    if c.stop_patience > 0 and not c.metrics:
        raise ConfigError(
            f"--stop-patience={c.stop_patience} stops on the first metric of --metrics, and there is none; add one "
            f"(--metrics=swd needs no download) or drop --stop-patience"
        )
    if c.snap_ticks * c.tick_kimg < 1:
        raise ConfigError(
            f"--tick={c.tick_kimg} times --snap={c.snap_ticks} is below 1 kimg; snapshots are named by kimg, so "
            f"they must be at least 1 kimg apart"
        )
    if dataset_info is not None:
        if c.cond and not dataset_info["has_labels"]:
            raise ConfigError(f"--cond=1 needs labels, but {c.data} has no dataset.json labels")
        resolution = dataset_info["resolution"]
        if resolution < 8 or resolution & (resolution - 1):
            raise ConfigError(f"{c.data} has {resolution}x{resolution} images; training needs a power of two >= 8")
        if c.cbase < resolution:
            raise ConfigError(
                f"--cbase={c.cbase} is below the resolution {resolution}: layers at resolution r get cbase / r "
                f"channels, which would be 0; raise --cbase"
            )
        # D has fromrgb, conv0, conv1 and skip in its first block and conv0, conv1, skip in each later one.
        num_d_layers = 3 * (int(resolution).bit_length() - 3) + 1
        if c.freezed > num_d_layers:
            raise ConfigError(f"--freezed={c.freezed}, but D has only {num_d_layers} layers at {resolution}px")
