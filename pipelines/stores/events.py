"""Status events: every applied job state change as one record, for systems that react.

The contract (``StatusEvents``) has a write side, called with the changes a status store
applied, and a read side. Backends: ``events_memory`` and ``events_kafka`` (topic
``{namespace}.status``, key = job id so one job's events stay ordered, value = JSON
``{"job_id", "state", "at", "reason", "group"}``). Events are best effort: the status store
(and the bucket, for results) stays the record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines.stores.status import JobState, StatusUpdate


@dataclass(frozen=True)
class StatusEvent:
    """One state change as read back."""

    job_id: str
    state: JobState
    at: float
    reason: str = ""
    group: str = ""

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "job_id": self.job_id,
            "state": self.state.value,
            "at": self.at,
            "reason": self.reason,
        }
        if self.group:
            doc["group"] = self.group
        return doc


def encode(up: StatusUpdate) -> bytes:
    """The wire form of one applied change."""
    event = StatusEvent(up.job_id, up.state, up.at, up.reason, up.group)
    return json.dumps(event.to_dict(), separators=(",", ":")).encode()


def decode(raw: bytes) -> StatusEvent:
    doc = json.loads(raw)
    return StatusEvent(
        doc["job_id"],
        JobState(doc["state"]),
        float(doc["at"]),
        doc.get("reason", ""),
        doc.get("group", ""),
    )


class StatusEvents(Protocol):
    """Publishes applied changes (an ``EventSink``) and reads them back."""

    def __call__(self, moved: Sequence[StatusUpdate]) -> None:
        """Publish; never raises for an unreachable backend (events are best effort)."""
        ...

    def flush(self, timeout: float = 10) -> None:
        """Wait until what was published can be read."""
        ...

    def read(self, *, follow: bool = False, idle_s: float = 2.0) -> Iterator[StatusEvent]:
        """Every event from the start; with ``follow``, keep waiting for new ones, else stop
        after ``idle_s`` without one."""
        ...

    def close(self) -> None: ...
