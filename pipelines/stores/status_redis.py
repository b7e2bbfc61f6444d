"""The Redis/Valkey ``StatusStore``: one hash per job, changed by Lua scripts in pipelines.

The scripts (``status_advance.lua``, ``status_reset.lua`` beside this file) are loaded once per
process; the state order they apply comes from ``pipelines.stores.status``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import redis

from pipelines.errors import ServiceUnavailable
from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import redis_client
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
CHUNK = 500  # updates per script call: Redis runs nothing else while a script runs
RESET_LUA = _script("status_reset.lua")


class RedisStatusStore:
    """Status as one hash per job in Redis/Valkey, written in pipelined Lua calls."""

    def __init__(
        self,
        settings: BlazeSettings,
        client: redis.Redis | None = None,
        events: EventSink | None = None,
    ) -> None:
        self.url = settings.redis_url
        self.client = client or redis_client(settings, health_check_s=30)
        self.prefix = f"{settings.namespace}:job:"
        self.group_prefix = f"{settings.namespace}:group:"
        self.ttl = settings.redis.status_ttl_s
        self.events = events
        self._advance = self.client.register_script(ADVANCE_LUA)
        self._reset = self.client.register_script(RESET_LUA)

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable("Redis", self.url.split("@")[-1], str(exc)[:200])

    def _run(self, calls: Sequence[tuple[StatusUpdate, str]]) -> tuple[list[Any], Applied]:
        """Run the advance script over ``(update, mode)`` pairs: one script call per mode and
        ``CHUNK`` updates, all in one round trip."""
        if not calls:
            return [], Applied()
        try:
            pipe = self.client.pipeline(transaction=False)
            order: list[int] = []
            for mode in dict.fromkeys(m for _, m in calls):
                idx = [i for i, (_, m) in enumerate(calls) if m == mode]
                for start in range(0, len(idx), CHUNK):
                    part = idx[start : start + CHUNK]
                    args: list[Any] = [mode, self.ttl, self.group_prefix, RUNNING_RANK]
                    args.append(TERMINAL_RANK)
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
                    keys = [self.prefix + calls[i][0].job_id for i in part]
                    self._advance(keys=keys, args=args, client=pipe)
                    order += part
            rows_of = [row for chunk in pipe.execute() for row in chunk]
            rows: list[Any] = [None] * len(calls)
            for i, row in zip(order, rows_of, strict=True):
                rows[i] = row
        except redis.ConnectionError as exc:
            raise self._unavailable(exc) from None
        applied = Applied()
        for (up, _), row in zip(calls, rows, strict=True):
            if row[0]:
                applied.moved.append(up)
            if len(row) > 3 and row[3]:
                applied.groups_done.add(row[3].decode())
            if up.loc:
                applied.locs[up.job_id] = row[4].decode() if len(row) > 4 and row[4] else ""
        if self.events is not None and applied.moved:
            self.events(applied.moved)
        return rows, applied

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
            pipe = self.client.pipeline(transaction=False)
            for j in job_ids:
                pipe.hincrby(self.prefix + j, "deaths", 1)
            counts = pipe.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return {j: int(n) for j, n in zip(job_ids, counts, strict=True)}

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
