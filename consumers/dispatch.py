"""Dispatch: hand a batch to a worker queue by Celery task name (no import of ``engines``)."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from celery import Celery
from kombu.exceptions import OperationalError

from pipelines.errors import ConfigError, ServiceUnavailable
from pipelines.settings import BlazeSettings
from pipelines.tasks import RUN_BATCH, celery_app

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Sends one batch to one queue; returns only once the broker holds it durably."""

    def dispatch(self, queue: str, payload: dict[str, Any]) -> None: ...


class RoundRobinRouter:
    """Chooses the device queue for an engine kind, cycling through the devices that serve it."""

    def __init__(self, settings: BlazeSettings, devices: Sequence[str]) -> None:
        if not devices:
            raise ConfigError("at least one device is needed to route batches to")
        self._queues = {
            "llm": itertools.cycle([settings.queue("llm", d) for d in devices]),
        }

    def queue_for(self, kind: str) -> str:
        try:
            return next(self._queues[kind])
        except KeyError:
            raise ConfigError(f"no worker queue serves job kind {kind!r}") from None


@dataclass
class MemoryDispatcher:
    """Keeps dispatched batches in ``sent`` for tests to inspect."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def dispatch(self, queue: str, payload: dict[str, Any]) -> None:
        self.sent.append((queue, payload))


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
