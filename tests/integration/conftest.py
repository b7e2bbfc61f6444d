"""Integration fixtures: a real worker (Celery on Redis) and a real intake (Kafka) in threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from celery.contrib.testing.worker import start_worker

from consumers.intake import IntakeStats, run_intake
from engines.worker import BatchRunner, EngineCache, llm_factory, worker_app
from pipelines.settings import BlazeSettings
from pipelines.status import RedisStatusStore
from pipelines.storage import S3ResultStore

pytestmark = pytest.mark.integration


@contextmanager
def running_worker(settings: BlazeSettings) -> Iterator[BatchRunner]:
    """A Celery worker thread serving the cpu LLM queue with tiny models on the real stack."""
    store = S3ResultStore(settings)
    runner = BatchRunner(
        settings,
        store,
        RedisStatusStore(settings),
        EngineCache(llm_factory(settings, "float32"), "cpu"),
    )
    app = worker_app(settings, runner)
    with start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        queues=[settings.queue("llm", "cpu")],
        loglevel="WARNING",
        shutdown_timeout=30,
    ):
        yield runner
    store.close()


@contextmanager
def running_intake(
    settings: BlazeSettings, timeout: float = 60
) -> Iterator[Callable[[], IntakeStats]]:
    """The Kafka intake consumer in a thread; returns once it joined its group."""
    stop, ready = threading.Event(), threading.Event()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["stats"] = run_intake(settings, stop=stop, on_ready=ready.set)
        except BaseException as exc:  # surfaced to the test below
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(timeout), "intake did not join its consumer group"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]

    def stats() -> IntakeStats:
        assert "stats" in box, "intake has not stopped yet"
        return box["stats"]  # type: ignore[return-value]

    try:
        yield stats
    finally:
        stop.set()
        thread.join(60)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
