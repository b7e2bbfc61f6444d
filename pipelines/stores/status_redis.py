"""The Redis/Valkey ``StatusStore``: one hash per job, changed by Lua scripts in pipelines.

The scripts (``status_advance.lua``, ``status_group.lua`` beside this file) run by their SHA
and are loaded into a server only when it says it lacks them; the state order they apply comes
from ``pipelines.stores.status``.

Every key a script touches is declared, and a job's keys and a group's keys carry the job id
and the group name as hash tags, so each call stays in one Redis Cluster slot: a job's update
runs on the job's slot, and counting the jobs that ended towards their group is a second,
idempotent call on the group's slot (``status_group.lua``). The store runs the same way on one
Redis and on a cluster (``redis.status_url`` with ``redis.status_cluster``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import redis
from redis.crc import key_slot
from redis.exceptions import ClusterError, NoScriptError

from pipelines.errors import ServiceUnavailable
from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import status_redis_client
from pipelines.stores.status import (
    COUNTERS,
    RUNNING_RANK,
    TERMINAL_RANK,
    Applied,
    Claim,
    EventSink,
    GroupProgress,
    JobState,
    JobStatus,
    StatusUpdate,
)


def _script(name: str) -> str:
    return resources.files("pipelines.stores").joinpath(name).read_text(encoding="utf-8")


ADVANCE_LUA = _script("status_advance.lua")
GROUP_LUA = _script("status_group.lua")
CHUNK = 500  # updates per script call: Redis runs nothing else while a script runs
_DOWN = (redis.ConnectionError, redis.TimeoutError, ClusterError)
Call = tuple[str, list[str], list[Any]]
"""One script call: the script's text, its keys, its arguments."""


def job_key(namespace: str, job_id: str) -> str:
    """A job's status hash; the job id is its hash tag (its Redis Cluster slot)."""
    return f"{namespace}:job:{{{job_id}}}"


def group_key(namespace: str, group: str) -> str:
    """A group's hash (``+ ":done"``: the set of its counted jobs), tagged by the group."""
    return f"{namespace}:group:{{{group}}}"


@functools.cache
def _sha(text: str) -> str:
    """The script's SHA (computed once per script, not per call)."""
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


class RedisStatusStore:
    """Status as one hash per job in Redis/Valkey (or a Redis Cluster), written in pipelined
    Lua calls."""

    def __init__(
        self,
        settings: BlazeSettings,
        client: redis.Redis | redis.RedisCluster | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.url = settings.redis.status_url or settings.redis_url
        self.client = client or status_redis_client(settings, health_check_s=30)
        self.cluster = isinstance(self.client, redis.RedisCluster)
        self.ns = settings.namespace
        self.ttl = settings.redis.status_ttl_s
        self.events = events

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable("Redis", self.url.split("@")[-1], str(exc)[:200])

    def _key(self, job_id: str) -> str:
        return job_key(self.ns, job_id)

    def _slot(self, job_id: str) -> int:
        return key_slot(self._key(job_id).encode()) if self.cluster else 0

    def _pipeline(self, transaction: bool = False) -> Any:
        return self.client.pipeline(transaction=transaction)

    def _eval(self, calls: Sequence[Call]) -> list[Any]:
        """Run script calls in one pipeline (one round trip per node). A server that lacks a
        script (new, or restarted) is given it, and only the calls it refused run again."""
        out: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = self._pipeline()
            for i in todo:
                text, keys, args = calls[i]
                # execute_command: redis-py's cluster pipeline blocks its evalsha method, for
                # want of script loading; this method loads what a server lacks (below)
                pipe.execute_command("EVALSHA", _sha(text), len(keys), *keys, *args)
            rows = pipe.execute(raise_on_error=False)
            missing = []
            for i, row in zip(todo, rows, strict=True):
                if isinstance(row, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(row, Exception):
                    raise row
                else:
                    out[i] = row
            if not missing:
                break
            for text in {calls[i][0] for i in missing}:
                self.client.script_load(text)  # on a cluster: every primary
            todo = missing
        return out

    def _run(self, calls: Sequence[tuple[StatusUpdate, str]]) -> tuple[list[Any], Applied]:
        """Apply ``(update, mode)`` pairs: one script call per mode, slot and ``CHUNK``
        updates, all in one round trip; then the jobs that ended are counted towards their
        groups (a second round trip, only when there are any)."""
        if not calls:
            return [], Applied()
        parts: dict[tuple[str, int], list[int]] = {}
        for i, (up, mode) in enumerate(calls):
            parts.setdefault((mode, self._slot(up.job_id)), []).append(i)
        script_calls: list[Call] = []
        order: list[list[int]] = []
        for (mode, _), idx in parts.items():
            for start in range(0, len(idx), CHUNK):
                part = idx[start : start + CHUNK]
                args: list[Any] = [mode, self.ttl, RUNNING_RANK, TERMINAL_RANK]
                for i in part:
                    up = calls[i][0]
                    args += [
                        up.state.value,
                        up.state.rank,
                        repr(up.at),
                        up.reason[:2000],
                        up.group,
                        up.kind,
                        COUNTERS.get(up.state, ""),
                        up.loc,
                        up.version,
                    ]
                script_calls.append(
                    (ADVANCE_LUA, [self._key(calls[i][0].job_id) for i in part], args)
                )
                order.append(part)
        rows: list[Any] = [None] * len(calls)
        try:
            for part, chunk in zip(order, self._eval(script_calls), strict=True):
                for i, row in zip(part, chunk, strict=True):
                    rows[i] = row
            ended: dict[str, list[str]] = {}
            for (up, _), row in zip(calls, rows, strict=True):
                if row[3]:
                    ended.setdefault(row[3].decode(), []).extend([up.job_id, row[1].decode()])
            done = self._count(ended, "add")
        except _DOWN as exc:
            raise self._unavailable(exc) from None
        applied = Applied(groups_done=done)
        for (up, _), row in zip(calls, rows, strict=True):
            if row[0]:
                applied.moved.append(up)
            if up.loc:
                applied.locs[up.job_id] = row[4].decode() if row[4] else ""
        if self.events is not None and applied.moved:
            self.events(applied.moved)
        return rows, applied

    def _count(self, jobs_of: dict[str, list[str]], mode: str) -> set[str]:
        """Run ``status_group.lua`` per group over ``[job id, state, ...]``; the groups whose
        last job this call counted."""
        groups = list(jobs_of)
        calls: list[Call] = []
        for g in groups:
            key = group_key(self.ns, g)
            calls.append((GROUP_LUA, [key, key + ":done"], [mode, self.ttl, *jobs_of[g]]))
        return {g for g, completed in zip(groups, self._eval(calls), strict=True) if completed}

    def update(self, updates: Sequence[StatusUpdate]) -> Applied:
        return self._run([(up, "set") for up in updates])[1]

    def claim(self, job_ids: Sequence[str], at: float) -> dict[str, Claim]:
        rows, _ = self._run([(StatusUpdate(j, JobState.RUNNING, at=at), "claim") for j in job_ids])
        out: dict[str, Claim] = {}
        for j, row in zip(job_ids, rows, strict=True):
            moved, state, attempts = row[:3]
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

    def count_deaths(self, job_ids: Sequence[str]) -> dict[str, int]:
        if not job_ids:
            return {}
        try:
            pipe = self._pipeline()
            for j in job_ids:
                pipe.hincrby(self._key(j), "deaths", 1)
            counts = pipe.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return {j: int(n) for j, n in zip(job_ids, counts, strict=True)}

    def reset(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        if not ids:
            return
        try:
            pipe = self._pipeline()
            for j in ids:
                pipe.hmget(self._key(j), "group", "state", "rank")
            ended: dict[str, list[str]] = {}
            for j, (group, state, rank) in zip(ids, pipe.execute(), strict=True):
                if group and rank and int(rank) >= TERMINAL_RANK:
                    ended.setdefault(group.decode(), []).extend([j, state.decode()])
            self._count(ended, "remove")  # first: a reset that dies here is simply rerun
            pipe = self._pipeline()
            for j in ids:
                pipe.delete(self._key(j))
            pipe.execute()
        except _DOWN as exc:
            raise self._unavailable(exc) from None

    def get(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
        ids = list(job_ids)
        try:
            pipe = self._pipeline()
            for j in ids:
                pipe.hgetall(self._key(j))
            rows = pipe.execute()
        except _DOWN as exc:
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
                loc=fields.get("loc", ""),
                version=fields.get("version", ""),
            )
        return out

    def flush_events(self, timeout: float = 10) -> None:
        flush = getattr(self.events, "flush", None)
        if callable(flush):
            flush(timeout)

    def close(self) -> None:
        close = getattr(self.events, "close", None)
        if callable(close):
            close()
        self.client.close()

    def states(self, job_ids: Iterable[str]) -> dict[str, JobState | None]:
        ids = list(job_ids)
        try:
            pipe = self._pipeline()
            for j in ids:
                pipe.hget(self._key(j), "state")
            rows = pipe.execute()
        except _DOWN as exc:
            raise self._unavailable(exc) from None
        return {j: JobState(v.decode()) if v else None for j, v in zip(ids, rows, strict=True)}

    def open_group(self, group: str, total: int) -> None:
        key = group_key(self.ns, group)
        try:
            pipe = self._pipeline(transaction=True)
            pipe.hsetnx(key, "total", total)
            pipe.expire(key, self.ttl)
            pipe.execute()
        except _DOWN as exc:
            raise self._unavailable(exc) from None

    def group_progress(self, group: str) -> GroupProgress:
        key = group_key(self.ns, group)
        try:
            pipe = self._pipeline()
            pipe.hgetall(key)
            pipe.scard(key + ":done")
            row, done = pipe.execute()
        except _DOWN as exc:
            raise self._unavailable(exc) from None
        fields = {k.decode(): v.decode() for k, v in row.items()}
        total = int(fields.pop("total", -1))
        marks = {k[3:]: float(v) for k, v in fields.items() if k.startswith("at_")}
        counts = {k: int(v) for k, v in fields.items() if not k.startswith("at_") and int(v)}
        return GroupProgress(group, total, int(done), counts, marks)

    def mark_group(self, group: str, name: str, at: float) -> float:
        key = group_key(self.ns, group)
        try:
            pipe = self._pipeline(transaction=True)
            pipe.hsetnx(key, "at_" + name, repr(at))
            pipe.hget(key, "at_" + name)
            _, value = pipe.execute()
        except _DOWN as exc:
            raise self._unavailable(exc) from None
        return float(value)
