"""Inception score (Salimans et al. 2016, "Improved techniques for training GANs", Section 4)."""

from __future__ import annotations

import numpy as np

from metrics.detectors import INCEPTION
from metrics.features import MetricContext, generated_features
from metrics.registry import MetricError, register_metric


def inception_score(probs: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over consecutive splits of the samples; mean and std over the splits.

    Args:
        probs:      Class probabilities p(y|x) [N, K] (the detector's softmax output); p(y) is their mean over
                    the split.
        num_splits: Number of equal consecutive splits (the last ones are one shorter when N is not divisible).

    Returns:
        (mean, standard deviation) of the per-split scores.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) < num_splits:
        raise MetricError(
            f"The Inception score over {num_splits} splits needs at least {num_splits} images, got {len(probs)}"
        )
    scores = []
    for split in np.array_split(probs, num_splits):
        marginal = split.mean(axis=0, keepdims=True)  # p(y) [1, K]
        # A probability that underflowed to 0 contributes 0 * log(0) = 0; the floor keeps that from becoming nan.
        kl = (split * (np.log(np.maximum(split, 1e-30)) - np.log(np.maximum(marginal, 1e-30)))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


@register_metric(num_gen=50_000, uses_reals=False, detectors=(INCEPTION,), higher_is_better=True)
def is50k(ctx: MetricContext) -> dict[str, float]:
    """Inception score of 50k generated images, 10 splits."""
    # The softmax over 1008 classes computed without the output bias, as the original TensorFlow implementation
    # computed the score.
    gen = generated_features(ctx, INCEPTION, keep="features", num_items=ctx.num_gen, no_output_bias=True)
    mean, std = inception_score(gen["features"], num_splits=10)
    return {"is50k_mean": mean, "is50k_std": std}
