"""What a submit costs the broker: the embedded one (Tansu on SeaweedFS) writes one S3 object
per record batch it is sent, so a chunk of jobs must reach it as one batch per partition."""

from __future__ import annotations

import kafka.record.util
from minio import Minio

from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.kafka import read_from_start
from pipelines.settings import BlazeSettings


def test_record_batches_are_checksummed_in_c() -> None:
    # kafka-python's fallback is pure Python: 6 ms per 16 KiB batch, on every send and fetch
    assert kafka.record.util.crc32c_c is not None
    assert kafka.record.util.calc_crc32c.__defaults__ == (kafka.record.util.crc32c_c,)


def test_a_chunk_of_jobs_reaches_the_broker_as_one_record_batch_per_partition(
    settings: BlazeSettings,
) -> None:
    jobs = [LLMJob(model="m", prompt=f"prompt {i} " + "x" * 200) for i in range(500)]
    with Client(settings) as client:
        client.submit_many(jobs)  # one chunk of 500: about 160 KB, 10 default-sized batches
    topic = settings.jobs_topic("llm")
    s3 = settings.s3
    bucket = Minio(
        f"127.0.0.1:{settings.stack.s3_port}",
        access_key=s3.access_key,
        secret_key=s3.secret_key.get_secret_value(),
        secure=False,
    )
    batches = [
        o.object_name
        for o in bucket.list_objects(settings.stack.kafka_bucket, recursive=True)
        if f"/topics/{topic}/" in (o.object_name or "") and o.object_name.endswith(".batch")
    ]
    partitions = {name.split("/partitions/")[1].split("/")[0] for name in batches}
    assert len(batches) == len(partitions) <= settings.kafka.partitions
    read = {r.key.decode() for r in read_from_start(settings, topic, idle_s=2, name="check")}
    assert read == {j.job_id for j in jobs}
