"""Sliced Wasserstein distance between Laplacian-pyramid patches of real and generated images (Karras et al.
2018, "Progressive growing of GANs", Section 5 and Appendix D). Needs no downloaded network.

Protocol: 16384 images of each kind (or as many as the dataset has, if fewer, for both). Each image (uint8 RGB,
as the detectors see it, as floats) is decomposed into a Laplacian pyramid with the 5-tap binomial kernel
[1, 4, 6, 4, 1] / 16 (Burt and Adelson 1983; reflected borders) from full resolution down to 16x16 (a single
level when the images are 16x16 or smaller); the coarsest level is the Gaussian level itself. From every level,
128 random 7x7 patches per image become descriptors [3 * 7 * 7]. Each level's descriptors are normalized per
channel (mean and standard deviation over the set, real and generated separately). The distance per level is
the mean, over 4 repeats of 128 random unit directions, of the 1-D Wasserstein-1 distance between the projected
descriptor sets (mean absolute difference of the sorted projections), times 1e3. Reported: each level
(`swd_<resolution>`) and their average (`swd`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import tqdm

from metrics.features import (
    MetricContext,
    advance,
    cached_dataset_stats,
    gather_rows,
    generated_batches,
    progress_bar,
    real_batches,
    select_real_items,
)
from metrics.registry import register_metric
from torch_utils import distributed

NUM_IMAGES = 16384  # Images of each kind (2^14).
PATCH_SIZE = 7  # Side of a descriptor patch, in pixels.
PATCHES_PER_IMAGE = 128  # Random patches per image and level.
COARSEST_RESOLUTION = 16  # The pyramid stops at this resolution.
NUM_DIRECTIONS = 128  # Random projections per repeat (512 in all, as in the progressive GAN evaluation).
NUM_REPEATS = 4  # Repeats of the projections, averaged.
DIRECTION_CHUNK = 64  # Directions projected at once (memory: descriptors x chunk floats).


def _binomial_kernel(channels: int, device: torch.device) -> torch.Tensor:
    """The 5x5 binomial low-pass [channels, 1, 5, 5] for depthwise conv2d."""
    taps = torch.tensor([1, 4, 6, 4, 1], dtype=torch.float32, device=device) / 16
    return (taps[:, None] * taps[None, :]).expand(channels, 1, 5, 5).contiguous()


def _blur(images: torch.Tensor, gain: float = 1) -> torch.Tensor:
    """Binomial low-pass of images [N, C, H, W] with reflected borders."""
    padded = torch.nn.functional.pad(images, [2, 2, 2, 2], mode="reflect")
    kernel = _binomial_kernel(images.shape[1], images.device) * gain
    return torch.nn.functional.conv2d(padded, kernel, groups=images.shape[1])


def pyramid_down(images: torch.Tensor) -> torch.Tensor:
    """Blur and keep every second pixel: [N, C, H, W] -> [N, C, H/2, W/2]."""
    return _blur(images)[:, :, ::2, ::2]


def pyramid_up(images: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels and interpolate with the blur kernel: [N, C, H, W] -> [N, C, 2H, 2W]."""
    n, c, h, w = images.shape
    upsampled = images.new_zeros([n, c, 2 * h, 2 * w])
    upsampled[:, :, ::2, ::2] = images
    return _blur(upsampled, gain=4)  # Three of four samples are zero: gain 4 keeps the mean.


def pyramid_resolutions(resolution: int) -> list[int]:
    """Resolutions of the pyramid levels of images of side `resolution`: R, R/2, ..., 16."""
    resolutions = [resolution]
    while resolutions[-1] > COARSEST_RESOLUTION:
        resolutions.append(resolutions[-1] // 2)
    return resolutions


def laplacian_pyramid(images: torch.Tensor) -> list[torch.Tensor]:
    """Band-pass levels of images [N, C, R, R], full resolution first, down to 16x16 (a Gaussian level)."""
    levels = []
    while images.shape[2] > COARSEST_RESOLUTION:
        smaller = pyramid_down(images)
        levels.append(images - pyramid_up(smaller))
        images = smaller
    levels.append(images)
    return levels


def sample_patches(level: torch.Tensor, items: np.ndarray, level_index: int, seed: int) -> torch.Tensor:
    """Random 7x7 patches of one pyramid level, 128 per image: [N, C, H, W] -> [N, 128, C * 49].

    Image `items[i]` takes its positions from a seed of (seed, item, level), so they do not depend on batching.
    """
    n, c, h, w = level.shape
    positions = np.stack(
        [
            np.random.default_rng([seed, int(item), level_index]).integers(
                0, [h - PATCH_SIZE + 1, w - PATCH_SIZE + 1], size=[PATCHES_PER_IMAGE, 2]
            )
            for item in items
        ]
    )  # [N, 128, 2] as (y, x) of the top-left corner
    positions = torch.from_numpy(positions).to(level.device)
    offsets = torch.arange(PATCH_SIZE, device=level.device)
    ys = (positions[:, :, 0, None] + offsets)[:, :, :, None]  # [N, 128, 7, 1]
    xs = (positions[:, :, 1, None] + offsets)[:, :, None, :]  # [N, 128, 1, 7]
    batch = torch.arange(n, device=level.device)[:, None, None, None]
    patches = level.permute(0, 2, 3, 1)[batch, ys, xs]  # [N, 128, 7, 7, C]
    return patches.permute(0, 1, 4, 2, 3).reshape(n, PATCHES_PER_IMAGE, c * PATCH_SIZE * PATCH_SIZE)


def pyramid_descriptors(ctx: MetricContext, batches: Iterator[tuple], total: int, desc: str) -> dict[str, np.ndarray]:
    """Patch descriptors of every pyramid level of an image stream: {'level<i>': float16 [total, 128, 3 * 49]}.

    float16 halves the memory of the 2M descriptors per level; they are differences of blurred uint8 pixel
    values, so the relative rounding error (< 0.1 percent) is far below the sampling noise of the metric.
    """
    num_levels = len(pyramid_resolutions(ctx.G.img_resolution))
    width = 3 * PATCH_SIZE * PATCH_SIZE  # The streams give RGB images.
    rows: list[list[torch.Tensor]] = [[] for _ in range(num_levels)]
    positions = []
    with progress_bar(ctx, total, desc) as bar:
        for chunk, images in batches:
            for index, level in enumerate(laplacian_pyramid(images.to(torch.float32))):
                rows[index].append(sample_patches(level, chunk, index, ctx.seed).to(torch.float16))
            positions.append(chunk)
            advance(bar, len(chunk))
    positions = np.concatenate(positions) if positions else np.zeros([0], dtype=np.int64)
    empty = torch.zeros([0, PATCHES_PER_IMAGE, width], dtype=torch.float16, device=ctx.device)
    return {
        f"level{index}": gather_rows(torch.cat(level_rows) if level_rows else empty, positions, total).cpu().numpy()
        for index, level_rows in enumerate(rows)
    }


def normalize_per_channel(descriptors: torch.Tensor, channels: int) -> torch.Tensor:
    """Standardize descriptors [M, C * 49] per color channel, over all descriptors and patch pixels."""
    x = descriptors.to(torch.float32).reshape(len(descriptors), channels, -1)
    mean = x.mean(dim=[0, 2], keepdim=True)
    std = x.std(dim=[0, 2], keepdim=True).clamp(min=1e-8)
    return ((x - mean) / std).reshape(len(descriptors), -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, seed: int) -> float:
    """Mean 1-D Wasserstein-1 distance of a [M, D] and b [M, D] over 4 x 128 random unit projections.

    The directions are split over ranks (every rank holds both sets) and the sums combined.
    """
    assert a.shape == b.shape, f"sets of equal size needed, got {list(a.shape)} and {list(b.shape)}"
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros([], dtype=torch.float64, device=a.device)
    chunk_index = 0
    for _repeat in range(NUM_REPEATS):
        directions = torch.randn([a.shape[1], NUM_DIRECTIONS], generator=generator)
        directions = (directions / directions.norm(dim=0, keepdim=True)).to(a.device)  # [D, 128] unit columns
        for start in range(0, NUM_DIRECTIONS, DIRECTION_CHUNK):
            if chunk_index % distributed.get_world_size() == distributed.get_rank():
                chunk = directions[:, start : start + DIRECTION_CHUNK]
                # Sorting along the last, contiguous axis is about twice as fast as along the first.
                projected_a = (chunk.T @ a.T).sort(dim=1).values  # [chunk, M]
                projected_b = (chunk.T @ b.T).sort(dim=1).values
                total += (projected_a - projected_b).abs().mean(dim=1).sum(dtype=torch.float64)
            chunk_index += 1
    return distributed.all_reduce_sum(total).item() / (NUM_REPEATS * NUM_DIRECTIONS)


@register_metric(num_gen=NUM_IMAGES, max_real=NUM_IMAGES)
def swd(ctx: MetricContext) -> dict[str, float]:
    """Sliced Wasserstein distance (x1e3) of Laplacian pyramid patches, 16k real and 16k generated images."""
    with ctx.open_dataset() as dataset:
        num_real = len(dataset) if ctx.max_real is None else min(ctx.max_real, len(dataset))
        num_images = min(num_real, ctx.num_gen)  # Equal sets: the 1-D distances compare sorted projections.
        ctx.num_gen_used = num_images
        indices = select_real_items(ctx, len(dataset), num_images)
        params = dict(patch=PATCH_SIZE, patches=PATCHES_PER_IMAGE, coarsest=COARSEST_RESOLUTION, kernel="binomial5")
        real = cached_dataset_stats(
            ctx,
            kind="swd-descriptors",
            max_items=num_images,
            params=params,
            compute=lambda: pyramid_descriptors(ctx, real_batches(ctx, dataset, indices), num_images, "real images"),
        )
    gen = pyramid_descriptors(ctx, generated_batches(ctx, num_images), num_images, "generated images")
    per_level = {}
    resolutions = pyramid_resolutions(ctx.G.img_resolution)
    # The distances take minutes for 16k images on a CPU: show them as a stage of their own.
    bar = tqdm.tqdm(resolutions, desc="distances", unit="level", disable=not (ctx.progress and distributed.is_main()))
    for index, resolution in enumerate(bar):
        real_level = torch.as_tensor(real[f"level{index}"], device=ctx.device).flatten(0, 1)  # [M, 3 * 49]
        gen_level = torch.as_tensor(gen[f"level{index}"], device=ctx.device).flatten(0, 1)
        distance = sliced_wasserstein(
            normalize_per_channel(real_level, 3), normalize_per_channel(gen_level, 3), seed=ctx.seed * 1000 + index
        )
        per_level[f"swd_{resolution}"] = distance * 1e3
    return {"swd": float(np.mean(list(per_level.values()))), **per_level}
