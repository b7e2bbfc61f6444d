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


def test_the_stacks_redis_and_s3_refuse_callers_without_the_generated_secrets(
    settings: BlazeSettings,
) -> None:
    import redis
    from minio import Minio
    from minio.error import S3Error

    port = settings.stack.redis_port
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="blaze").ping()
    pw = settings.redis.password
    assert pw is not None and redis.Redis(port=port, password=pw.get_secret_value()).ping()
    old = Minio(
        settings.s3_endpoint, access_key="blaze", secret_key="blaze-secret-key", secure=False
    )
    with pytest.raises(S3Error):
        old.bucket_exists(settings.s3.bucket)
    state = settings.stack.state_dir
    for name in ("secrets.json", "valkey.conf", "seaweedfs-identities.json"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name
