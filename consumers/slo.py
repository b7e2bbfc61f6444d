"""Batch limits from a latency target: the largest batch the engine finishes in time.

A model with ``max_latency_s`` in the registry gets no fixed window. Workers report the
seconds each batch took by its size, from claim to results written
(``pipelines.fleet.BatchTimes``); the consumer fits ``seconds(b) = fixed + per_job * b``
to those reports and gives each new batch:

- a window of a third of the target: a partial batch leaves by then at the latest;
- the size: the largest ``b`` (at most the model's ``max_batch_size``, its memory ceiling)
  with ``window + 2 * seconds(b) <= max_latency_s``, so that a job which waited the window and
  then a batch of that size running ahead of it still finishes in time; under a backlog
  batches fill to it at once. An engine too slow for that gets batches of one and whatever
  of the target two calls leave as its window.

The batches are eager (``consumers.batching``): one leaves as soon as a worker queue for it
is empty, however fast jobs join it. Under light load a job leaves at once; as load grows,
batches grow with it while the worker is busy, up to the size above. Until a size was
measured the model runs with its ceiling and half the target as its window; the first
batches are its measurements.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis

log = logging.getLogger(__name__)

MIN_WAIT_S = 0.001


class TimesSource(Protocol):
    def read(self, models: Sequence[str]) -> dict[str, dict[int, float]]: ...


@dataclass(frozen=True)
class Fit:
    """``seconds(b) = fixed + per_job * b``, fitted to measured (size, seconds) points."""

    fixed: float
    per_job: float

    def seconds(self, size: int) -> float:
        return self.fixed + self.per_job * size

    @classmethod
    def of(cls, points: dict[int, float]) -> Fit | None:
        """Least squares over the points; one size alone is taken as all per job (the
        cautious reading for larger batches). None without points."""
        if not points:
            return None
        if len(points) == 1:
            (size, secs) = next(iter(points.items()))
            return cls(0.0, secs / max(1, size))
        n = len(points)
        mx = sum(points) / n
        my = sum(points.values()) / n
        var = sum((x - mx) ** 2 for x in points)
        slope = sum((x - mx) * (y - my) for x, y in points.items()) / var
        slope = max(slope, 0.0)
        return cls(max(0.0, my - slope * mx), slope)


def slo_limits(fit: Fit | None, target_s: float, ceiling: int) -> tuple[int, float]:
    """(max size, max wait) for a batch under ``target_s`` (see the module docstring)."""
    if fit is None:
        return ceiling, max(MIN_WAIT_S, target_s / 2)
    window = target_s / 3
    if window + 2 * fit.seconds(1) > target_s:  # too slow for a window: one job, at once
        return 1, max(MIN_WAIT_S, target_s - 2 * fit.seconds(1))
    size = 1
    lo, hi = 2, ceiling
    while lo <= hi:  # seconds(b) grows with b: the largest b meeting the target
        mid = (lo + hi) // 2
        if window + 2 * fit.seconds(mid) <= target_s:
            size, lo = mid, mid + 1
        else:
            hi = mid - 1
    return size, window


class SloSizer:
    """Batch limits of models with a latency target, from the fleet's measured batch times.

    Reads ``times`` at most every ``refresh_s`` seconds; a Redis error keeps the last fit.
    """

    def __init__(
        self,
        times: TimesSource,
        refresh_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.times = times
        self.refresh_s = refresh_s
        self.clock = clock
        self.fits: dict[str, Fit | None] = {}
        self._read_at: dict[str, float] = {}

    def limits(self, model: str, target_s: float, ceiling: int) -> tuple[int, float]:
        now = self.clock()
        if now - self._read_at.get(model, -1e18) >= self.refresh_s:
            self._read_at[model] = now
            try:
                self.fits[model] = Fit.of(self.times.read([model]).get(model, {}))
            except (redis.RedisError, OSError) as exc:
                log.warning("batch times of %s not read (%s); using the last fit", model, exc)
        return slo_limits(self.fits.get(model), target_s, ceiling)
