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
from typing import Any, Protocol

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from pipelines.errors import ServiceUnavailable
from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import redis_client
from pipelines.tasks import RUN_BATCH, celery_app, celery_priority

log = logging.getLogger(__name__)


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
