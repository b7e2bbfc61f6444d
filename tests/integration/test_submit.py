"""What a submit costs the broker: the embedded one (Tansu on SeaweedFS) writes one S3 object
per record batch it is sent, so a chunk of jobs must reach it as one batch per partition."""

from __future__ import annotations

import kafka.record.util

from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.kafka import read_from_start
from pipelines.settings import BlazeSettings
from pipelines.stores.results_s3 import S3ResultStore


def test_record_batches_are_checksummed_in_c() -> None:
    # kafka-python's fallback is pure Python: 6 ms per 16 KiB batch, on every send and fetch
    assert kafka.record.util.crc32c_c is not None
    assert kafka.record.util.calc_crc32c.__defaults__ == (kafka.record.util.crc32c_c,)


def test_a_chunk_of_jobs_reaches_the_broker_as_one_record_batch_per_partition(
    settings: BlazeSettings,
) -> None:
    jobs = [LLMJob(model="m", prompt=f"prompt {i} " + "x" * 200) for i in range(500)]
    with Client(settings) as client:
        client.submit_many(jobs)  # one chunk of 500, about 160 KB: it went as 24 batches
    topic = settings.jobs_topic("llm")
    broker_bucket = settings.s3.model_copy(update={"bucket": settings.stack.kafka_bucket})
    stored = S3ResultStore(settings.model_copy(update={"s3": broker_bucket}))
    batches = [
        key
        for key in stored.list_keys("clusters/")
        if f"/topics/{topic}/" in key and key.endswith(".batch")
    ]
    partitions = {name.split("/partitions/")[1].split("/")[0] for name in batches}
    assert len(batches) == len(partitions) <= settings.kafka.partitions
    read = {r.key.decode() for r in read_from_start(settings, topic, idle_s=2, name="check")}
    assert read == {j.job_id for j in jobs}
