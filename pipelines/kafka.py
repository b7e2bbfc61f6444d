"""kafka-python clients built from settings, with errors that name the broker address."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, NoBrokersAvailable, TopicAlreadyExistsError

from pipelines.errors import ServiceUnavailable
from pipelines.settings import BlazeSettings

log = logging.getLogger(__name__)


def unavailable(settings: BlazeSettings, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        "Kafka", settings.kafka_bootstrap, f"{type(exc).__name__}: {exc}"[:200]
    )


def ensure_topics(settings: BlazeSettings, topics: Iterable[str]) -> None:
    """Create the topics that are missing (idempotent; existing ones are left as they are)."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=f"{settings.namespace}-admin",
            request_timeout_ms=15_000,
            **settings.kafka.client_config(),
        )
    except (NoBrokersAvailable, KafkaError, OSError) as exc:
        raise unavailable(settings, exc) from None
    try:
        for topic in topics:
            # One request per topic: a batch request fails as a whole when one exists.
            new = NewTopic(topic, settings.kafka.partitions, settings.kafka.replication_factor)
            try:
                admin.create_topics([new])
                log.info("created topic %s", topic)
            except TopicAlreadyExistsError:
                pass
    except KafkaError as exc:
        raise unavailable(settings, exc) from None
    finally:
        admin.close()


def make_producer(settings: BlazeSettings, **overrides: Any) -> KafkaProducer:
    """A producer that only reports success once every in-sync replica has the message."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "retries": 10,
        "linger_ms": 5,
        # a burst goes as one record batch per partition, not one per 16 KiB (the default):
        # the embedded broker writes one S3 object per batch it is sent
        "batch_size": 1 << 19,  # half of a default broker's message.max.bytes
        "max_in_flight_requests_per_connection": 1,
        "request_timeout_ms": 30_000,
        "client_id": f"{settings.namespace}-producer",
        **settings.kafka.client_config(),
    }
    cfg.update(overrides)
    try:
        return KafkaProducer(**cfg)
    except (NoBrokersAvailable, KafkaError, OSError) as exc:
        raise unavailable(settings, exc) from None


def read_from_start(
    settings: BlazeSettings, topic: str, *, follow: bool = False, idle_s: float = 2.0, name: str
) -> Iterator[Any]:
    """Every record of ``topic`` from its beginning, partition by partition as they come.

    Reads without a consumer group (nothing joined, nothing committed). Stops once the topic
    stayed quiet for ``idle_s`` (unless ``follow``): end offsets are not trusted, as some
    brokers (Tansu) under-report them. A topic that does not exist yields nothing.
    """
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=f"{settings.namespace}-{name}",
            enable_auto_commit=False,
            group_id=None,
            **settings.kafka.client_config(),
        )
    except (NoBrokersAvailable, KafkaError, OSError) as exc:
        raise unavailable(settings, exc) from None
    try:
        try:
            parts = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            if not parts:
                return
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
        except KafkaError as exc:
            raise unavailable(settings, exc) from None
        quiet_until = time.monotonic() + idle_s
        while follow or time.monotonic() < quiet_until:
            batch: dict[Any, list[Any]] = consumer.poll(timeout_ms=200)
            for recs in batch.values():
                if recs:
                    quiet_until = time.monotonic() + idle_s
                yield from recs
    finally:
        consumer.close(autocommit=False)
