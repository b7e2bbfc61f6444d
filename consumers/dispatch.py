"""Dispatch: pick a worker queue for a batch and hand it over by Celery task name.

The consumer never imports ``engines``: a batch is a ``blaze.run_batch`` task on the queue
``{namespace}.{kind}.{device}``. How many batches wait in a queue is read from the broker itself
(no counters that could drift after a crash) and drives both routing and backpressure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from pipelines.errors import ConfigError, ServiceUnavailable
from pipelines.registry import Registry
from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import redis_client
from pipelines.tasks import RUN_BATCH, celery_app, celery_priority

log = logging.getLogger(__name__)

Strategy = Literal["round_robin", "least_outstanding"]


class Dispatcher(Protocol):
    """Sends one batch to one queue; returns only once the broker holds it durably."""

    def dispatch(self, queue: str, payload: dict[str, Any]) -> None: ...


class QueueDepth(Protocol):
    """How many batches wait in a worker queue (not yet taken by a worker)."""

    def depth(self, queues: Sequence[str]) -> dict[str, int]: ...


@dataclass
class MemoryDispatcher:
    """Keeps dispatched batches in ``sent``; its ``waiting`` counts double as queue depths."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    waiting: dict[str, int] = field(default_factory=dict)

    def dispatch(self, queue: str, payload: dict[str, Any]) -> None:
        self.sent.append((queue, payload))
        self.waiting[queue] = self.waiting.get(queue, 0) + 1

    def depth(self, queues: Sequence[str]) -> dict[str, int]:
        return {q: self.waiting.get(q, 0) for q in queues}


class RedisQueueDepth:
    """Queue lengths straight from the Celery broker (kombu keeps one list per priority step)."""

    _PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

    def __init__(self, settings: BlazeSettings) -> None:
        self.url = settings.redis_url
        self.client = redis_client(settings, timeout_s=None)

    def depth(self, queues: Sequence[str]) -> dict[str, int]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for q in queues:
                for suffix in self._PRIORITY_SUFFIXES:
                    pipe.llen(q + suffix)
            counts = pipe.execute()
        except redis.ConnectionError as exc:
            raise ServiceUnavailable("Redis", self.url, str(exc)[:200]) from None
        n = len(self._PRIORITY_SUFFIXES)
        return {q: sum(counts[i * n : (i + 1) * n]) for i, q in enumerate(queues)}


class Router:
    """Chooses the worker queue for a batch among the devices that serve its model.

    Args:
        settings: Blaze settings (queue names).
        registry: Which devices serve which model.
        depth: Reads how many batches wait per queue.
        strategy: ``least_outstanding`` (fewest waiting batches) or ``round_robin``.
        max_queued: A queue holding this many batches takes no more (backpressure).
        only_devices: Route only to these devices (e.g. what ``blaze consume --device`` names).
    """

    def __init__(
        self,
        settings: BlazeSettings,
        registry: Registry,
        depth: QueueDepth,
        strategy: Strategy = "least_outstanding",
        max_queued: int | None = None,
        only_devices: Sequence[str] | None = None,
    ) -> None:
        if strategy not in ("round_robin", "least_outstanding"):
            raise ConfigError(f"unknown routing strategy {strategy!r}")
        self.settings = settings
        self.registry = registry
        self.depth = depth
        self.strategy = strategy
        self.max_queued = max_queued or settings.batch.max_queued_batches
        self.only = set(only_devices) if only_devices else None
        self._turn: dict[str, int] = {}

    def queues_for(self, kind: str, model: str) -> list[str]:
        spec = self.registry.get(model)
        devices = spec.devices if spec else ["cpu"]
        if self.only is not None:
            devices = [d for d in devices if d in self.only]
        return [self.settings.queue(kind, d) for d in devices]

    def all_queues(self) -> list[str]:
        """Every queue this router may send to, for every model of the registry."""
        queues = {
            q
            for name in self.registry.names()
            for q in self.queues_for(self.registry.specs[name].kind, name)
        }
        return sorted(queues)

    def has_empty_queue(self, kind: str, model: str) -> bool:
        """Whether a queue for this model holds no waiting batch (a batch sent now starts as
        soon as a worker of that queue is free; at low load, at once)."""
        queues = self.queues_for(kind, model)
        return bool(queues) and min(self.depth.depth(queues).values()) == 0

    def choose(self, kind: str, model: str) -> str | None:
        """The queue for the next batch, or None when every candidate is full."""
        queues = self.queues_for(kind, model)
        if not queues:
            return None
        depths = self.depth.depth(queues)
        open_queues = [q for q in queues if depths[q] < self.max_queued]
        if not open_queues:
            return None
        if self.strategy == "least_outstanding":
            return min(open_queues, key=lambda q: (depths[q], queues.index(q)))
        key = f"{kind}/{model}"
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        return open_queues[turn % len(open_queues)]


class CeleryDispatcher:
    """Publishes ``blaze.run_batch`` tasks on the Redis broker, retrying a lost connection."""

    def __init__(self, settings: BlazeSettings, app: Celery | None = None, retry_for_s: float = 60):
        self.settings = settings
        self.app = app or celery_app(settings)
        self.retry_for_s = retry_for_s

    def dispatch(self, queue: str, payload: dict[str, Any]) -> None:
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.2
        while True:
            try:
                self.app.send_task(
                    RUN_BATCH,
                    args=[payload],
                    queue=queue,
                    routing_key=queue,
                    priority=celery_priority(int(payload.get("priority", 5))),
                    retry=True,
                    retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5},
                )
                return
            except OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise ServiceUnavailable(
                        "Redis (Celery broker)", self.settings.redis_url, str(exc)[:200]
                    ) from None
                log.warning("dispatch to %s failed (%s); retrying in %.1fs", queue, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
