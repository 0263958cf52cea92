"""Perceptual path length in W (Karras et al. 2019, "A style-based generator architecture", Section 4.2; the
StyleGAN2 variant of Karras et al. 2020, Section 3.2: whole images, no crop)."""

from __future__ import annotations

import numpy as np
import torch

from metrics.detectors import VGG16
from metrics.features import (
    LatentSampler,
    MetricContext,
    advance,
    gather_rows,
    in_chunks,
    progress_bar,
    rank_items,
    split_batches,
)
from metrics.registry import register_metric

EPSILON = 1e-4  # Step along the interpolation path (Karras et al. 2019, Eq. 2).
LPIPS_MAX_RESOLUTION = 256  # Larger images are box-downsampled to this size before LPIPS.


def lpips_input(images: torch.Tensor) -> torch.Tensor:
    """Generator output [N, C, H, W] in about [-1, 1] -> float RGB in [0, 255], box-downsampled to <= 256 pixels."""
    images = (images + 1) * (255 / 2)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    if images.shape[2] > LPIPS_MAX_RESOLUTION:
        factor = images.shape[2] // LPIPS_MAX_RESOLUTION
        images = torch.nn.functional.avg_pool2d(images, kernel_size=factor, stride=factor)
    return images


def filtered_mean(values: np.ndarray, low_percentile: float = 1, high_percentile: float = 99) -> float:
    """Mean of the values between the given percentiles (inclusive), discarding outliers on both sides."""
    lo = np.percentile(values, low_percentile, method="lower")
    hi = np.percentile(values, high_percentile, method="higher")
    return float(values[(values >= lo) & (values <= hi)].mean())


def path_lengths(ctx: MetricContext, num_samples: int) -> np.ndarray:
    """LPIPS distances / eps^2 between images at w0 and at lerp(w0, w1, eps), for `num_samples` pairs [N]."""
    G, vgg = ctx.G, ctx.detector(VGG16)
    sample = LatentSampler(ctx)
    rows, positions = [], []
    with progress_bar(ctx, num_samples, "path samples") as bar:
        for chunk in split_batches(rank_items(num_samples), ctx.batch_size):
            z, c = sample(chunk, num_z=2)  # [n, 2, z_dim]: the two ends of the path
            with torch.no_grad():
                w0 = G.mapping(z[:, 0], c)  # [n, num_ws, w_dim]
                w1 = G.mapping(z[:, 1], c)
                # 'end' sampling: t = 0, so the path starts at w0 (linear interpolation in W).
                ws = torch.stack([w0, w0.lerp(w1, EPSILON)], dim=1).flatten(0, 1)  # [2n, num_ws, w_dim]
                images = lpips_input(in_chunks(lambda w: G.synthesis(w, noise_mode="const"), ws))
                features = in_chunks(lambda x: vgg(x, resize_images=False, return_lpips=True), images, chunk=16)
                features = features.unflatten(0, [-1, 2])  # [n, 2, dim]
                distance = (features[:, 0] - features[:, 1]).square().sum(dim=1) / EPSILON**2  # [n]
            rows.append(distance.to(torch.float64))
            positions.append(chunk)
            advance(bar, len(chunk))
    local = torch.cat(rows) if rows else torch.zeros([0], dtype=torch.float64, device=ctx.device)
    positions = np.concatenate(positions) if positions else np.zeros([0], dtype=np.int64)
    return gather_rows(local, positions, num_samples).cpu().numpy()


@register_metric(num_gen=50_000, uses_reals=False, detectors=(VGG16,))
def ppl2_wend(ctx: MetricContext) -> dict[str, float]:
    """Perceptual path length in W, endpoints, whole images, 50k samples."""
    return {"ppl2_wend": filtered_mean(path_lengths(ctx, ctx.num_gen))}
