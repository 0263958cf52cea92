"""Equivariance of StyleGAN3 generators to translation and rotation, as PSNR (Karras et al. 2021, "Alias-free
generative adversarial networks", Section 3 and Appendix E: EQ-T and EQ-R).

For a random w, the generator renders a reference image, then renders again with its input transformed
(`G.synthesis.set_input_transform`). A perfectly equivariant generator gives the reference image transformed the same
way. The metric is 10 log10(I_max^2 / MSE) with I_max = 2 (images span [-1, 1]) and the MSE taken over all
samples, channels and valid pixels: those whose transformed reference is known (not from outside the image).

- Integer translation (EQ-T int): a whole number of pixels, at most 1/8 of the image, per axis; the reference is
  shifted exactly and every pixel whose source lies inside the image counts.
- Fractional translation (EQ-T frac, up to 1/8 of the image per axis) and rotation (EQ-R, up to +-180 degrees):
  near the Nyquist rate a sampled image does not determine its own fractional shift or rotation, so both images
  are first low-passed with the same radially symmetric filter (a Kaiser-windowed jinc: 17 taps, half amplitude
  at 0.25 cycles/pixel, stopband from 0.45), which commutes with rotation and translation. The filtered
  reference is then resampled at the transformed positions with a Kaiser-windowed sinc (12 x 12 taps). On a
  white band-limited test image this pipeline alone is accurate to about 73 dB. Pixels within reach of the
  filters' zero padding are left out: 8 pixels at the image border, 14 around the source position.

The input transform is one buffer for the whole batch, so each batch of samples shares one random transform.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from metrics.features import (
    LatentSampler,
    MetricContext,
    advance,
    in_chunks,
    progress_bar,
    rank_items,
    split_batches,
)
from metrics.registry import MetricError, register_metric
from torch_utils import distributed
from torch_utils.alias_free import design_lowpass_filter, make_transform
from torch_utils.ops import upfirdn2d

MAX_TRANSLATE = 1 / 8  # Largest translation per axis, in image widths.
MAX_ROTATE_DEG = 180  # Largest rotation, in degrees.
LOWPASS_TAPS = 17  # Radial low-pass applied to both images before a fractional comparison.
LOWPASS_CUTOFF = 0.25  # Its cutoff, in cycles per pixel.
LOWPASS_WIDTH = 0.4  # Its transition band, in cycles per pixel (0.05 to 0.45).
INTERP_RADIUS = 6  # Windowed-sinc interpolation reaches this many pixels on each side.
INTERP_BETA = 8.0  # Kaiser window shape of the interpolation kernel.
BORDER = LOWPASS_TAPS // 2  # Output pixels closer to the border see the low-pass's zero padding.
SOURCE_BORDER = BORDER + INTERP_RADIUS  # Resampled pixels whose source is closer also do.


@functools.lru_cache(maxsize=4)
def lowpass_filter(device: torch.device) -> torch.Tensor:
    """The radial low-pass filter [17, 17] of the fractional comparisons (StyleGAN3 paper, Appendix C.1 design)."""
    return design_lowpass_filter(LOWPASS_TAPS, LOWPASS_CUTOFF, LOWPASS_WIDTH, fs=1, radial=True).to(device)


def lowpass(images: torch.Tensor) -> torch.Tensor:
    """Filter images [N, C, H, W] with the radial low-pass, keeping their size (zero padding at the border)."""
    return upfirdn2d.filter2d(images, lowpass_filter(images.device))


def shift_exactly(images: torch.Tensor, dx: int, dy: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Translate images [N, C, H, W] by whole pixels; returns (shifted, valid mask [1, 1, H, W])."""
    h, w = images.shape[2:]
    shifted = torch.zeros_like(images)
    mask = torch.zeros([1, 1, h, w], device=images.device)
    # Output pixel (y, x) shows input pixel (y - dy, x - dx).
    ys, xs = slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0))
    shifted[:, :, ys, xs] = images[:, :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    mask[:, :, ys, xs] = 1
    return shifted, mask


def source_positions(size: int, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel of a `matrix`-transformed image comes from, in pixel indices (x [H*W], y [H*W])."""
    centers = (np.arange(size) + 0.5) / size - 0.5  # Pixel centres in image widths, as make_transform uses.
    x, y = np.meshgrid(centers, centers, indexing="xy")
    source = np.linalg.inv(matrix) @ np.stack([x.ravel(), y.ravel(), np.ones(x.size)])  # [3, H*W]
    return (source[0] + 0.5) * size - 0.5, (source[1] + 0.5) * size - 0.5


def windowed_sinc(t: torch.Tensor) -> torch.Tensor:
    """The interpolation kernel: sinc(t) times a Kaiser window, zero beyond INTERP_RADIUS."""
    window = torch.special.i0(INTERP_BETA * (1 - (t / INTERP_RADIUS).square()).clamp(min=0).sqrt())
    return torch.where(t.abs() < INTERP_RADIUS, torch.sinc(t) * window / float(np.i0(INTERP_BETA)), 0)


def resample(images: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """Transform images [N, C, H, W] by `matrix` (image widths about the centre) with windowed-sinc interpolation.

    Each output pixel is a weighted sum of the 12 x 12 input pixels around its source position; input pixels
    outside the image count as zero.
    """
    n, c, h, w = images.shape
    assert h == w, "square images only"
    source_x, source_y = (torch.from_numpy(p).to(images.device, torch.float32) for p in source_positions(h, matrix))
    x0, y0 = source_x.floor().long(), source_y.floor().long()  # [H*W]
    flat = images.reshape(n, c, h * w)
    result = torch.zeros_like(flat)
    for dy in range(1 - INTERP_RADIUS, INTERP_RADIUS + 1):
        ys = y0 + dy
        weight_y = windowed_sinc(source_y - ys) * ((ys >= 0) & (ys < h))
        for dx in range(1 - INTERP_RADIUS, INTERP_RADIUS + 1):
            xs = x0 + dx
            weight = weight_y * windowed_sinc(source_x - xs) * ((xs >= 0) & (xs < w))  # [H*W]
            result += flat[:, :, ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)] * weight
    return result.reshape(n, c, h, w)


def resample_mask(size: int, matrix: np.ndarray, device: torch.device) -> torch.Tensor:
    """Valid pixels [1, 1, H, W] of a fractional comparison: unaffected by zero padding on either side."""

    def inside(x: np.ndarray, y: np.ndarray, border: int) -> np.ndarray:
        return (x >= border) & (x <= size - 1 - border) & (y >= border) & (y <= size - 1 - border)

    pixels = np.arange(size, dtype=np.float64)
    x, y = (p.ravel() for p in np.meshgrid(pixels, pixels, indexing="xy"))
    mask = inside(x, y, BORDER) & inside(*source_positions(size, matrix), SOURCE_BORDER)
    return torch.from_numpy(mask.reshape(1, 1, size, size).astype(np.float32)).to(device)


def random_transform(kind: str, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """A random transform of the given kind ('int', 'frac' or 'rot') as a make_transform matrix."""
    if kind == "int":
        max_pixels = int(np.floor(resolution * MAX_TRANSLATE))
        return make_transform(tuple(rng.integers(-max_pixels, max_pixels + 1, size=2) / resolution), 0)
    if kind == "frac":
        return make_transform(tuple(rng.uniform(-MAX_TRANSLATE, MAX_TRANSLATE, size=2)), 0)
    assert kind == "rot", f"kind must be int, frac or rot, not {kind!r}"
    return make_transform((0, 0), rng.uniform(-MAX_ROTATE_DEG, MAX_ROTATE_DEG))


def equivariance_psnr(ctx: MetricContext, kind: str) -> float:
    """EQ-T (kind 'int' or 'frac') or EQ-R ('rot') of the context's generator over ctx.num_gen samples, in dB."""
    G = ctx.G
    resolution = G.img_resolution
    sample = LatentSampler(ctx)
    squared_error = torch.zeros([], dtype=torch.float64, device=ctx.device)
    count = torch.zeros([], dtype=torch.float64, device=ctx.device)
    identity = np.eye(3)
    with progress_bar(ctx, ctx.num_gen, f"equivariance ({kind})") as bar:
        for chunk in split_batches(rank_items(ctx.num_gen), ctx.batch_size):
            z, c = sample(chunk)
            # One transform per batch, drawn from a seed of the batch's first sample.
            matrix = random_transform(kind, resolution, np.random.default_rng([ctx.seed, 1, int(chunk[0])]))
            with torch.no_grad():
                ws = G.mapping(z[:, 0], c)
                G.synthesis.set_input_transform(identity)
                reference = in_chunks(lambda w: G.synthesis(w, noise_mode="const"), ws)
                G.synthesis.set_input_transform(matrix)
                rendered = in_chunks(lambda w: G.synthesis(w, noise_mode="const"), ws)
                G.synthesis.set_input_transform(identity)
                if kind == "int":
                    dx, dy = (int(round(v * resolution)) for v in matrix[:2, 2])
                    expected, mask = shift_exactly(reference, dx, dy)
                else:
                    expected = resample(lowpass(reference), matrix)
                    rendered = lowpass(rendered)
                    mask = resample_mask(resolution, matrix, ctx.device)
                squared_error += ((rendered - expected).square() * mask).sum(dtype=torch.float64)
                count += mask.sum(dtype=torch.float64) * rendered.shape[0] * rendered.shape[1]
            advance(bar, len(chunk))
    total_count = distributed.all_reduce_sum(count).item()
    if total_count == 0:
        raise MetricError(
            f"{resolution}x{resolution} images are too small to measure fractional equivariance: the filters leave "
            f"out {BORDER} pixels at the border and {SOURCE_BORDER} around each source position"
        )
    mse = distributed.all_reduce_sum(squared_error).item() / total_count
    return float(10 * np.log10(2**2 / mse)) if mse > 0 else float("inf")


@register_metric(num_gen=50_000, uses_reals=False, needs_input_transform=True, higher_is_better=True)
def eqt50k_int(ctx: MetricContext) -> dict[str, float]:
    """Equivariance to integer translation (EQ-T int), PSNR in dB, 50k samples."""
    return {"eqt50k_int": equivariance_psnr(ctx, "int")}


@register_metric(num_gen=50_000, uses_reals=False, needs_input_transform=True, higher_is_better=True)
def eqt50k_frac(ctx: MetricContext) -> dict[str, float]:
    """Equivariance to fractional translation (EQ-T frac), PSNR in dB, 50k samples."""
    return {"eqt50k_frac": equivariance_psnr(ctx, "frac")}


@register_metric(num_gen=50_000, uses_reals=False, needs_input_transform=True, higher_is_better=True)
def eqr50k(ctx: MetricContext) -> dict[str, float]:
    """Equivariance to rotation (EQ-R), PSNR in dB, 50k samples."""
    return {"eqr50k": equivariance_psnr(ctx, "rot")}
