"""Fréchet Inception distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule")."""

from __future__ import annotations

import numpy as np
import scipy.linalg

from metrics.detectors import INCEPTION
from metrics.features import MetricContext, generated_features, real_features
from metrics.registry import register_metric


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians N(mu1, cov1) and N(mu2, cov2).

    d^2 = |mu1 - mu2|^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))  (Heusel et al. 2017, Eq. 6).

    Args:
        mu1, mu2:   Means [D].
        cov1, cov2: Covariances [D, D].

    Returns:
        The squared Fréchet distance (what is reported as FID).
    """
    mu1, mu2, cov1, cov2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, cov1, cov2))
    # The product of two covariances is not symmetric, and rounding can give its square root a tiny imaginary
    # part; the trace of the exact root is real.
    sqrt_product = scipy.linalg.sqrtm(cov1 @ cov2)
    return float(np.square(mu1 - mu2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(sqrt_product).real)


def compute_fid(ctx: MetricContext) -> float:
    """FID between the context's generated images and its real images, from Inception pool features."""
    real = real_features(ctx, INCEPTION, keep="moments", max_items=ctx.max_real, return_features=True)
    gen = generated_features(ctx, INCEPTION, keep="moments", num_items=ctx.num_gen, return_features=True)
    return frechet_distance(gen["mean"], gen["cov"], real["mean"], real["cov"])


@register_metric(num_gen=50_000, max_real=None, detectors=(INCEPTION,))
def fid50k_full(ctx: MetricContext) -> dict[str, float]:
    """FID of 50k generated images against the whole dataset."""
    return {"fid50k_full": compute_fid(ctx)}


@register_metric(num_gen=50_000, max_real=50_000, detectors=(INCEPTION,))
def fid50k(ctx: MetricContext) -> dict[str, float]:
    """FID of 50k generated images against 50k real images."""
    return {"fid50k": compute_fid(ctx)}
