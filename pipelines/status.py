"""Job status: the ``StatusStore`` contract, an in-memory store and the Redis store.

States only move forward (queued → batched → running → terminal), whatever order the updates
arrive in, so a late "queued" from a producer never hides a "succeeded" from a worker.
Every call takes many jobs at once: one round trip per batch, never per job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

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
    """One state change to record."""

    job_id: str
    state: JobState
    reason: str = ""
    at: float = field(default_factory=time.time)


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


class StatusStore(Protocol):
    def update(self, updates: Sequence[StatusUpdate]) -> None: ...

    def reset(self, job_ids: Iterable[str]) -> None:
        """Forget jobs' states (a dead letter replayed after a fix starts again)."""
        ...

    def get(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]: ...


def _advance(current: JobStatus | None, up: StatusUpdate) -> JobStatus:
    """The rule both stores follow: forward only; terminal states are final."""
    times = dict(current.times) if current else {}
    times.setdefault(up.state.value, up.at)
    attempts = (current.attempts if current else 0) + (up.state is JobState.RUNNING)
    dispatches = (current.dispatches if current else 0) + (up.state is JobState.BATCHED)
    moves = (
        current is None
        or up.state.rank > current.state.rank
        or (up.state.rank == current.state.rank and not current.state.terminal)
    )
    base = up if moves or current is None else current
    if isinstance(base, StatusUpdate):
        return JobStatus(up.job_id, up.state, up.at, up.reason, attempts, times, dispatches)
    return JobStatus(
        base.job_id, base.state, base.updated_at, base.reason, attempts, times, dispatches
    )


class MemoryStatusStore:
    """Status in a dict, for unit tests; ``history`` keeps every update received."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobStatus] = {}
        self.history: list[StatusUpdate] = []
        self._lock = threading.Lock()

    def update(self, updates: Sequence[StatusUpdate]) -> None:
        with self._lock:
            for up in updates:
                self.history.append(up)
                self.jobs[up.job_id] = _advance(self.jobs.get(up.job_id), up)

    def get(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
        return {j: self.jobs.get(j) for j in job_ids}

    def reset(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            for j in job_ids:
                self.jobs.pop(j, None)


# The same rule as _advance, atomically in Redis: KEYS[1] = job hash;
# ARGV = state, rank, time, reason, ttl.
_ADVANCE_LUA = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'rank') or '-1')
redis.call('HSETNX', KEYS[1], 't_' .. ARGV[1], ARGV[3])
if ARGV[1] == 'running' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
if ARGV[1] == 'batched' then redis.call('HINCRBY', KEYS[1], 'dispatches', 1) end
local rank = tonumber(ARGV[2])
if rank > cur or (rank == cur and cur < 3) then
  redis.call('HSET', KEYS[1], 'state', ARGV[1], 'rank', ARGV[2],
             'updated_at', ARGV[3], 'reason', ARGV[4])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return 1
"""


class RedisStatusStore:
    """Status as one hash per job in Redis/Valkey, written in pipelined Lua calls."""

    def __init__(self, settings: BlazeSettings, client: redis.Redis | None = None) -> None:
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
        self.ttl = settings.redis.status_ttl_s
        self._advance = self.client.register_script(_ADVANCE_LUA)

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable("Redis", self.url.split("@")[-1], str(exc)[:200])

    def update(self, updates: Sequence[StatusUpdate]) -> None:
        if not updates:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for up in updates:
                args = [up.state.value, up.state.rank, repr(up.at), up.reason[:2000], self.ttl]
                self._advance(keys=[self.prefix + up.job_id], args=args, client=pipe)
            pipe.execute()
        except redis.ConnectionError as exc:
            raise self._unavailable(exc) from None

    def reset(self, job_ids: Iterable[str]) -> None:
        keys = [self.prefix + j for j in job_ids]
        if not keys:
            return
        try:
            self.client.delete(*keys)
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
            )
        return out
