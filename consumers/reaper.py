"""Returning the batches of dead workers within seconds, and capping poison jobs.

Celery (kombu's Redis transport) keeps every batch a worker has taken but not acknowledged in
the ``unacked`` hash, indexed by delivery time in ``unacked_index``; on its own it returns such a
batch only after the visibility timeout (an hour by default). Workers hold a lease on the batch
in hand (``pipelines.fleet.Leases``). Every ``reap_every_s`` one consumer (a Redis lock picks
it) looks for batches of this namespace taken more than ``lease_s`` ago whose lease is gone:
their worker died. For each, it

1. if the batch was on its engine when the worker died (its in-engine mark,
   ``pipelines.fleet``), counts one more death on each of its jobs and a failure on its
   queue's breaker; a batch its worker only held beside it (waiting for its turn, writing
   results) goes back as it was, counting nothing;
2. dead-letters the jobs that reached ``dead_after_deaths`` ("worker died while running this
   job", stage ``worker``); sends those that reached ``alone_after_deaths`` back as batches of
   one marked ``alone`` (a worker runs such a batch with no other engine call beside it, so a
   job that kills its worker takes nothing else with it, and nothing else shares its blame);
   sends the rest back as one batch (the same batch id when nothing was split off), each
   keeping what the batch said of its jobs (traces, versions, cache keys) and itself
   (priority);
3. only then removes the taken batch from ``unacked``: a consumer dying in between leaves it
   there, to be returned again (a rerun is harmless: workers skip jobs that have a result).

A shadow batch (copies of jobs run on another version, ``engines.shadow``) is dropped instead:
a shadow never retries, and a death in it says nothing of the jobs' own runs.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from consumers.dispatch import Dispatcher
from consumers.metrics import IntakeMetrics
from pipelines.fleet import Breakers, Leases
from pipelines.settings import BlazeSettings
from pipelines.stores.deadletters import DeadLetter, DeadLetterStore
from pipelines.stores.redis_client import redis_client
from pipelines.stores.status import JobState, StatusStore, StatusUpdate
from pipelines.tasks import batch_payload

log = logging.getLogger(__name__)

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"  # kombu's Redis transport defaults
DIED = "worker died while running this job"


@dataclass(frozen=True)
class Taken:
    """A batch a worker took from its queue and has not acknowledged."""

    tag: str
    queue: str
    payload: dict[str, Any]
    taken_at: float

    @property
    def batch_id(self) -> str:
        return str(self.payload.get("batch_id") or self.tag)


def read_taken(raw: dict[Any, Any], index: dict[str, float], prefix: str) -> list[Taken]:
    """Parse kombu's unacked entries (``[message, exchange, routing_key]``) of this namespace."""
    out: list[Taken] = []
    for tag_raw, value in raw.items():
        tag = tag_raw.decode() if isinstance(tag_raw, bytes) else str(tag_raw)
        try:
            message, _exchange, routing_key = json.loads(value)
            if not str(routing_key).startswith(prefix):
                continue
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]
            payload = args[0]
            if not isinstance(payload, dict):
                raise ValueError("the task's argument is not a batch")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            log.warning("unacked message %s is not a Blaze batch (%s); left alone", tag, exc)
            continue
        out.append(Taken(tag, str(routing_key), payload, index.get(tag, time.time())))
    return out


class Reaper:
    """Finds dead workers' batches and sends their jobs back (see the module docstring)."""

    def __init__(
        self,
        settings: BlazeSettings,
        dispatcher: Dispatcher,
        status: StatusStore,
        dead_letters: DeadLetterStore,
        client: redis.Redis | None = None,
        clock: Callable[[], float] = time.time,
        metrics: IntakeMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = settings.fleet
        self.client = client or redis_client(settings, connect_timeout_s=2, timeout_s=10)
        self.leases = Leases(settings, self.client)
        self.breakers = Breakers(settings, self.client, clock)
        self.dispatcher = dispatcher
        self.status = status
        self.dead_letters = dead_letters
        self.clock = clock
        self.lock = f"{settings.namespace}:reaper"
        self.metrics = metrics
        self._next = 0.0

    def maybe_reap(self) -> int:
        """Reap if ``reap_every_s`` passed since the last look; never raises for Redis."""
        now = self.clock()
        if now < self._next:
            return 0
        self._next = now + self.fleet.reap_every_s
        try:
            return self.reap()
        except (redis.RedisError, OSError) as exc:
            log.warning("reaper: %s", exc)
            return 0

    def reap(self) -> int:
        """One look; returns how many dead workers' batches were sent back."""
        hold_ms = int(1000 * self.fleet.reap_every_s * 0.9) or 1
        if not self.client.set(self.lock, "1", nx=True, px=hold_ms):
            return 0  # another consumer looks this time
        dead, slow = self.dead_batches()
        on_engine = self.leases.on_engine_when_gone([t.batch_id for t in dead])
        for taken in dead:
            self.send_back(taken, taken.batch_id in on_engine)
        for taken in slow:
            self._overdue(taken)
        return len(dead)

    def _overdue(self, taken: Taken) -> None:
        """A batch past ``batch_timeout_s`` whose worker is alive: no progress, one failure
        on its queue's breaker (once per batch); it keeps running."""
        marker = f"{self.settings.namespace}:overdue:{taken.batch_id}"
        if self.client.set(marker, "1", nx=True, ex=int(self.fleet.batch_timeout_s) + 3600):
            self.breakers.record(
                taken.queue, False, f"a batch ran past {self.fleet.batch_timeout_s:.0f} s"
            )
            log.warning(
                "batch %s on %s has run %.0f s (past batch_timeout_s)",
                taken.batch_id,
                taken.queue,
                self.clock() - taken.taken_at,
            )

    def dead_batches(self) -> tuple[list[Taken], list[Taken]]:
        """Batches taken more than ``lease_s`` ago whose worker holds no lease (dead), and
        those held longer than ``batch_timeout_s`` (overdue)."""
        raw = self.client.hgetall(UNACKED)
        if not raw:
            return [], []
        scores: list[tuple[bytes, float]] = self.client.zrange(  # type: ignore[assignment]
            UNACKED_INDEX, 0, -1, withscores=True
        )
        index = {t.decode(): float(s) for t, s in scores}
        taken = read_taken(raw, index, f"{self.settings.namespace}.")
        now = self.clock()
        old = [t for t in taken if now - t.taken_at > self.fleet.lease_s]
        holders = self.leases.holders([t.batch_id for t in old])
        dead = [t for t in old if holders.get(t.batch_id) is None]
        limit = self.fleet.batch_timeout_s
        slow = [t for t in old if holders.get(t.batch_id) and now - t.taken_at > limit]
        return dead, slow

    def send_back(self, taken: Taken, on_engine: bool = True) -> None:
        """Send a dead worker's batch back. ``on_engine``: it was on its engine when the worker
        died, so its jobs count a death (step 1 of the module docstring); otherwise it goes
        back as it was, counting nothing (its worker held it beside the batch that was)."""
        jobs = [j for j in taken.payload.get("jobs") or [] if isinstance(j, dict)]
        ids = [str(j.get("job_id")) for j in jobs if j.get("job_id")]
        if taken.payload.get("shadow"):
            self._forget(taken)  # a shadow never retries, and its jobs' deaths are not theirs
            log.warning(
                "worker of shadow batch %s (%s) on %s died: its %d copies dropped",
                taken.batch_id,
                taken.payload["shadow"],
                taken.queue,
                len(ids),
                extra={"batch_id": taken.batch_id, "job_ids": ids},
            )
            return
        if not on_engine:
            self.dispatcher.dispatch(taken.queue, {**taken.payload, "queued_at": time.time()})
            self._forget(taken)
            if self.metrics is not None:
                self.metrics.reaped.labels(taken.queue).inc()
            log.warning(
                "worker of batch %s on %s died while the batch waited or wrote results: its "
                "%d jobs sent back, no death counted",
                taken.batch_id,
                taken.queue,
                len(ids),
                extra={"batch_id": taken.batch_id, "job_ids": ids},
            )
            return
        deaths = self.status.count_deaths(ids) if ids else {}
        self.breakers.record(taken.queue, False, "a worker died running a batch")
        dead, alone, rest = _split(jobs, deaths, self.fleet)
        if dead:
            self._bury(dead, deaths)
        parts = [([j], True) for j in alone] + ([(rest, False)] if rest else [])
        for part, by_itself in parts:
            same = len(parts) == 1 and not dead
            batch_id = taken.batch_id if same else uuid.uuid4().hex
            self.dispatcher.dispatch(
                taken.queue, _part(taken.payload, part, batch_id=batch_id, alone=by_itself)
            )
        self._forget(taken)
        split = len(alone) if len(parts) > 1 else 0
        if self.metrics is not None:
            self.metrics.reaped.labels(taken.queue).inc()
            self.metrics.poisoned.labels("alone").inc(split)
            self.metrics.poisoned.labels("dead_lettered").inc(len(dead))
        log.warning(
            "worker of batch %s on %s died: %d jobs sent back (%d alone), %d dead-lettered",
            taken.batch_id,
            taken.queue,
            len(alone) + len(rest),
            len(alone),
            len(dead),
            extra={"batch_id": taken.batch_id, "job_ids": ids},
        )

    def _forget(self, taken: Taken) -> None:
        """The batch is back in its queue: drop the taken copy and its in-engine mark."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(UNACKED, taken.tag)
        pipe.zrem(UNACKED_INDEX, taken.tag)
        pipe.delete(self.leases.engine_prefix + taken.batch_id)
        pipe.execute()

    def _bury(self, jobs: Sequence[dict[str, Any]], deaths: dict[str, int]) -> None:
        now = time.time()
        why = {j["job_id"]: f"{DIED} ({deaths[j['job_id']]} times)" for j in jobs}
        self.dead_letters.send(
            [
                DeadLetter("worker", r, jid, payload=json.dumps(j)[:4096])
                for (jid, r), j in zip(why.items(), jobs, strict=True)
            ]
        )
        self.status.update([StatusUpdate(jid, JobState.DEAD, r, now) for jid, r in why.items()])


def _split(
    jobs: list[dict[str, Any]], deaths: dict[str, int], fleet: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(dead-lettered, sent back alone, sent back together) by each job's death count."""
    dead, alone, rest = [], [], []
    for j in jobs:
        n = deaths.get(str(j.get("job_id")), 0)
        if n >= fleet.dead_after_deaths:
            dead.append(j)
        elif n >= fleet.alone_after_deaths:
            alone.append(j)
        else:
            rest.append(j)
    return dead, alone, rest


def _part(
    payload: dict[str, Any], jobs: list[dict[str, Any]], *, batch_id: str, alone: bool
) -> dict[str, Any]:
    """The payload of the batch sent back with ``jobs`` of ``payload``: what it said of
    those jobs (traces, result-cache keys, versions) and of the batch (priority)."""
    ids = {j.get("job_id") for j in jobs}

    def mine(field: str) -> dict[str, str] | None:
        got = payload.get(field)
        return {k: v for k, v in got.items() if k in ids} if isinstance(got, dict) else None

    priority = payload.get("priority")
    return batch_payload(
        jobs,
        batch_id=batch_id,
        queued_at=time.time(),
        traces=mine("traces"),
        priority=priority if isinstance(priority, int) else None,
        cache_keys=mine("cache_keys"),
        versions=mine("versions"),
        alone=alone or bool(payload.get("alone")),
    )
