"""The ``StatusEvents`` contract, on memory and on Kafka (the status topic on Tansu)."""

from __future__ import annotations

from pipelines.stores.events import StatusEvent, StatusEvents
from pipelines.stores.status import JobState, StatusUpdate


def test_published_changes_read_back_in_order_per_job(status_events: StatusEvents) -> None:
    moved = [
        StatusUpdate("a", JobState.QUEUED, at=1.0, group="batch_1"),
        StatusUpdate("b", JobState.QUEUED, at=1.5),
        StatusUpdate("a", JobState.RUNNING, at=2.0),
        StatusUpdate("a", JobState.FAILED, "boom", at=3.0),
    ]
    status_events(moved[:2])
    status_events(moved[2:])
    status_events.flush()
    got = list(status_events.read(idle_s=2))
    per_job = {j: [e for e in got if e.job_id == j] for j in ("a", "b")}
    assert per_job["a"] == [
        StatusEvent("a", JobState.QUEUED, 1.0, "", "batch_1"),
        StatusEvent("a", JobState.RUNNING, 2.0),
        StatusEvent("a", JobState.FAILED, 3.0, "boom"),
    ]
    assert per_job["b"] == [StatusEvent("b", JobState.QUEUED, 1.5)]
    assert len(got) == 4
    assert got[0].to_dict().keys() >= {"job_id", "state", "at", "reason"}


def test_nothing_published_reads_as_nothing(status_events: StatusEvents) -> None:
    assert list(status_events.read(idle_s=1)) == []
