"""The storage, status and producer contracts against the real embedded services."""

import io
import json

import pytest
from kafka import KafkaConsumer

from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.status import JobState, RedisStatusStore, StatusUpdate
from pipelines.storage import S3ResultStore

pytestmark = pytest.mark.integration


def test_s3_store_round_trip(settings: BlazeSettings) -> None:
    store = S3ResultStore(settings)
    items = [
        (
            f"{settings.namespace}/jobs/j{i}/result.json",
            f'{{"i": {i}}}'.encode(),
            "application/json",
        )
        for i in range(40)
    ]
    store.put_many(items)
    keys = [k for k, _, _ in items]
    assert store.existing([*keys, f"{settings.namespace}/jobs/nope/result.json"]) == set(keys)
    assert json.loads(store.get(keys[7]) or b"") == {"i": 7}
    assert store.get(f"{settings.namespace}/missing") is None
    assert store.list_keys(f"{settings.namespace}/jobs/") == sorted(keys)
    store.close()


def test_s3_store_first_writer_wins_and_large_objects_go_in_parts(
    settings: BlazeSettings,
) -> None:
    small = settings.model_copy(
        update={"s3": settings.s3.model_copy(update={"multipart_threshold_mb": 5})}
    )
    store = S3ResultStore(small)
    ns = settings.namespace
    big = bytes(range(256)) * (6 << 12)  # 6 MiB: above the threshold, uploaded in parts
    first = [(f"{ns}/a.json", b"1", "application/json"), (f"{ns}/big.bin", big, "x/bin")]
    assert store.put_many(first, if_absent=True) == set()
    again = [(f"{ns}/a.json", b"2", "application/json"), (f"{ns}/big.bin", b"small", "x/bin")]
    assert store.put_many(again, if_absent=True) == {f"{ns}/a.json", f"{ns}/big.bin"}
    assert store.get(f"{ns}/a.json") == b"1" and store.get(f"{ns}/big.bin") == big
    stream = io.BytesIO(big * 2)
    store.put_stream(f"{ns}/stream.bin", stream, "x/bin")  # unknown length: multipart
    assert store.get(f"{ns}/stream.bin") == big * 2
    assert store.delete_many([f"{ns}/a.json", f"{ns}/missing"]) == 2
    assert store.get(f"{ns}/a.json") is None
    store.close()


def test_redis_status_moves_forward_only(settings: BlazeSettings) -> None:
    store = RedisStatusStore(settings)
    ids = [f"s{i}" for i in range(200)]
    store.update([StatusUpdate(j, JobState.RUNNING, at=2.0) for j in ids])
    store.update([StatusUpdate(j, JobState.SUCCEEDED, at=3.0) for j in ids[:100]])
    store.update([StatusUpdate(j, JobState.QUEUED, at=1.0) for j in ids])  # late and out of order
    got = store.get([*ids, "never"])
    assert got["never"] is None
    assert {got[j].state for j in ids[:100]} == {JobState.SUCCEEDED}  # type: ignore[union-attr]
    assert {got[j].state for j in ids[100:]} == {JobState.RUNNING}  # type: ignore[union-attr]
    s0 = got["s0"]
    assert (
        s0 is not None
        and s0.attempts == 1
        and s0.times == {"running": 2.0, "succeeded": 3.0, "queued": 1.0}
    )


def test_submit_publishes_keyed_jobs_and_marks_them_queued(settings: BlazeSettings) -> None:
    jobs = [LLMJob(model="tiny", prompt=f"p{i}") for i in range(25)]
    with Client(settings) as client:
        handles = client.submit_many(jobs)
        assert [h.job_id for h in handles] == [j.job_id for j in jobs]
        st = handles[3].status()
        assert st is not None and st.state is JobState.QUEUED
    consumer = KafkaConsumer(
        settings.jobs_topic("llm"),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=8000,
    )
    got = {m.key.decode(): json.loads(m.value) for m in consumer}
    consumer.close()
    assert set(got) == {j.job_id for j in jobs}
    assert got[jobs[0].job_id]["prompt"] == "p0"
