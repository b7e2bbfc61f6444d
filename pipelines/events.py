"""The status event topic: every job state change as one Kafka message, for systems that react.

Topic ``{namespace}.status``, key = job id (so one job's events stay in one partition, in
order), value = JSON ``{"job_id", "state", "at", "reason", "group"}``. Events are published
after Redis accepted the change and are best effort: Redis (and the bucket, for results) stays
the record; a broker outage is logged and never fails a batch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from pipelines.errors import ServiceUnavailable
from pipelines.kafka import ensure_topics, make_producer, unavailable
from pipelines.settings import BlazeSettings
from pipelines.status import JobState, StatusUpdate

log = logging.getLogger(__name__)
RETRY_CONNECT_S = 30.0


@dataclass(frozen=True)
class StatusEvent:
    """One state change as read from the topic."""

    job_id: str
    state: JobState
    at: float
    reason: str = ""
    group: str = ""


def encode(up: StatusUpdate) -> bytes:
    doc = {"job_id": up.job_id, "state": up.state.value, "at": up.at, "reason": up.reason}
    if up.group:
        doc["group"] = up.group
    return json.dumps(doc, separators=(",", ":")).encode()


class KafkaStatusEvents:
    """An ``EventSink`` that publishes to the status topic without waiting for the broker."""

    def __init__(self, settings: BlazeSettings) -> None:
        self.settings = settings
        self.topic = settings.status_topic
        self._producer: KafkaProducer | None = None
        self._down_until = 0.0
        self._lock = threading.Lock()
        self.failed = 0

    def _get(self) -> KafkaProducer | None:
        if self._producer is None and time.monotonic() >= self._down_until:
            try:
                ensure_topics(self.settings, [self.topic])
                self._producer = make_producer(
                    self.settings,
                    acks=1,
                    linger_ms=20,
                    max_in_flight_requests_per_connection=5,
                    client_id=f"{self.settings.namespace}-status-events",
                )
            except ServiceUnavailable as exc:
                log.warning("status events off for %.0f s: %s", RETRY_CONNECT_S, exc)
                self._down_until = time.monotonic() + RETRY_CONNECT_S
        return self._producer

    def _failed(self, exc: Exception) -> None:
        self.failed += 1
        if self.failed == 1 or self.failed % 1000 == 0:
            log.warning("status event not published (%d so far): %s", self.failed, exc)

    def __call__(self, moved: Sequence[StatusUpdate]) -> None:
        with self._lock:
            producer = self._get()
            if producer is None:
                self.failed += len(moved)
                return
            for up in moved:
                try:
                    producer.send(self.topic, key=up.job_id.encode(), value=encode(up)).add_errback(
                        self._failed
                    )
                except KafkaError as exc:
                    self._failed(exc)

    def flush(self, timeout: float = 10) -> None:
        if self._producer is not None:
            self._producer.flush(timeout=timeout)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=10)
                self._producer = None


def read_status_events(
    settings: BlazeSettings, *, follow: bool = False, idle_s: float = 2.0
) -> Iterator[StatusEvent]:
    """Events on the status topic from the beginning; with ``follow``, wait for new ones.

    Reads every partition directly (no consumer group), so it never joins or disturbs one.
    Without ``follow`` it stops after ``idle_s`` without a new event.
    """
    topic = settings.status_topic
    ensure_topics(settings, [topic])
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=f"{settings.namespace}-status-reader",
            enable_auto_commit=False,
            **settings.kafka.client_config(),
        )
        parts = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
    except KafkaError as exc:
        raise unavailable(settings, exc) from None
    try:
        last = time.monotonic()
        while follow or time.monotonic() - last < idle_s:
            batch: dict[Any, list[Any]] = consumer.poll(timeout_ms=200)
            for recs in batch.values():
                for rec in recs:
                    last = time.monotonic()
                    doc = json.loads(rec.value)
                    yield StatusEvent(
                        doc["job_id"],
                        JobState(doc["state"]),
                        float(doc["at"]),
                        doc.get("reason", ""),
                        doc.get("group", ""),
                    )
    finally:
        consumer.close(autocommit=False)
