"""Intake's result-cache gate: answer repeated jobs without a worker, run each answer once.

Jobs read in one poll are looked up together (``pipelines.result_cache``). A hit is answered
here: the job's own result document is written (first writer wins), its status ends
``succeeded`` with its events published, and only then is its offset settled, so a crash in
between redelivers it and answers it again. A miss goes on to be batched with its key, so the
worker that runs it stores the answer. A miss whose twin (same key) is already on its way to a
worker is *parked* instead: it waits for the twin's answer and is answered from it, or runs
itself once the twin ended without one or after ``cache.coalesce_s``. Parked offsets stay
uncommitted, so a restart redelivers them. A cache that cannot be reached never stops intake:
its jobs simply run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from cachetools import TTLCache

from consumers.metrics import IntakeMetrics
from pipelines.errors import ServiceUnavailable
from pipelines.jobs import AnyJob, job_group
from pipelines.observe import trace
from pipelines.registry import Registry
from pipelines.result_cache import Hit, ResultCache
from pipelines.settings import BlazeSettings
from pipelines.stores.results import ResultStore
from pipelines.stores.status import GroupsDone, JobState, StatusStore, StatusUpdate

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.2
ANSWER_GRACE_S = 2.0
"""How long after its twin succeeded a parked job still waits for the answer to be stored
(a worker stores answers right after it settles its batch)."""
FLUSH_EVERY_S = 1.0
MAX_IN_FLIGHT = 200_000
OUTCOMES = {
    "memory_hits": "memory",
    "redis_hits": "redis",
    "s3_hits": "s3",
    "misses": "miss",
    "stale": "stale",
    "coalesced": "coalesced",
}
"""Counter names (``ResultCache.tally``) -> the metric's ``outcome`` label."""


class Held(Protocol):
    """A read job with where it came from (``consumers.intake.Entry``)."""

    @property
    def job(self) -> AnyJob: ...
    @property
    def tp(self) -> Any: ...
    @property
    def offset(self) -> int: ...
    @property
    def traceparent(self) -> str | None: ...
    @property
    def ref(self) -> str: ...


E = TypeVar("E", bound=Held)


@dataclass
class _Parked(Generic[E]):
    entry: E
    key: str
    since: float


class CacheGate(Generic[E]):
    """Decides, for jobs just read, which are answered from the cache and which run.

    Args:
        on_groups_done: Hears of groups (OpenAI-style batches) whose last job a hit ended.
        clock: Monotonic clock for parking.
    """

    def __init__(
        self,
        settings: BlazeSettings,
        cache: ResultCache,
        registry: Registry,
        status: StatusStore,
        results: ResultStore,
        *,
        metrics: IntakeMetrics | None = None,
        on_groups_done: GroupsDone | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.registry = registry
        self.status = status
        self.results = results
        self.answered: list[E] = []  # answered since ``take_answered``: offsets to settle
        self.metrics = metrics
        self.on_groups_done = on_groups_done
        self.clock = clock
        self.coalesce_s = settings.cache.coalesce_s
        # key -> the job id on its way to a worker with that key
        self.in_flight: TTLCache[str, str] = TTLCache(
            MAX_IN_FLIGHT, max(1.0, self.coalesce_s), timer=clock
        )
        self.keys: dict[str, str] = {}  # job id -> key, for jobs batched (to the payload)
        self.parked: list[_Parked[E]] = []
        self._checked = float("-inf")
        self._flushed = float("-inf")
        self._counts: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()  # not yet added to the shared counters
        self._succeeded: dict[str, float] = {}  # twins' origins seen succeeded, and when

    # -- jobs just read ----------------------------------------------------------------------
    def admit(self, entries: list[E]) -> list[E]:
        """Answer the hits among ``entries``, park twins of running jobs; returns the rest,
        in order, to be batched."""
        keyed: list[tuple[E, str | None]] = []
        for e in entries:
            spec = self.registry.get(e.ref or e.job.model)
            keyed.append((e, None if spec is None else self.cache.key_of(e.job, spec)))
        keys = [k for _, k in keyed if k is not None]
        if not keys:
            return entries
        try:
            hits = self.cache.lookup(keys)
        except ServiceUnavailable as exc:
            log.warning("result cache unavailable, running %d jobs: %s", len(keys), exc)
            hits = {}
        unanswered = {id(e) for e in self._answer([(e, hits[k]) for e, k in keyed if k in hits])}
        out: list[E] = []
        now = self.clock()
        for e, key in keyed:
            if key is None:
                out.append(e)
            elif key in hits and id(e) not in unanswered:
                continue
            elif key in self.in_flight and self.coalesce_s > 0:
                self.parked.append(_Parked(e, key, now))
            else:
                self._let_through(e, key)
                out.append(e)
        self._observe()
        return out

    def _let_through(self, e: E, key: str) -> None:
        self.in_flight[key] = e.job.job_id
        self.keys[e.job.job_id] = key

    def batched(self, job_ids: Iterable[str]) -> dict[str, str]:
        """The keys of jobs leaving in a batch (for the worker to store their answers)."""
        return {j: k for j in job_ids if (k := self.keys.pop(j, None)) is not None}

    # -- parked twins --------------------------------------------------------------------------
    def tick(self) -> list[E]:
        """Answer parked jobs whose twin's answer arrived; returns those that must run now."""
        if not self.parked or self.clock() - self._checked < CHECK_EVERY_S:
            self._observe()
            return []
        self._checked = now = self.clock()
        keys = list(dict.fromkeys(p.key for p in self.parked))
        try:
            found = self.cache.index.get_many(keys)
            origins = {k: o for k in keys if (o := self.in_flight.get(k)) is not None}
            states = self.status.states(list(origins.values())) if origins else {}
        except ServiceUnavailable as exc:
            log.warning("result cache unavailable, running %d parked jobs: %s", len(keys), exc)
            found, origins, states = {}, {}, {}
        ready = [
            (p.entry, Hit(p.key, found[p.key], "redis")) for p in self.parked if p.key in found
        ]
        stale = {id(e) for e in self._answer(ready, outcome="coalesced")}
        answered = {id(e) for e, _ in ready} - stale
        release: list[E] = []
        keep: list[_Parked[E]] = []
        for p in self.parked:
            if id(p.entry) in answered:
                continue
            origin = origins.get(p.key)
            state = states.get(origin) if origin is not None else None
            ended = origin is None or (state is not None and state.terminal)
            if ended and state is JobState.SUCCEEDED and origin is not None:
                # its answer reaches the index just after its state: give it a moment
                seen = self._succeeded.setdefault(origin, now)
                ended = now - seen >= ANSWER_GRACE_S
            if id(p.entry) in stale or ended or now - p.since >= self.coalesce_s:
                if p.key in self.in_flight and self.in_flight[p.key] != origin:
                    keep.append(p)  # a twin released this round runs for it
                    continue
                self._let_through(p.entry, p.key)
                release.append(p.entry)
            else:
                keep.append(p)
        self.parked = keep
        waiting = {self.in_flight.get(p.key) for p in keep}
        self._succeeded = {j: t for j, t in self._succeeded.items() if j in waiting}
        self._observe()
        return release

    def take_answered(self) -> list[E]:
        """Entries answered since the last call: their fate is settled."""
        out, self.answered = self.answered, []
        return out

    def forget(self, tps: Iterable[Any]) -> None:
        """Drop parked jobs of revoked partitions (uncommitted: the next owner reads them)."""
        gone = set(tps)
        self.parked = [p for p in self.parked if p.entry.tp not in gone]

    # -- answering ----------------------------------------------------------------------------
    def _answer(self, pairs: list[tuple[E, Hit]], outcome: str = "") -> list[E]:
        """Write each job's answer and end it ``succeeded``; returns the entries not answered
        (their cached objects were gone, or the stores failed)."""
        if not pairs:
            return []
        prov = {
            e.job.job_id: {"traceparent": trace.child(e.traceparent)}
            for e, _ in pairs
            if e.traceparent
        }
        try:
            docs = self.cache.answer([(e.job, h) for e, h in pairs], prov)
            items = [
                (self.settings.result_key(j), body, "application/json") for j, body in docs.items()
            ]
            self.results.put_many(items, if_absent=True)
            now = time.time()
            applied = self.status.update(
                [
                    StatusUpdate(
                        e.job.job_id,
                        JobState.SUCCEEDED,
                        at=now,
                        group=job_group(e.job),
                        kind=e.job.kind,
                        version=e.ref,
                    )
                    for e, _ in pairs
                    if e.job.job_id in docs
                ]
            )
            self.status.flush_events()
        except ServiceUnavailable as exc:
            log.warning("cache hits not answered, running them: %s", exc)
            return [e for e, _ in pairs]
        if applied.groups_done and self.on_groups_done is not None:
            self.on_groups_done(applied.groups_done)
        self.answered += [e for e, _ in pairs if e.job.job_id in docs]
        if outcome:
            self._counts[outcome] += len(docs)
        log.info(
            "answered %d jobs from the result cache",
            len(docs),
            extra={"job_ids": sorted(docs)},
        )
        return [e for e, _ in pairs if e.job.job_id not in docs]

    # -- counters -----------------------------------------------------------------------------
    def _observe(self) -> None:
        """Counts to the metrics now, to the shared counters at most once a second."""
        fresh = self.cache.drain() + self._counts
        self._counts = Counter()
        if self.metrics is not None:
            for name, n in fresh.items():
                if name in OUTCOMES:
                    self.metrics.cache_lookups.labels(OUTCOMES[name]).inc(n)
        self._pending += fresh
        if self._pending and self.clock() - self._flushed >= FLUSH_EVERY_S:
            self.cache.flush_counts(self._pending)
            self._pending = Counter()
            self._flushed = self.clock()
