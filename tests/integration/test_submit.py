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


def test_resubmitting_reruns_only_what_did_not_succeed(settings: BlazeSettings) -> None:
    from pipelines.stores.status import JobState, StatusUpdate

    names = ("new", "failed", "dead", "cancelled", "succeeded", "queued", "running")
    jobs = {n: LLMJob(job_id=f"re-{n}", model="m", prompt=n) for n in names}
    with Client(settings) as client:
        client.submit_many(list(jobs.values())[1:])  # every one but "new" is known
        ok_key = settings.result_key("re-succeeded")
        client.result_store.put_many([(ok_key, b'{"kept": true}', "application/json")])
        old_key = settings.result_key("re-failed")
        client.result_store.put_many([(old_key, b'{"old": true}', "application/json")])
        for n in ("failed", "dead", "cancelled", "succeeded", "running"):
            if n == "succeeded":
                client.status_store.update([StatusUpdate("re-succeeded", JobState.RUNNING)])
            client.status_store.update([StatusUpdate(f"re-{n}", JobState(n))])

        done = client.resubmit(list(jobs.values()))

        assert [h.job_id for h in done.new] == ["re-new"]
        assert sorted(h.job_id for h in done.restarted) == ["re-cancelled", "re-dead", "re-failed"]
        assert done.kept == {
            "re-succeeded": JobState.SUCCEEDED,
            "re-queued": JobState.QUEUED,
            "re-running": JobState.RUNNING,
        }
        now = client.status([j.job_id for j in jobs.values()])
        assert {j: st.state for j, st in now.items() if st} == {
            "re-new": JobState.QUEUED,
            "re-failed": JobState.QUEUED,
            "re-dead": JobState.QUEUED,
            "re-cancelled": JobState.QUEUED,
            "re-succeeded": JobState.SUCCEEDED,
            "re-queued": JobState.QUEUED,
            "re-running": JobState.RUNNING,
        }
        # a rerun's old result goes; a success's stays
        kept = client.result_store.get_many([ok_key, old_key])
        assert kept == {ok_key: b'{"kept": true}', old_key: None}
