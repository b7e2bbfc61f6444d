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


def test_a_record_of_an_earlier_version_holding_one_event_reads_as_one() -> None:
    from pipelines.stores.events import decode

    old = b'{"job_id":"a","state":"queued","at":1.0,"reason":""}'
    assert decode(old) == [StatusEvent("a", JobState.QUEUED, 1.0)]


def test_a_call_publishes_one_record_per_partition_not_one_per_event(
    status_events: StatusEvents,
) -> None:
    from pipelines.stores.events_kafka import KafkaStatusEvents

    ups = [StatusUpdate(f"job{i}", JobState.RUNNING, at=float(i)) for i in range(64)]
    status_events(ups)
    status_events.flush()
    got = list(status_events.read(idle_s=2))
    assert sorted(e.job_id for e in got) == sorted(u.job_id for u in ups)
    if isinstance(status_events, KafkaStatusEvents):
        from pipelines.kafka import read_from_start

        records = list(
            read_from_start(
                status_events.settings, status_events.topic, idle_s=2, name="test-records"
            )
        )
        assert len(records) <= status_events.settings.kafka.partitions
        # each job's events are in the partition its id hashes to, as a keyed record's would be
        from kafka.partitioner.default import murmur2

        n = status_events.settings.kafka.partitions
        for rec in records:
            for ev in decode_record(rec.value):
                assert (murmur2(ev.job_id.encode()) & 0x7FFFFFFF) % n == rec.partition


def decode_record(raw: bytes) -> list[StatusEvent]:
    from pipelines.stores.events import decode

    return decode(raw)
