"""The intake loop: Kafka → parse → dead letters / micro-batches → Celery → commit.

Offsets are committed only for messages whose fate is settled: dead-lettered (the dead-letter
record acknowledged by the broker) or durably handed to a Celery queue (acks-late tasks on a
persistent Redis). A crash at any point therefore redelivers, never skips; workers make a
redelivered job harmless by skipping job ids that already have a result.
"""

from __future__ import annotations

import bisect
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kafka.structs import OffsetAndMetadata

from consumers.batching import Batcher
from consumers.cached import CacheGate
from consumers.dispatch import Dispatcher
from consumers.metrics import IntakeMetrics, reason_label
from consumers.offsets import OffsetTracker
from consumers.routing import Router
from consumers.slo import SloSizer
from pipelines.errors import ServiceUnavailable
from pipelines.jobs import (
    JOB_KINDS,
    PAYLOAD_KEEP_BYTES,
    SENT_WITH_HEADER,
    AnyJob,
    batch_key,
    is_job_id,
    parse_job,
)
from pipelines.observe import trace
from pipelines.registry import Registry, Routed
from pipelines.settings import BlazeSettings
from pipelines.stores.deadletters import DeadLetter, DeadLetterStore, Source
from pipelines.stores.status import JobState, StatusStore, StatusUpdate
from pipelines.tasks import batch_payload

log = logging.getLogger(__name__)

ROOM_POLL_S = (0.05, 0.25)
"""While ready batches wait for room: how soon intake looks again, doubling from the first to
the second each turn that sent nothing, back to the first once one goes. Ready batches wait
only while every queue holds ``max_queued_batches``, so a look up to 0.25 s late idles no worker
whose batches take more than 0.25 s / ``max_queued_batches`` (62 ms at the default 4). Looking
every 0.05 s throughout cost the consumer 0.61 CPU-s over a 13 s backlog of 16 batches, against
0.40 with the backoff, at the same wall time."""


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None


def header(rec: Record, name: str) -> bytes | None:
    for key, value in rec.headers or []:
        if key == name:
            return value
    return None


def sent_with(rec: Record) -> int:
    """The ``blaze-sent-with`` header of a record; 1 when absent or not a positive integer."""
    value = header(rec, SENT_WITH_HEADER)
    try:
        return max(1, int(value)) if value else 1
    except ValueError:
        return 1


class JobSource(Protocol):
    """The part of a Kafka consumer the intake loop uses."""

    def poll(
        self, timeout_ms: int = ..., max_records: int | None = ...
    ) -> dict[Any, list[Any]]: ...

    def commit(self, offsets: dict[Any, Any] | None = ...) -> None: ...

    def assignment(self) -> set[Any]: ...

    def pause(self, *partitions: Any) -> None: ...

    def resume(self, *partitions: Any) -> None: ...

    def paused(self) -> set[Any]: ...


@dataclass(frozen=True)
class Entry:
    """A parsed job waiting in a batch, with where it came from."""

    job: AnyJob
    tp: Any
    offset: int
    read_at: float = 0.0
    traceparent: str | None = None
    sent_with: int = 1
    ref: str = ""
    """What runs it: ``name@N`` (the version its model reference resolved to), or the name
    of a model without versions."""
    shadow: str | None = None
    """A version that also runs it, apart (``pipelines.versions``)."""


@dataclass
class IntakeStats:
    received: int = 0
    dead_lettered: int = 0
    dispatched_jobs: int = 0
    batches: int = 0
    pauses: int = 0

    @property
    def mean_batch_size(self) -> float:
        return 0.0 if not self.batches else self.dispatched_jobs / self.batches


class Intake:
    """Turns a stream of Kafka messages into dispatched batches.

    Args:
        settings: Blaze settings (namespace, default batch limits).
        source: A subscribed Kafka consumer (or an in-memory stand-in in unit tests).
        dispatcher: Where batches go (Celery in production).
        dead_letters: Where unparseable, invalid, unknown-model and late jobs go.
        status: Where job states are recorded.
        router: Picks the worker queue for a batch; None from it means "all full".
        registry: Known models and their batch limits.
        clock: Monotonic clock for batching deadlines.
        metrics: Where counts and gauges go (None: no metrics).
        sizer: Batch limits of models with a latency target (``max_latency_s``); without
            one, such models batch with their ceiling and half the target as the window.
        gate: The result cache (``consumers.cached``): answers repeated jobs before they are
            batched (None: every job runs).
    """

    def __init__(
        self,
        settings: BlazeSettings,
        source: JobSource,
        dispatcher: Dispatcher,
        dead_letters: DeadLetterStore,
        status: StatusStore,
        router: Router,
        registry: Registry,
        clock: Callable[[], float] = time.monotonic,
        metrics: IntakeMetrics | None = None,
        sizer: SloSizer | None = None,
        gate: CacheGate[Entry] | None = None,
    ) -> None:
        self.settings = settings
        self.sizer = sizer
        self.gate = gate
        self.metrics = metrics
        self._observed_at = float("-inf")
        self.source = source
        self.dispatcher = dispatcher
        self.dead_letters = dead_letters
        self.status = status
        self.router = router
        self.registry = registry
        self.clock = clock
        self.batcher: Batcher[tuple[object, ...], Entry] = Batcher(
            settings.batch.max_size, settings.batch.max_wait_s, clock, settings.batch.quiet_s
        )
        # batches that left the batcher, most urgent first (FIFO within a priority)
        self.ready: list[list[Entry]] = []
        self.offsets = OffsetTracker()
        self.stats = IntakeStats()
        self.paused = False
        self.recent_dead: deque[dict[str, Any]] = deque(maxlen=20)  # for heartbeats, newest last
        self._kinds = {settings.jobs_topic(k): k for k in JOB_KINDS}
        self._last_commit = float("-inf")
        self._room_poll_s = ROOM_POLL_S[0]

    # -- one turn of the loop ----------------------------------------------------------------
    def step(self, max_poll_s: float = 0.5) -> None:
        """Poll once, dead-letter and batch what came, dispatch what is due, commit."""
        if self.ready:  # full queues: look again soon (open batches wait, see below)
            timeout = min(max_poll_s, self._room_poll_s)
        else:
            wait = self.batcher.seconds_to_next()
            timeout = max_poll_s if wait is None else min(max_poll_s, wait)
        records = self.source.poll(timeout_ms=int(timeout * 1000), max_records=500)
        letters: list[tuple[DeadLetter, Any, int]] = []
        fresh: list[Entry] = []
        now = self.clock()
        for tp, recs in records.items():
            if self.metrics is not None and recs:
                self.metrics.received.labels(self._kinds.get(recs[0].topic, "unknown")).inc(
                    len(recs)
                )
            for rec in recs:
                self.stats.received += 1
                self.offsets.track(tp, rec.offset)
                parsed = self._parse(rec)
                if isinstance(parsed, DeadLetter):
                    letters.append((parsed, tp, rec.offset))
                    continue
                job, routed = parsed
                tp_header = header(rec, trace.HEADER)
                fresh.append(
                    Entry(
                        job,
                        tp,
                        rec.offset,
                        now,
                        tp_header.decode("ascii", "replace") if tp_header else None,
                        sent_with(rec),
                        routed.ref,
                        routed.shadow,
                    )
                )
        if letters:
            self._dead_letter(letters)
        if self.gate is not None:
            fresh = self.gate.admit(fresh) + self.gate.tick()
            for e in self.gate.take_answered():
                self.offsets.settle(e.tp, e.offset)
        for entry in fresh:
            self._batch(entry)
        if not self.ready:
            self._ready(batch for _, batch in self.batcher.due(self._can_start))
        else:
            # While batches wait for room, open ones keep filling: leaving now gains nothing,
            # unless they would overtake some waiting batch (they go ahead of it).
            bottom = self.ready[-1][0].job.priority
            urgent = self.batcher.due(only=lambda entries: entries[0].job.priority > bottom)
            self._ready(batch for _, batch in urgent)
        self._pump()
        self.commit()
        if self.metrics is not None and self.clock() - self._observed_at >= 1.0:
            self.observe()

    def _batch(self, entry: Entry) -> None:
        job = entry.job
        size, wait_s, eager = self._limits(entry.ref)
        # one lane per priority: urgent jobs never wait in a batch of routine ones; one batch
        # runs one version of a model
        key = (job.priority, *batch_key(job), entry.ref)
        batch = self.batcher.add(key, entry, size, wait_s, entry.sent_with, eager)
        if batch is not None:
            self._ready([batch])

    def observe(self) -> None:
        """Refresh the gauges: lag per partition, open and ready batches, pauses, queue depths."""
        m = self.metrics
        if m is None:
            return
        self._observed_at = self.clock()
        m.open_batches.set(self.batcher.open_batches)
        m.ready_batches.set(len(self.ready))
        m.paused.set(len(self.source.paused()))
        highwater = getattr(self.source, "highwater", None)
        position = getattr(self.source, "position", None)
        for tp in self.source.assignment():
            end = highwater(tp) if highwater else None
            if end is None:
                continue
            point = self.offsets.point(tp)
            if point is None and position is not None:
                point = position(tp)
            if point is not None:
                m.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - point))
        try:
            self.router.depth.depth(self.router.all_queues())
        except ServiceUnavailable as exc:
            log.warning("queue depths: %s", exc)

    def _limits(self, model: str) -> tuple[int | None, float | None, bool]:
        """(max size, max wait, eager) of a new batch of ``model``: the registry's, or from
        its latency target (``consumers.slo``; such batches are eager: they leave as soon as
        a worker queue is free, see ``consumers.batching``)."""
        spec = self.registry.get(model)
        if spec is None:
            return None, None, False
        size, wait = spec.batch_limits(self.settings)
        if spec.max_latency_s is None:
            return size, wait, False
        if self.sizer is None:
            return size, max(0.001, spec.max_latency_s / 2), True
        return (*self.sizer.limits(model, spec.max_latency_s, size), True)

    def _can_start(self, entries: list[Entry]) -> bool:
        """Whether a quiet partial batch may leave early: a queue for it is empty (``due`` is
        only asked while no ready batch waits ahead of it)."""
        first = entries[0]
        return self.router.has_empty_queue(first.job.kind, first.ref)

    def _parse(self, rec: Record) -> tuple[AnyJob, Routed] | DeadLetter:
        kind = self._kinds.get(rec.topic, "unknown")
        src = Source(rec.topic, rec.partition, rec.offset)
        parsed = parse_job(rec.value, kind, src)
        if isinstance(parsed, DeadLetter):
            return parsed
        payload = (rec.value or b"")[:PAYLOAD_KEEP_BYTES].decode(errors="replace")
        routed = self.registry.route(parsed.model, parsed.job_id)
        if routed is None or routed.spec.kind != parsed.kind:
            known = [n for n in self.registry.names() if self.registry.specs[n].kind == parsed.kind]
            reason = f"unknown {parsed.kind} model {parsed.model!r} (known: {', '.join(known)})"
            return DeadLetter("intake", reason, parsed.job_id, src, payload=payload)
        if parsed.deadline is not None:
            deadline = parsed.deadline
            if deadline.tzinfo is None:
                deadline = deadline.replace(tzinfo=UTC)
            if deadline < datetime.now(UTC):
                reason = f"deadline {deadline.isoformat()} passed before the job was batched"
                return DeadLetter("intake", reason, parsed.job_id, src, payload=payload)
        return parsed, routed

    def _dead_letter(self, letters: list[tuple[DeadLetter, Any, int]]) -> None:
        self.dead_letters.send([d for d, _, _ in letters])
        if self.metrics is not None:
            for d, _, _ in letters:
                self.metrics.dead_lettered.labels(d.stage, reason_label(d.reason)).inc()
        now = time.time()
        known = [
            StatusUpdate(d.job_id, JobState.DEAD, d.reason, now)
            for d, _, _ in letters
            if is_job_id(d.job_id)
        ]
        self.status.update(known)
        for d, tp, off in letters:
            self.recent_dead.append(
                {"job_id": d.job_id, "stage": d.stage, "reason": d.reason[:300], "at": now}
            )
            log.warning(
                "dead letter %s@%s: %s", d.job_id or "-", off, d.reason, extra={"job_id": d.job_id}
            )
            self.offsets.settle(tp, off)
        self.stats.dead_lettered += len(letters)

    def _ready(self, batches: Iterable[list[Entry]]) -> None:
        for batch in batches:
            bisect.insort(self.ready, batch, key=lambda b: -b[0].job.priority)

    def buffered(self) -> int:
        """Jobs read from Kafka and not yet handed to a worker queue."""
        return sum(len(b) for b in self.ready) + len(self.batcher)

    def _pump(self) -> None:
        """Dispatch ready batches, most urgent first, while their queues have room.

        A batch whose queues are full (or whose devices' breakers are open) waits; batches of
        other models behind it still go. Intake keeps reading while fewer than
        ``fleet.read_ahead_jobs`` jobs wait here, so urgent jobs submitted behind a backlog
        reach the front; past that it pauses its partitions until there is room again.
        """
        full: set[tuple[str, str]] = set()
        waiting: list[list[Entry]] = []
        for batch in self.ready:
            job, ref = batch[0].job, batch[0].ref
            target = (job.kind, ref)
            queue = None if target in full else self.router.choose(job.kind, ref)
            if queue is None:
                full.add(target)
                waiting.append(batch)
                continue
            self._dispatch(queue, batch)
        sent = len(waiting) < len(self.ready)
        self.ready = waiting
        first, most = ROOM_POLL_S
        self._room_poll_s = first if sent or not waiting else min(most, 2 * self._room_poll_s)
        over = self.buffered() >= self.settings.fleet.read_ahead_jobs
        if self.ready and over and not self.paused:
            self.source.pause(*self.source.assignment())
            self.paused = True
            self.stats.pauses += 1
            log.info(
                "worker queues full: pausing intake (%d batches, %d jobs waiting)",
                len(self.ready),
                self.buffered(),
            )
        elif self.paused and not (self.ready and over):
            self.source.resume(*self.source.paused())
            self.paused = False
            self.batcher.restart()
            log.info("worker queues have room again: resuming intake")

    def _dispatch(self, queue: str, batch: list[Entry]) -> None:
        job = batch[0].job
        batch_id = uuid.uuid4().hex
        traces = {e.job.job_id: trace.child(e.traceparent) for e in batch if e.traceparent}
        payload = batch_payload(
            [e.job.model_dump(mode="json") for e in batch],
            batch_id=batch_id,
            queued_at=time.time(),
            traces=traces,
            cache_keys=self.gate.batched(e.job.job_id for e in batch) if self.gate else None,
            versions={e.job.job_id: e.ref for e in batch if e.ref != e.job.model},
        )
        # Recorded and published before the hand-off so a fast worker's "running" never
        # precedes it (in Redis or on the event topic); if the dispatch fails the offsets stay
        # uncommitted and the job comes back anyway.
        now = time.time()
        self.status.update(
            [StatusUpdate(e.job.job_id, JobState.BATCHED, at=now, version=e.ref) for e in batch]
        )
        self.status.flush_events()
        self.dispatcher.dispatch(queue, payload)
        self._shadow(batch)
        for e in batch:
            self.offsets.settle(e.tp, e.offset)
        self.stats.batches += 1
        self.stats.dispatched_jobs += len(batch)
        if self.metrics is not None:
            self._count_batch(queue, batch)
        log.info(
            "dispatched %d %s jobs of %s to %s",
            len(batch),
            job.kind,
            job.model,
            queue,
            extra={
                "batch_id": batch_id,
                "job_ids": [e.job.job_id for e in batch],
                "trace_ids": sorted({t for v in traces.values() if (t := trace.trace_id(v))}),
            },
        )

    def _shadow(self, batch: list[Entry]) -> None:
        """Copies of the batch's jobs that a shadow version also runs: their own batches,
        results kept apart; never in the way of the real ones (no room: not run)."""
        by_ref: dict[str, list[Entry]] = {}
        for e in batch:
            if e.shadow:
                by_ref.setdefault(e.shadow, []).append(e)
        for ref, entries in by_ref.items():
            queue = self.router.choose(entries[0].job.kind, ref)
            if queue is None:
                log.info("no room for %d shadow jobs of %s: not run", len(entries), ref)
                continue
            payload = batch_payload(
                [e.job.model_dump(mode="json") for e in entries],
                batch_id=uuid.uuid4().hex,
                queued_at=time.time(),
                priority=0,
                versions={e.job.job_id: ref for e in entries},
                shadow=ref,
            )
            self.dispatcher.dispatch(queue, payload)

    def _count_batch(self, queue: str, batch: list[Entry]) -> None:
        m = self.metrics
        assert m is not None
        job, ref = batch[0].job, batch[0].ref or batch[0].job.model  # name@N: the version
        spec = self.registry.get(ref)
        size = spec.batch_limits(self.settings)[0] if spec else self.settings.batch.max_size
        m.batches.labels(job.kind, ref, queue).inc()
        m.batch_size.labels(job.kind, ref).observe(len(batch))
        m.batch_fill.labels(job.kind, ref).observe(min(1.0, len(batch) / max(1, size)))
        m.batch_open.labels(job.kind, ref).observe(max(0.0, self.clock() - batch[0].read_at))

    def commit(self, force: bool = False) -> None:
        points = self.offsets.commit_points()
        if not points:
            return
        if not force and self.clock() - self._last_commit < 0.2 and self.offsets.pending():
            return
        self.source.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in points.items()})
        self.offsets.committed(points)
        self._last_commit = self.clock()

    def flush_all(self, wait_s: float = 30.0) -> None:
        """Dispatch every open batch (shutdown, revocation), waiting up to wait_s for room.

        Whatever still finds no room stays uncommitted and is redelivered to the next owner.
        """
        self._ready(batch for _, batch in self.batcher.drain())
        deadline = self.clock() + wait_s
        self._pump()
        while self.ready and self.clock() < deadline:
            time.sleep(0.1)
            self._pump()
        self.ready.clear()
        self.commit(force=True)

    def on_revoked(self, tps: Iterable[Any]) -> None:
        tps = list(tps)
        self.flush_all()
        if self.gate is not None:
            self.gate.forget(tps)
        self.offsets.forget(tps)
