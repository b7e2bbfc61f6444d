"""The intake consumer as a process: the Kafka consumer, rebalances, probes, the run loop.

``Intake`` (``consumers.intake``) is the loop's logic over any source; this module wires it to a
real Kafka consumer group, the Celery dispatcher, the stores, metrics and the probe server.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from types import FrameType

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import KafkaError, NoBrokersAvailable
from kafka.structs import TopicPartition

from consumers.cached import CacheGate
from consumers.dispatch import CeleryDispatcher, Dispatcher, QueueDepth, RedisQueueDepth
from consumers.intake import Entry, Intake, IntakeStats
from consumers.metrics import IntakeMetrics, MeteredDepth
from consumers.reaper import Reaper
from consumers.routing import FleetView, Router
from consumers.slo import SloSizer
from pipelines.fleet import BatchTimes, Breakers
from pipelines.jobs import JOB_KINDS
from pipelines.kafka import ensure_topics, unavailable
from pipelines.observe.checks import service_checks
from pipelines.observe.heartbeats import HeartbeatStore
from pipelines.observe.process import ProcessObserver, process_id
from pipelines.registry import Registry
from pipelines.result_cache import ResultCache
from pipelines.settings import BlazeSettings
from pipelines.stores import connect
from pipelines.stores.status import GroupsDone

log = logging.getLogger(__name__)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.intake: Intake | None = None

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if self.intake is not None:
            self.intake.on_revoked(revoked)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


def make_consumer(settings: BlazeSettings, listener: ConsumerRebalanceListener) -> KafkaConsumer:
    """A consumer in the intake group, subscribed to the job topics, committing by hand."""
    topics = [settings.jobs_topic(k) for k in JOB_KINDS]
    ensure_topics(settings, [*topics, settings.dead_letter_topic])
    session = settings.kafka.consumer_session_timeout_ms
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.consumer_group,
            client_id=f"{settings.namespace}-intake",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=500,
            session_timeout_ms=session,
            heartbeat_interval_ms=max(1000, session // 4),
            max_poll_interval_ms=300_000,
            # The broker holds a fetch up to this long waiting for data. Tansu looks for new
            # records at half of it, then half of the rest (not as they arrive), so a lone job
            # can wait up to half of it there: Kafka's default (500 ms) added ~80 ms p50; 20 ms
            # cost the consumer and the broker 7 % of a core each while idle, 100 ms about 1.5 %.
            fetch_max_wait_ms=settings.kafka.fetch_max_wait_ms,
            **settings.kafka.client_config(),
        )
    except (NoBrokersAvailable, KafkaError, OSError) as exc:
        raise unavailable(settings, exc) from None
    consumer.subscribe(topics=topics, listener=listener)
    return consumer


def _gauges(metrics: IntakeMetrics | None) -> Callable[[FleetView], None] | None:
    """Breaker states as gauges, set from every fleet snapshot the router reads."""
    if metrics is None:
        return None
    code = {"closed": 0, "half_open": 1, "open": 2}

    def set_gauges(view: FleetView) -> None:
        for queue, b in view.states.items():
            metrics.breaker.labels(queue).set(code[b.state])

    return set_gauges


def run_intake(
    settings: BlazeSettings,
    devices: Sequence[str] | None = None,
    stop: threading.Event | None = None,
    dispatcher: Dispatcher | None = None,
    on_ready: Callable[[], None] | None = None,
    strategy: str | None = None,
    registry: Registry | None = None,
    metrics_port: int | None = None,
    metrics: IntakeMetrics | None = None,
    answers: ResultCache | None = None,
    on_groups_done: GroupsDone | None = None,
) -> IntakeStats:
    """Run the consumer until ``stop`` is set or SIGTERM/SIGINT arrives (main thread only).

    Args:
        devices: Route only to these devices (default: every device a model lists).
        registry: Models, versions and rollout (default: the shared one, seeded from the
            registry file: ``pipelines.live_registry``).
        metrics_port: Serve /metrics, /livez and /readyz here (0: a free port) and beat
            into Redis; None: neither.
        metrics: Where counts go (default: a fresh registry; none while
            ``settings.observe.enabled`` is off, which also turns the probes off).
        answers: The result cache (with its result store): repeated jobs are answered at
            intake (``consumers.cached``); None: every job runs.
        on_groups_done: Hears of groups (OpenAI-style batches) whose last job a cache hit
            ended.
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def _stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping intake", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    registry = registry or connect.live_registry(settings)
    if not settings.observe.enabled:
        metrics, metrics_port = None, None
    else:
        metrics = metrics or IntakeMetrics()
    depth: QueueDepth = RedisQueueDepth(settings)
    if metrics is not None:
        depth = MeteredDepth(depth, metrics)
    view = FleetView(HeartbeatStore(settings), Breakers(settings), on_refresh=_gauges(metrics))
    router = Router(settings, registry, depth, strategy, only_devices=devices, view=view)
    listener = _Listener()
    consumer = make_consumer(settings, listener)
    dead = connect.dead_letters(settings)
    status = connect.status_store(settings)
    dispatcher = dispatcher or CeleryDispatcher(settings)
    reaper = Reaper(settings, dispatcher, status, dead, metrics=metrics)
    gate: CacheGate[Entry] | None = None
    if answers is not None and settings.cache.enabled:
        gate = CacheGate(
            settings,
            answers,
            registry,
            status,
            answers.results,
            metrics=metrics,
            on_groups_done=on_groups_done,
        )
    intake = Intake(
        settings,
        consumer,
        dispatcher,
        dead,
        status,
        router,
        registry,
        metrics=metrics,
        sizer=SloSizer(BatchTimes(settings)),
        gate=gate,
    )
    listener.intake = intake
    ready = False
    observer = None
    if metrics is not None and metrics_port is not None:
        checks = service_checks(settings, "kafka", "redis")
        checks["group"] = lambda: None if ready else f"not yet in group {settings.consumer_group}"
        observer = ProcessObserver(
            settings,
            "consumer",
            process_id(),
            metrics.registry,
            checks,
            info=lambda: {
                "group": settings.consumer_group,
                "partitions": len(intake.offsets.partitions()),
                "received": intake.stats.received,
                "batches": intake.stats.batches,
                "paused": intake.paused,
                "recent_dead": list(intake.recent_dead),
            },
            port=metrics_port,
        ).start()
    try:
        while not stop.is_set():
            intake.step()
            reaper.maybe_reap()
            if not ready and consumer.assignment():
                ready = True
                if metrics is not None:
                    metrics.group_joined.set(1)
                log.info("intake joined group %s", settings.consumer_group)
                if on_ready:
                    on_ready()
    finally:
        if consumer.assignment():
            intake.flush_all()
            consumer.close(autocommit=False)
        else:
            # Tansu wedges a group when a member closes mid-join; leaving without a
            # LeaveGroup lets the session timeout clean it up instead.
            log.info("intake stopped before joining; leaving without closing the consumer")
        dead.close()
        status.close()
        if observer is not None:
            observer.stop()
    summary = {**asdict(intake.stats), "mean_batch_size": round(intake.stats.mean_batch_size, 2)}
    log.info("intake stopped: %s", json.dumps(summary))
    return intake.stats
