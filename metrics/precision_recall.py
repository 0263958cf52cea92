"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing
generative models"), with VGG16 features and k = 3."""

from __future__ import annotations

import torch

from metrics.detectors import VGG16
from metrics.features import MetricContext, generated_features, real_features
from metrics.registry import register_metric
from torch_utils import distributed


def _rank_blocks(num_rows: int, block_size: int) -> list[slice]:
    """Row blocks of this rank: blocks rank, rank + world, ..."""
    starts = range(distributed.get_rank() * block_size, num_rows, distributed.get_world_size() * block_size)
    return [slice(start, min(start + block_size, num_rows)) for start in starts]


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [n, m] between rows of a [n, d] and b [m, d]."""
    d2 = a.square().sum(dim=1, keepdim=True) + b.square().sum(dim=1) - 2 * (a @ b.T)
    return d2.clamp(min=0)  # Rounding can make the distance of (near-)equal rows slightly negative.


def knn_radii(features: torch.Tensor, k: int, block_size: int) -> torch.Tensor:
    """Squared distance of every row to its k-th nearest neighbour within the set, itself excluded [n]."""
    radii = torch.zeros(len(features), dtype=features.dtype, device=features.device)
    for rows in _rank_blocks(len(features), block_size):
        # The row itself is at distance ~0 and is the smallest; the k-th other neighbour is the (k+1)-th value.
        radii[rows] = squared_distances(features[rows], features).kthvalue(k + 1, dim=1).values
    return distributed.all_reduce_sum(radii)


def fraction_inside(queries: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, block_size: int) -> float:
    """Fraction of `queries` that lie within the radius of at least one of `centers` (Eq. 1-2 of the paper)."""
    count = torch.zeros([], dtype=torch.float64, device=queries.device)
    for rows in _rank_blocks(len(queries), block_size):
        count += (squared_distances(queries[rows], centers) <= radii).any(dim=1).sum()
    return distributed.all_reduce_sum(count).item() / len(queries)


def precision_recall(real: torch.Tensor, gen: torch.Tensor, k: int = 3, block_size: int = 1024) -> tuple[float, float]:
    """Improved precision and recall of generated features against real ones.

    Each sample's neighbourhood is the ball reaching its k-th nearest neighbour in its own set. Precision is the
    fraction of generated samples inside at least one real ball; recall, of real samples inside at least one
    generated ball. Distances are computed `block_size` rows at a time (memory: block_size x n floats).

    Args:
        real: Real features [n_real, d], on the device to compute on.
        gen:  Generated features [n_gen, d].

    Returns:
        (precision, recall).
    """
    real_radii = knn_radii(real, k, block_size)
    gen_radii = knn_radii(gen, k, block_size)
    precision = fraction_inside(gen, real, real_radii, block_size)
    recall = fraction_inside(real, gen, gen_radii, block_size)
    return precision, recall


def compute_pr(ctx: MetricContext) -> tuple[float, float]:
    """Precision and recall of the context's generated images against its reals, with k = 3."""
    real = real_features(ctx, VGG16, keep="features", max_items=ctx.max_real, return_features=True)
    gen = generated_features(ctx, VGG16, keep="features", num_items=ctx.num_gen, return_features=True)
    real_features_t = torch.as_tensor(real["features"], dtype=torch.float32, device=ctx.device)
    gen_features_t = torch.as_tensor(gen["features"], dtype=torch.float32, device=ctx.device)
    return precision_recall(real_features_t, gen_features_t, k=3)


@register_metric(num_gen=50_000, max_real=None, detectors=(VGG16,), higher_is_better=True)
def pr50k3_full(ctx: MetricContext) -> dict[str, float]:
    """Precision and recall (k=3) of 50k generated images against the whole dataset."""
    precision, recall = compute_pr(ctx)
    return {"pr50k3_full_precision": precision, "pr50k3_full_recall": recall}


@register_metric(num_gen=50_000, max_real=50_000, detectors=(VGG16,), higher_is_better=True)
def pr50k3(ctx: MetricContext) -> dict[str, float]:
    """Precision and recall (k=3) of 50k generated images against 50k real images."""
    precision, recall = compute_pr(ctx)
    return {"pr50k3_precision": precision, "pr50k3_recall": recall}
