"""Named scalar statistics: report values anywhere, collect their mean and std over an interval, across ranks.

Code deep inside the loss calls `report('Loss/G/loss', loss)`; the training loop owns a `Collector` and calls
`update()` once per tick, which sums what every rank reported since the previous update. Reporting never
synchronizes with the GPU: moments accumulate in float64 on the value's own device until `update()`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import torch

from dnnlib import EasyDict

from . import distributed

# Each statistic is kept as three cumulative moments: [count, sum, sum of squares].
_NUM_MOMENTS = 3


class StatsRecorder:
    """Cumulative moments of every reported name, per device. Collectors read them; nothing is ever reset."""

    def __init__(self) -> None:
        self._moments: dict[str, dict[torch.device, torch.Tensor]] = {}

    def report(self, name: str, value: float | np.ndarray | torch.Tensor) -> float | np.ndarray | torch.Tensor:
        """Add every element of `value` to the statistic `name`; returns `value` so it can be used inline."""
        elems = torch.as_tensor(value).detach().flatten().to(torch.float64)
        if elems.numel() == 0:
            return value
        count = torch.full((), elems.numel(), dtype=torch.float64, device=elems.device)
        moments = torch.stack([count, elems.sum(), elems.square().sum()])  # [3]
        per_device = self._moments.setdefault(name, {})
        if elems.device in per_device:
            per_device[elems.device].add_(moments)
        else:
            per_device[elems.device] = moments
        return value

    def names(self) -> list[str]:
        """Every name reported so far in this process."""
        return list(self._moments)

    def snapshot(self) -> dict[str, dict[torch.device, torch.Tensor]]:
        """A copy of every cumulative moment, for `restore` (on the moments' devices: no synchronization)."""
        return _copy_moments(self._moments)

    def restore(self, saved: dict[str, dict[torch.device, torch.Tensor]]) -> None:
        """Forget every report made since `saved = snapshot()`: a computation that failed and is redone is counted
        once (--batch-gpu=auto after running out of memory)."""
        self._moments = _copy_moments(saved)

    def cumulative(self, name: str) -> torch.Tensor:
        """The cumulative [count, sum, sum of squares] of `name` on the CPU (zeros if never reported)."""
        total = torch.zeros(_NUM_MOMENTS, dtype=torch.float64)
        for moments in self._moments.get(name, {}).values():
            total += moments.cpu()
        return total


def _copy_moments(moments: dict[str, dict[torch.device, torch.Tensor]]) -> dict[str, dict[torch.device, torch.Tensor]]:
    """A copy of a recorder's moments, tensor by tensor."""
    return {name: {device: m.clone() for device, m in per_device.items()} for name, per_device in moments.items()}


# The recorder that `report` writes to. A single instance is what lets the loss report without being handed
# an object; tests and tools that need isolation create their own StatsRecorder and Collector.
default_recorder = StatsRecorder()


def report(name: str, value: float | np.ndarray | torch.Tensor) -> float | np.ndarray | torch.Tensor:
    """Report a scalar or every element of a tensor under `name` (all ranks); returns `value` unchanged."""
    return default_recorder.report(name, value)


def report0(name: str, value: float | np.ndarray | torch.Tensor) -> float | np.ndarray | torch.Tensor:
    """Report from rank 0 only: for values every rank computes identically, such as timings of the tick."""
    if distributed.is_main():
        default_recorder.report(name, value)
    return value


class Collector:
    """Mean, std and count of the statistics whose names match `regex`, over the interval between updates."""

    def __init__(self, regex: str = ".*", keep_previous: bool = True, recorder: StatsRecorder | None = None):
        """
        Args:
            regex:         Collect names that match this regular expression in full.
            keep_previous: Keep the last value of a name that got no reports in the latest interval; False
                           drops it from `names()` and `as_dict()` until it is reported again.
            recorder:      Where to read from; None means the module's `default_recorder`.
        """
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._recorder = recorder if recorder is not None else default_recorder
        # Cumulative moments at the previous update; the first interval starts now, so reports made before this
        # collector existed (say, by an earlier run in the same process) are not counted.
        self._seen: dict[str, torch.Tensor] = {
            name: self._recorder.cumulative(name) for name in self._recorder.names() if self._regex.fullmatch(name)
        }
        self._interval: dict[str, torch.Tensor] = {}  # Moments of the latest interval, summed over ranks.

    def update(self) -> None:
        """Close the interval: sum every rank's reports since the previous update. Collective: call on all ranks."""
        local_names = [name for name in self._recorder.names() if self._regex.fullmatch(name)]
        names = sorted(_union_over_ranks(local_names))
        deltas = torch.zeros(len(names), _NUM_MOMENTS, dtype=torch.float64)  # [names, 3]
        for i, name in enumerate(names):
            cumulative = self._recorder.cumulative(name)
            deltas[i] = cumulative - self._seen.get(name, torch.zeros_like(cumulative))
            self._seen[name] = cumulative
        deltas = _sum_over_ranks(deltas)

        if not self._keep_previous:
            self._interval = {}
        for name, moments in zip(names, deltas, strict=True):
            if moments[0] > 0:
                self._interval[name] = moments

    def names(self) -> list[str]:
        """Names with a value after the latest update, sorted."""
        return sorted(self._interval)

    def num(self, name: str) -> int:
        """How many values were reported under `name` in the latest interval (0 if none)."""
        moments = self._interval.get(name)
        return 0 if moments is None else int(moments[0])

    def mean(self, name: str) -> float:
        """The mean of `name` over the latest interval (NaN if nothing was reported)."""
        moments = self._interval.get(name)
        if moments is None:
            return float("nan")
        return float(moments[1] / moments[0])

    def std(self, name: str) -> float:
        """The population standard deviation of `name` over the latest interval (NaN if nothing was reported)."""
        moments = self._interval.get(name)
        if moments is None:
            return float("nan")
        mean = moments[1] / moments[0]
        variance = moments[2] / moments[0] - mean.square()
        return float(variance.clamp(min=0).sqrt())

    def as_dict(self) -> dict[str, EasyDict]:
        """Every collected name mapped to EasyDict(num, mean, std), ready for `stats.jsonl`."""
        return {name: EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name)) for name in self.names()}

    def __getitem__(self, name: str) -> float:
        """`collector['Loss/G/loss']` is the mean."""
        return self.mean(name)


def _union_over_ranks(names: Iterable[str]) -> set[str]:
    """All names any rank has reported, so every rank reduces the same rows even if some saw no values."""
    names = set(names)
    if not distributed.is_distributed():
        return names
    return set().union(*distributed.all_gather_object(names))


def _sum_over_ranks(moments: torch.Tensor) -> torch.Tensor:
    """All-reduce a CPU float64 tensor by summation, on the device the process group's backend needs."""
    if not distributed.is_distributed():
        return moments
    reduced = moments.to(distributed.collective_device(), copy=True)  # A copy: the caller's moments stay local.
    return distributed.all_reduce_sum(reduced).cpu()
