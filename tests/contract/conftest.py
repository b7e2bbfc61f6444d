"""Each store's contract, run against its memory backend and its real one on the embedded stack.

A test asks for a store fixture; it runs once per backend. The real backends use the session
stack (started on first use) and a fresh namespace per test, so the memory runs need no
services at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from pipelines.settings import BlazeSettings
from pipelines.stores.deadletters import DeadLetterStore
from pipelines.stores.deadletters_kafka import KafkaDeadLetters
from pipelines.stores.deadletters_memory import MemoryDeadLetters
from pipelines.stores.events import StatusEvents
from pipelines.stores.events_kafka import KafkaStatusEvents
from pipelines.stores.events_memory import MemoryStatusEvents
from pipelines.stores.results import ResultStore
from pipelines.stores.results_memory import MemoryResultStore
from pipelines.stores.results_s3 import S3ResultStore
from pipelines.stores.status import StatusStore, StatusUpdate
from pipelines.stores.status_memory import MemoryStatusStore
from pipelines.stores.status_redis import RedisStatusStore


def _real(request: pytest.FixtureRequest) -> BlazeSettings:
    settings: BlazeSettings = request.getfixturevalue("settings")
    return settings


class Recorder:
    """An event sink that keeps what it was given."""

    def __init__(self) -> None:
        self.moved: list[StatusUpdate] = []

    def __call__(self, moved: Sequence[StatusUpdate]) -> None:
        self.moved.extend(moved)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def redis_status(request: pytest.FixtureRequest, events: Recorder) -> RedisStatusStore:
    """The Redis store on the session stack (``request.param`` "redis"), or on the session's
    Valkey cluster ("redis-cluster"), configured only through settings as a deployment is."""
    if request.param == "redis":
        return RedisStatusStore(_real(request), events=events)
    settings: BlazeSettings = request.getfixturevalue("cluster_settings")
    store = RedisStatusStore(settings, events=events)
    assert store.cluster
    return store


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def status_store(request: pytest.FixtureRequest, recorder: Recorder) -> Iterator[StatusStore]:
    store: StatusStore
    if request.param == "memory":
        store = MemoryStatusStore(events=recorder)
    else:
        store = redis_status(request, recorder)
    yield store
    store.close()


@pytest.fixture(params=["memory", "s3"])
def result_store(request: pytest.FixtureRequest) -> Iterator[tuple[ResultStore, str]]:
    """A store and the key prefix the test may write under."""
    store: ResultStore
    if request.param == "memory":
        store, prefix = MemoryResultStore(), "unit/"
    else:
        settings = _real(request)
        s3 = settings.s3.model_copy(update={"multipart_threshold_mb": 5})
        store, prefix = (
            S3ResultStore(settings.model_copy(update={"s3": s3})),
            settings.namespace + "/",
        )
    yield store, prefix
    store.close()


@pytest.fixture(params=["memory", "kafka"])
def status_events(request: pytest.FixtureRequest) -> Iterator[StatusEvents]:
    events: StatusEvents
    events = (
        MemoryStatusEvents() if request.param == "memory" else KafkaStatusEvents(_real(request))
    )
    yield events
    events.close()


@pytest.fixture(params=["memory", "kafka"])
def dead_letters(request: pytest.FixtureRequest) -> Iterator[DeadLetterStore]:
    store: DeadLetterStore
    store = MemoryDeadLetters() if request.param == "memory" else KafkaDeadLetters(_real(request))
    yield store
    store.close()
