"""The in-memory ``StatusStore``: for unit tests and docs; inspect its fields directly."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace

from pipelines.stores.status import (
    COUNTERS,
    RUNNING_RANK,
    Applied,
    Claim,
    EventSink,
    GroupProgress,
    JobState,
    JobStatus,
    StatusUpdate,
    moves,
    records_loc,
)


def _advance(current: JobStatus | None, up: StatusUpdate) -> JobStatus:
    """The job's status after ``up``: the rule of ``moves``, plus times, counters, group."""
    times = dict(current.times) if current else {}
    times.setdefault(up.state.value, up.at)
    counter = COUNTERS.get(up.state)
    attempts = (current.attempts if current else 0) + (counter == "attempts")
    dispatches = (current.dispatches if current else 0) + (counter == "dispatches")
    group = (current.group if current else "") or up.group
    kind = (current.kind if current else "") or up.kind
    loc = current.loc if current else ""
    version = up.version or (current.version if current else "")
    if current is None or moves(current.state.rank, up.state):
        state, at, reason = up.state, up.at, up.reason
    else:
        state, at, reason = current.state, current.updated_at, current.reason
    return JobStatus(
        up.job_id, state, at, reason, attempts, times, dispatches, group, kind, loc, version
    )


class MemoryStatusStore:
    """Status in a dict; ``history`` keeps every update, ``events`` the ones that moved a job."""

    def __init__(self, events: EventSink | None = None) -> None:
        self.jobs: dict[str, JobStatus] = {}
        self.history: list[StatusUpdate] = []
        self.events: list[StatusUpdate] = []
        self.groups: dict[str, tuple[int, set[str], dict[str, int]]] = {}
        self.marks: dict[str, dict[str, float]] = {}
        self.sink = events
        self.deaths: dict[str, int] = {}
        self._lock = threading.Lock()

    def _apply(self, up: StatusUpdate, out: Applied) -> None:
        self.history.append(up)
        current = self.jobs.get(up.job_id)
        moved = moves(current.state.rank if current else None, up.state)
        new = self.jobs[up.job_id] = _advance(current, up)
        if not new.loc and records_loc(up, moved, current.state if current else None):
            new = self.jobs[up.job_id] = replace(new, loc=up.loc)
        if up.loc:
            out.locs[up.job_id] = new.loc
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

    def _publish(self, out: Applied) -> Applied:
        if self.sink is not None and out.moved:
            self.sink(out.moved)
        return out

    def update(self, updates: Sequence[StatusUpdate]) -> Applied:
        out = Applied()
        with self._lock:
            for up in updates:
                self._apply(up, out)
        return self._publish(out)

    def claim(self, job_ids: Sequence[str], at: float) -> dict[str, Claim]:
        claims: dict[str, Claim] = {}
        out = Applied()
        with self._lock:
            for j in job_ids:
                cur = self.jobs.get(j)
                if cur is not None and cur.state.terminal:
                    claims[j] = Claim(False, cur.state, cur.attempts)
                    continue
                self._apply(StatusUpdate(j, JobState.RUNNING, at=at), out)
                claims[j] = Claim(True, JobState.RUNNING, self.jobs[j].attempts)
        self._publish(out)
        return claims

    def cancel(
        self, job_ids: Sequence[str], reason: str, at: float
    ) -> tuple[dict[str, JobState | None], Applied]:
        states: dict[str, JobState | None] = {}
        out = Applied()
        with self._lock:
            for j in job_ids:
                cur = self.jobs.get(j)
                if cur is not None and cur.state.rank < RUNNING_RANK:
                    self._apply(StatusUpdate(j, JobState.CANCELLED, reason, at), out)
                    cur = self.jobs[j]
                states[j] = None if cur is None else cur.state
        return states, self._publish(out)

    def get(self, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
        return {j: self.jobs.get(j) for j in job_ids}

    def states(self, job_ids: Iterable[str]) -> dict[str, JobState | None]:
        return {j: (st.state if (st := self.jobs.get(j)) else None) for j in job_ids}

    def reset(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            for j in job_ids:
                self.deaths.pop(j, None)
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

    def count_deaths(self, job_ids: Sequence[str]) -> dict[str, int]:
        with self._lock:
            for j in job_ids:
                self.deaths[j] = self.deaths.get(j, 0) + 1
            return {j: self.deaths[j] for j in job_ids}

    def mark_group(self, group: str, name: str, at: float) -> float:
        with self._lock:
            return self.marks.setdefault(group, {}).setdefault(name, at)

    def flush_events(self, timeout: float = 10) -> None:
        flush = getattr(self.sink, "flush", None)
        if callable(flush):
            flush(timeout)

    def close(self) -> None:
        close = getattr(self.sink, "close", None)
        if callable(close):
            close()
