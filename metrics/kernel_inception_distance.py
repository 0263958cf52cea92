"""Kernel Inception distance (Binkowski et al. 2018, "Demystifying MMD GANs"), the unbiased estimator."""

from __future__ import annotations

import numpy as np

from metrics.detectors import INCEPTION
from metrics.features import MetricContext, generated_features, real_features
from metrics.registry import register_metric


def kernel_inception_distance(
    real: np.ndarray, gen: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0
) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets (Binkowski et al. 2018).

    k(x, y) = (x.y / d + 1)^3. For each subset, m = min(max_subset_size, n_real, n_gen) rows are drawn without
    replacement from each set, with `rng = np.random.default_rng(seed)`: first the real rows
    `rng.choice(n_real, m, replace=False)`, then the generated ones `rng.choice(n_gen, m, replace=False)`.
    MMD^2_u = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2.

    Args:
        real: Real features [n_real, d].
        gen:  Generated features [n_gen, d].

    Returns:
        The mean of MMD^2_u over the subsets.
    """
    real, gen = np.asarray(real, dtype=np.float64), np.asarray(gen, dtype=np.float64)
    d = real.shape[1]
    m = min(max_subset_size, len(real), len(gen))
    assert m >= 2, "KID needs at least two real and two generated feature vectors"
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = gen[rng.choice(len(gen), m, replace=False)]
        k_xx = (x @ x.T / d + 1) ** 3  # [m, m]
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        total += within - 2 * k_xy.sum() / (m * m)
    return float(total / num_subsets)


def compute_kid(ctx: MetricContext) -> float:
    """KID between the context's generated and real images, from Inception pool features."""
    real = real_features(ctx, INCEPTION, keep="features", max_items=ctx.max_real, return_features=True)
    gen = generated_features(ctx, INCEPTION, keep="features", num_items=ctx.num_gen, return_features=True)
    return kernel_inception_distance(real["features"], gen["features"], seed=ctx.seed)


@register_metric(num_gen=50_000, max_real=None, detectors=(INCEPTION,))
def kid50k_full(ctx: MetricContext) -> dict[str, float]:
    """KID of 50k generated images against the whole dataset."""
    return {"kid50k_full": compute_kid(ctx)}


@register_metric(num_gen=50_000, max_real=50_000, detectors=(INCEPTION,))
def kid50k(ctx: MetricContext) -> dict[str, float]:
    """KID of 50k generated images against 50k real images."""
    return {"kid50k": compute_kid(ctx)}
