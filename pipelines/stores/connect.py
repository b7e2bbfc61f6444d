"""The real backends of each store, built from settings (what processes use in production)."""

from __future__ import annotations

from pipelines.live_registry import LiveRegistry
from pipelines.result_cache import ResultCache
from pipelines.settings import BlazeSettings
from pipelines.stores.cache_index_redis import RedisCacheIndex
from pipelines.stores.deadletters_kafka import KafkaDeadLetters
from pipelines.stores.events_kafka import KafkaStatusEvents
from pipelines.stores.results_s3 import S3ResultStore
from pipelines.stores.status_redis import RedisStatusStore
from pipelines.stores.versions_redis import RedisVersionStore


def status_store(settings: BlazeSettings) -> RedisStatusStore:
    """The Redis store of these settings, publishing changes to the status topic if enabled."""
    events = KafkaStatusEvents(settings) if settings.kafka.status_events else None
    return RedisStatusStore(settings, events=events)


def result_store(settings: BlazeSettings) -> S3ResultStore:
    return S3ResultStore(settings)


def status_events(settings: BlazeSettings) -> KafkaStatusEvents:
    return KafkaStatusEvents(settings)


def dead_letters(settings: BlazeSettings) -> KafkaDeadLetters:
    return KafkaDeadLetters(settings)


def result_cache(
    settings: BlazeSettings, results: S3ResultStore, *, memory: bool = False
) -> ResultCache:
    """The result cache over Redis and ``results``; ``memory`` adds the in-process tier."""
    return ResultCache(settings, RedisCacheIndex(settings), results, memory=memory)


def live_registry(settings: BlazeSettings) -> LiveRegistry:
    """The registry shared through Redis (versions, aliases, rollout), seeded from the file."""
    return LiveRegistry(settings, RedisVersionStore(settings))
