"""Job status: the states, the rule that moves them, and the ``StatusStore`` contract.

States only move forward (queued → batched → running → terminal), whatever order the updates
arrive in, so a late "queued" from a producer never hides a "succeeded" from a worker.
Two moves are conditional and atomic: a worker *claims* a job (queued/batched → running,
refused once the job is terminal, e.g. cancelled) and a user *cancels* one (queued/batched →
cancelled, refused once it runs). Exactly one of the two wins for each job.

Jobs may belong to a *group* (an OpenAI-style batch): the store counts the group's terminal
jobs and tells the caller whose update settled the last one. Every call takes many jobs at
once: one round trip per batch, never per job. Every applied change can be published (the
status event topic) through an ``EventSink``.

The order of states is defined here once: the memory backend (``status_memory``) applies it
in Python and the Redis backend (``status_redis``) hands the same ranks to its Lua script.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


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
        return RANK[self]

    @property
    def terminal(self) -> bool:
        return self.rank == TERMINAL_RANK


RANK = {
    JobState.QUEUED: 0,
    JobState.BATCHED: 1,
    JobState.RUNNING: 2,
    JobState.SUCCEEDED: 3,
    JobState.FAILED: 3,
    JobState.DEAD: 3,
    JobState.CANCELLED: 3,
}
"""How far each state is along a job's life; a job never moves to a lower rank."""
RUNNING_RANK = RANK[JobState.RUNNING]
TERMINAL_RANK = RANK[JobState.SUCCEEDED]
COUNTERS = {JobState.RUNNING: "attempts", JobState.BATCHED: "dispatches"}
"""The counter an update to this state bumps, applied or not (a rerun is still an attempt)."""


def moves(current_rank: int | None, state: JobState) -> bool:
    """Whether an update to ``state`` changes a job now at ``current_rank`` (None: unknown).

    Forward only; a same-rank update replaces a non-terminal state; terminal states are final.
    """
    return (
        current_rank is None
        or state.rank > current_rank
        or (state.rank == current_rank and current_rank < TERMINAL_RANK)
    )


@dataclass(frozen=True)
class StatusUpdate:
    """One state change to record; ``group`` and ``kind`` stick from the first update."""

    job_id: str
    state: JobState
    reason: str = ""
    at: float = field(default_factory=time.time)
    group: str = ""
    kind: str = ""
    loc: str = ""
    """Where the job's result document lives (batch result layout); see ``records_loc``."""
    version: str = ""
    """The model version the job runs on (``name@N``); the latest one given is kept."""


def records_loc(up: StatusUpdate, moved: bool, state_before: JobState | None) -> bool:
    """Whether ``up`` records its ``loc`` on a job that has none yet: a terminal update that
    settles the job, or that repeats the terminal state the job already has (a cancelled
    job's stand-in document). The first one recorded stays: first writer wins."""
    return bool(up.loc) and up.state.terminal and (moved or state_before is up.state)


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
    loc: str = ""
    version: str = ""


@dataclass(frozen=True)
class Applied:
    """What one call changed: the updates that moved a job, groups it completed, and for
    each update that carried a ``loc`` the job's recorded loc after the call."""

    moved: list[StatusUpdate] = field(default_factory=list)
    groups_done: set[str] = field(default_factory=set)
    locs: dict[str, str] = field(default_factory=dict)


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

GroupsDone = Callable[[set[str]], None]
"""Hears of groups whose last job a call settled (e.g. finalizes OpenAI-style batches)."""


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

    def count_deaths(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Count one more worker death on each job (its batch's worker died while running
        it); returns each job's count so far."""
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

    def flush_events(self, timeout: float = 10) -> None:
        """Wait until the changes applied so far are published, so that a change another
        process makes after this hand-off can never precede them on the event topic."""
        ...

    def close(self) -> None:
        """Release connections (and the event sink's)."""
        ...
