"""Job status: the ``StatusStore`` contract, an in-memory store and the Redis store.

States only move forward (queued → batched → running → terminal), whatever order the updates
arrive in, so a late "queued" from a producer never hides a "succeeded" from a worker.
Two moves are conditional and atomic: a worker *claims* a job (queued/batched → running,
refused once the job is terminal, e.g. cancelled) and a user *cancels* one (queued/batched →
cancelled, refused once it runs). Exactly one of the two wins for each job.

Jobs may belong to a *group* (an OpenAI-style batch): the store counts the group's terminal
jobs and tells the caller whose update settled the last one. Every call takes many jobs at
once: one round trip per batch, never per job. Every applied change can be published (the
status event topic) through an ``EventSink``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import redis

from pipelines.errors import ServiceUnavailable
from pipelines.settings import BlazeSettings


class JobState(StrEnum):
    QUEUED = "queued"
    BATCHED = "batched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def terminal(self) -> bool:
        return self.rank == 3


_RANK = {
    JobState.QUEUED: 0,
    JobState.BATCHED: 1,
    JobState.RUNNING: 2,
    JobState.SUCCEEDED: 3,
    JobState.FAILED: 3,
    JobState.DEAD: 3,
    JobState.CANCELLED: 3,
}


@dataclass(frozen=True)
class StatusUpdate:
    """One state change to record; ``group`` and ``kind`` stick from the first update."""

    job_id: str
    state: JobState
    reason: str = ""
    at: float = field(default_factory=time.time)
    group: str = ""
    kind: str = ""


@dataclass(frozen=True)
class JobStatus:
    """What is known about a job: its state, why (for failures), when each state was reached."""

    job_id: str
    state: JobState
    updated_at: float
    reason: str = ""
    attempts: int = 0
    times: dict[str, float] = field(default_factory=dict)
    dispatches: int = 0
    group: str = ""
    kind: str = ""


@dataclass(frozen=True)
class Applied:
    """What one call changed: the updates that moved a job, and groups it completed."""

    moved: list[StatusUpdate] = field(default_factory=list)
    groups_done: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Claim:
    """A worker's claim on a job: granted (now running) or refused, with the job's state."""

    claimed: bool
    state: JobState | None
    attempts: int


@dataclass(frozen=True)
class GroupProgress:
    """How far a group of jobs got: total, settled, and settled per terminal state."""

    group: str
    total: int
    done: int
    counts: dict[str, int]
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.total >= 0 and self.done >= self.total


EventSink = Callable[[Sequence[StatusUpdate]], None]
"""Receives every applied change (e.g. publishes it to the status topic)."""


class StatusStore(Protocol):
    def update(self, updates: Sequence[StatusUpdate]) -> Applied: ...

    def claim(self, job_ids: Sequence[str], at: float) -> dict[str, Claim]:
        """Move jobs to running unless they are terminal (done, dead or cancelled)."""
        ...

    def cancel(
        self, job_ids: Sequence[str], reason: str, at: float
    ) -> tuple[dict[str, JobState | None], Applied]:
        """Cancel jobs that have not started; returns each job's state after the call."""
        ...

    def reset(self, job_ids: Iterable[str]) -> None:
        """Forget jobs' states (a dead letter replayed after a fix starts again)."""
        ...

    def get(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]: ...

    def states(self, job_ids: Iterable[str]) -> dict[str, JobState | None]:
        """Only the state of each job: the cheap call for polling many jobs."""
        ...

    def open_group(self, group: str, total: int) -> None:
        """Declare a group of ``total`` jobs (before its jobs are queued)."""
        ...

    def group_progress(self, group: str) -> GroupProgress: ...

    def mark_group(self, group: str, name: str, at: float) -> float:
        """Record when the group reached ``name`` (first call wins); returns that time."""
        ...


# -- the in-memory store -----------------------------------------------------------------------
def _moves(current: JobStatus | None, state: JobState) -> bool:
    return (
        current is None
        or state.rank > current.state.rank
        or (state.rank == current.state.rank and not current.state.terminal)
    )


def _advance(current: JobStatus | None, up: StatusUpdate) -> JobStatus:
    """The rule both stores follow: forward only; terminal states are final."""
    times = dict(current.times) if current else {}
    times.setdefault(up.state.value, up.at)
    attempts = (current.attempts if current else 0) + (up.state is JobState.RUNNING)
    dispatches = (current.dispatches if current else 0) + (up.state is JobState.BATCHED)
    group = (current.group if current else "") or up.group
    kind = (current.kind if current else "") or up.kind
    if _moves(current, up.state) or current is None:
        return JobStatus(
            up.job_id, up.state, up.at, up.reason, attempts, times, dispatches, group, kind
        )
    return JobStatus(
        current.job_id,
        current.state,
        current.updated_at,
        current.reason,
        attempts,
        times,
        dispatches,
        group,
        kind,
    )


class MemoryStatusStore:
    """Status in a dict, for unit tests; ``history`` keeps every update, ``events`` the moves."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobStatus] = {}
        self.history: list[StatusUpdate] = []
        self.events: list[StatusUpdate] = []
        self.groups: dict[str, tuple[int, set[str], dict[str, int]]] = {}
        self.marks: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def _apply(self, up: StatusUpdate, out: Applied) -> None:
        self.history.append(up)
        current = self.jobs.get(up.job_id)
        moved = _moves(current, up.state)
        new = self.jobs[up.job_id] = _advance(current, up)
        if not moved:
            return
        out.moved.append(up)
        self.events.append(up)
        if up.state.terminal and new.group in self.groups:
            total, done, counts = self.groups[new.group]
            if up.job_id not in done:
                done.add(up.job_id)
                counts[up.state.value] = counts.get(up.state.value, 0) + 1
                if len(done) == total:
                    out.groups_done.add(new.group)

    def update(self, updates: Sequence[StatusUpdate]) -> Applied:
        out = Applied()
        with self._lock:
            for up in updates:
                self._apply(up, out)
        return out

    def claim(self, job_ids: Sequence[str], at: float) -> dict[str, Claim]:
        claims: dict[str, Claim] = {}
        with self._lock:
            for j in job_ids:
                cur = self.jobs.get(j)
                if cur is not None and cur.state.terminal:
                    claims[j] = Claim(False, cur.state, cur.attempts)
                    continue
                self._apply(StatusUpdate(j, JobState.RUNNING, at=at), Applied())
                claims[j] = Claim(True, JobState.RUNNING, self.jobs[j].attempts)
        return claims

    def cancel(
        self, job_ids: Sequence[str], reason: str, at: float
    ) -> tuple[dict[str, JobState | None], Applied]:
        states: dict[str, JobState | None] = {}
        out = Applied()
        with self._lock:
            for j in job_ids:
                cur = self.jobs.get(j)
                if cur is not None and cur.state.rank < 2:
                    self._apply(StatusUpdate(j, JobState.CANCELLED, reason, at), out)
                    cur = self.jobs[j]
                states[j] = None if cur is None else cur.state
        return states, out

    def get(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
        return {j: self.jobs.get(j) for j in job_ids}

    def states(self, job_ids: Iterable[str]) -> dict[str, JobState | None]:
        return {j: (st.state if (st := self.jobs.get(j)) else None) for j in job_ids}

    def reset(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            for j in job_ids:
                old = self.jobs.pop(j, None)
                if old is not None and old.group in self.groups:
                    _, done, counts = self.groups[old.group]
                    if j in done:
                        done.discard(j)
                        counts[old.state.value] -= 1

    def open_group(self, group: str, total: int) -> None:
        with self._lock:
            self.groups.setdefault(group, (total, set(), {}))

    def group_progress(self, group: str) -> GroupProgress:
        total, done, counts = self.groups.get(group, (-1, set(), {}))
        marks = dict(self.marks.get(group, {}))
        return GroupProgress(group, total, len(done), {k: v for k, v in counts.items() if v}, marks)

    def mark_group(self, group: str, name: str, at: float) -> float:
        with self._lock:
            return self.marks.setdefault(group, {}).setdefault(name, at)


# -- the Redis store ---------------------------------------------------------------------------
# The rule of _advance, atomically in Redis. KEYS[1] = the job's hash. ARGV = state, rank,
# time, reason, ttl, mode ('set' | 'claim' | 'cancel'), group, kind, group key prefix.
# Returns {moved, state, attempts, the group this update completed or nil}. Group keys are
# derived inside the script (fine on one Redis/Valkey node, not on Redis Cluster).
_ADVANCE_LUA = """
local job = KEYS[1]
local cur = tonumber(redis.call('HGET', job, 'rank') or '-1')
local mode = ARGV[6]
local function attempts() return tonumber(redis.call('HGET', job, 'attempts') or '0') end
if (mode == 'claim' and cur == 3) or (mode == 'cancel' and (cur < 0 or cur >= 2)) then
  return {0, redis.call('HGET', job, 'state'), attempts(), false}
end
redis.call('HSETNX', job, 't_' .. ARGV[1], ARGV[3])
if ARGV[7] ~= '' then redis.call('HSETNX', job, 'group', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSETNX', job, 'kind', ARGV[8]) end
if ARGV[1] == 'running' then redis.call('HINCRBY', job, 'attempts', 1) end
if ARGV[1] == 'batched' then redis.call('HINCRBY', job, 'dispatches', 1) end
local rank = tonumber(ARGV[2])
local moved, done = 0, false
if rank > cur or (rank == cur and cur < 3) then
  moved = 1
  redis.call('HSET', job, 'state', ARGV[1], 'rank', ARGV[2], 'updated_at', ARGV[3],
             'reason', ARGV[4])
  local group = redis.call('HGET', job, 'group')
  if rank == 3 and group then
    local gk = ARGV[9] .. group
    if redis.call('SADD', gk .. ':done', job) == 1 then
      redis.call('HINCRBY', gk, ARGV[1], 1)
      local total = tonumber(redis.call('HGET', gk, 'total') or '-1')
      if redis.call('SCARD', gk .. ':done') == total then done = group end
    end
  end
end
redis.call('EXPIRE', job, tonumber(ARGV[5]))
return {moved, redis.call('HGET', job, 'state'), attempts(), done}
"""

# Forget a job; if it had counted towards its group, uncount it. KEYS[1] = job hash,
# ARGV[1] = group key prefix.
_RESET_LUA = """
local group = redis.call('HGET', KEYS[1], 'group')
local state = redis.call('HGET', KEYS[1], 'state')
if group and redis.call('SREM', ARGV[1] .. group .. ':done', KEYS[1]) == 1 then
  redis.call('HINCRBY', ARGV[1] .. group, state, -1)
end
return redis.call('DEL', KEYS[1])
"""


class RedisStatusStore:
    """Status as one hash per job in Redis/Valkey, written in pipelined Lua calls."""

    def __init__(
        self,
        settings: BlazeSettings,
        client: redis.Redis | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.url = settings.redis_url
        pw = settings.redis.password
        self.client = client or redis.Redis.from_url(
            self.url,
            password=pw.get_secret_value() if pw else None,
            socket_connect_timeout=5,
            socket_timeout=30,
            health_check_interval=30,
        )
        self.prefix = f"{settings.namespace}:job:"
        self.group_prefix = f"{settings.namespace}:group:"
        self.ttl = settings.redis.status_ttl_s
        self.events = events
        self._advance = self.client.register_script(_ADVANCE_LUA)
        self._reset = self.client.register_script(_RESET_LUA)

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable("Redis", self.url.split("@")[-1], str(exc)[:200])

    def _run(self, calls: Sequence[tuple[StatusUpdate, str]]) -> tuple[list[Any], Applied]:
        """Run the advance script once per ``(update, mode)``, all in one round trip."""
        if not calls:
            return [], Applied()
        try:
            pipe = self.client.pipeline(transaction=False)
            for up, mode in calls:
                args = [
                    up.state.value,
                    up.state.rank,
                    repr(up.at),
                    up.reason[:2000],
                    self.ttl,
                    mode,
                    up.group,
                    up.kind,
                    self.group_prefix,
                ]
                self._advance(keys=[self.prefix + up.job_id], args=args, client=pipe)
            rows: list[Any] = pipe.execute()
        except redis.ConnectionError as exc:
            raise self._unavailable(exc) from None
        applied = Applied()
        for (up, _), row in zip(calls, rows, strict=True):
            if row[0]:
                applied.moved.append(up)
            if len(row) > 3 and row[3]:
                applied.groups_done.add(row[3].decode())
        if self.events is not None and applied.moved:
            self.events(applied.moved)
        return rows, applied

    def update(self, updates: Sequence[StatusUpdate]) -> Applied:
        return self._run([(up, "set") for up in updates])[1]

    def claim(self, job_ids: Sequence[str], at: float) -> dict[str, Claim]:
        rows, _ = self._run([(StatusUpdate(j, JobState.RUNNING, at=at), "claim") for j in job_ids])
        out: dict[str, Claim] = {}
        for j, (moved, state, attempts, _) in zip(job_ids, rows, strict=True):
            st = JobState(state.decode()) if state else None
            out[j] = Claim(bool(moved), st, int(attempts))
        return out

    def cancel(
        self, job_ids: Sequence[str], reason: str, at: float
    ) -> tuple[dict[str, JobState | None], Applied]:
        ups = [StatusUpdate(j, JobState.CANCELLED, reason, at) for j in job_ids]
        rows, applied = self._run([(up, "cancel") for up in ups])
        states = {
            j: (JobState(row[1].decode()) if row[1] else None)
            for j, row in zip(job_ids, rows, strict=True)
        }
        return states, applied

    def reset(self, job_ids: Iterable[str]) -> None:
        keys = [self.prefix + j for j in job_ids]
        if not keys:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                self._reset(keys=[key], args=[self.group_prefix], client=pipe)
            pipe.execute()
        except redis.ConnectionError as exc:
            raise self._unavailable(exc) from None

    def get(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
        ids = list(job_ids)
        try:
            pipe = self.client.pipeline(transaction=False)
            for j in ids:
                pipe.hgetall(self.prefix + j)
            rows = pipe.execute()
        except redis.ConnectionError as exc:
            raise self._unavailable(exc) from None
        out: dict[str, JobStatus | None] = {}
        for j, row in zip(ids, rows, strict=True):
            if not row or b"state" not in row:
                out[j] = None
                continue
            fields = {k.decode(): v.decode() for k, v in row.items()}
            times = {k[2:]: float(v) for k, v in fields.items() if k.startswith("t_")}
            out[j] = JobStatus(
                job_id=j,
                state=JobState(fields["state"]),
                updated_at=float(fields.get("updated_at", 0)),
                reason=fields.get("reason", ""),
                attempts=int(fields.get("attempts", 0)),
                times=times,
                dispatches=int(fields.get("dispatches", 0)),
                group=fields.get("group", ""),
                kind=fields.get("kind", ""),
            )
        return out

    def close(self) -> None:
        close = getattr(self.events, "close", None)
        if callable(close):
            close()
        self.client.close()

    def states(self, job_ids: Iterable[str]) -> dict[str, JobState | None]:
        ids = list(job_ids)
        try:
            pipe = self.client.pipeline(transaction=False)
            for j in ids:
                pipe.hget(self.prefix + j, "state")
            rows = pipe.execute()
        except redis.ConnectionError as exc:
            raise self._unavailable(exc) from None
        return {j: JobState(v.decode()) if v else None for j, v in zip(ids, rows, strict=True)}

    def open_group(self, group: str, total: int) -> None:
        key = self.group_prefix + group
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hsetnx(key, "total", total)
            pipe.expire(key, self.ttl)
            pipe.execute()
        except redis.ConnectionError as exc:
            raise self._unavailable(exc) from None

    def group_progress(self, group: str) -> GroupProgress:
        key = self.group_prefix + group
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(key)
            pipe.scard(key + ":done")
            row, done = pipe.execute()
        except redis.ConnectionError as exc:
            raise self._unavailable(exc) from None
        fields = {k.decode(): v.decode() for k, v in row.items()}
        total = int(fields.pop("total", -1))
        marks = {k[3:]: float(v) for k, v in fields.items() if k.startswith("at_")}
        counts = {k: int(v) for k, v in fields.items() if not k.startswith("at_") and int(v)}
        return GroupProgress(group, total, int(done), counts, marks)

    def mark_group(self, group: str, name: str, at: float) -> float:
        key = self.group_prefix + group
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.hsetnx(key, "at_" + name, repr(at))
            pipe.hget(key, "at_" + name)
            _, value = pipe.execute()
        except redis.ConnectionError as exc:
            raise self._unavailable(exc) from None
        return float(value)


def status_store(settings: BlazeSettings) -> RedisStatusStore:
    """The Redis store of these settings, publishing changes to the status topic if enabled."""
    events: EventSink | None = None
    if settings.kafka.status_events:
        from pipelines.events import KafkaStatusEvents

        events = KafkaStatusEvents(settings)
    return RedisStatusStore(settings, events=events)
