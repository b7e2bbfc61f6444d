"""The producer against the real embedded services (the stores' contracts: tests/contract)."""

import json

import pytest
from kafka import KafkaConsumer

from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.status import JobState

pytestmark = pytest.mark.integration


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
