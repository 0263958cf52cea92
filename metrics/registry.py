"""The table of metrics. Each metric registers itself with `@register_metric`, so the CLI and train.py can list
them and check, before any work, what each one needs (detector files, a dataset, a StyleGAN3 generator)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metrics.detectors import DetectorSpec
    from metrics.features import MetricContext


class MetricError(ValueError):
    """A metric that cannot run as asked; the message says why and what to do."""


class UnknownMetricError(MetricError):
    """A metric name that is not in the registry; the message lists the registered ones."""


class IncompatibleNetworkError(MetricError):
    """A metric that does not apply to the given generator (e.g. equivariance of a StyleGAN2 network)."""


MetricFn = Callable[["MetricContext"], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One registered metric: the function that computes it and what the standard protocol needs."""

    name: str  # Registry key, also the file name of its log: metric-<name>.jsonl.
    fn: MetricFn  # Computes {result name: value} from a MetricContext.
    description: str  # One line, from the function's docstring.
    num_gen: int  # Generated images (or latent samples) of the standard protocol.
    max_real: int | None  # Real images of the standard protocol; None: the whole dataset.
    uses_reals: bool  # Whether the metric compares against the dataset (False: IS, PPL, equivariance).
    detectors: tuple[DetectorSpec, ...]  # Feature networks it loads; empty for SWD and equivariance.
    needs_input_transform: bool  # Needs `G.synthesis.set_input_transform` (StyleGAN3 equivariance metrics).
    higher_is_better: bool = False  # Direction of its first result (FID: lower; IS, precision, EQ PSNR: higher).


_METRICS: dict[str, MetricSpec] = {}


def register_metric(
    *,
    num_gen: int,
    max_real: int | None = None,
    uses_reals: bool = True,
    detectors: tuple[DetectorSpec, ...] = (),
    needs_input_transform: bool = False,
    higher_is_better: bool = False,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator that adds a metric function to the registry under the function's name.

    Args:
        num_gen:               Generated images (or latent samples) of the standard protocol.
        max_real:              Real images of the standard protocol; None: the whole dataset.
        uses_reals:            Whether the metric reads the dataset's images.
        detectors:             Feature networks the metric loads (checked for availability up front).
        needs_input_transform: Refuse generators without `synthesis.set_input_transform`.
        higher_is_better:      Whether a larger first result is better (best snapshot, early stopping).

    Returns:
        The decorator; it returns the function unchanged.
    """

    def decorator(fn: MetricFn) -> MetricFn:
        name = fn.__name__
        assert name not in _METRICS, f"metric {name} is registered twice"
        assert fn.__doc__, f"metric {name} needs a docstring: its first line is the metric's description"
        _METRICS[name] = MetricSpec(
            name=name,
            fn=fn,
            description=fn.__doc__.strip().splitlines()[0],
            num_gen=num_gen,
            max_real=max_real,
            uses_reals=uses_reals,
            detectors=tuple(detectors),
            needs_input_transform=needs_input_transform,
            higher_is_better=higher_is_better,
        )
        return fn

    return decorator


def list_metrics() -> list[str]:
    """Names of the registered metrics, sorted."""
    return sorted(_METRICS)


def get_metric(name: str) -> MetricSpec:
    """The registered metric `name`; an unknown name raises UnknownMetricError listing the valid ones."""
    if name not in _METRICS:
        raise UnknownMetricError(f"Unknown metric '{name}'; the registered metrics are: {', '.join(list_metrics())}")
    return _METRICS[name]


def has_input_transform(G: object) -> bool:
    """Whether G is a StyleGAN3-style generator whose input can be translated and rotated."""
    return callable(getattr(getattr(G, "synthesis", None), "set_input_transform", None))


def check_network(spec: MetricSpec, G: object) -> None:
    """Refuse a generator that the metric cannot measure, with a message instead of a stack trace."""
    if spec.needs_input_transform and not has_input_transform(G):
        synthesis = getattr(G, "synthesis", G)
        raise IncompatibleNetworkError(
            f"{spec.name} measures equivariance through the input transform of a StyleGAN3 generator "
            f"(G.synthesis.set_input_transform); this network "
            f"({type(synthesis).__module__}.{type(synthesis).__name__}) has none. Use it with --cfg=stylegan3-t or "
            f"stylegan3-r networks."
        )
