"""The results side on the real services: bucket layout, status events, cancellation, reruns."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

import pytest
from minio import Minio

from consumers.dispatch import CeleryDispatcher
from engines.base import Output
from engines.cache import EngineCache
from engines.runner import BatchRunner
from pipelines.client import Client
from pipelines.jobs import AnyJob, DiffusionJob, LLMJob
from pipelines.results import DiffusionResult, LLMResult
from pipelines.retention import sweep
from pipelines.settings import BlazeSettings
from pipelines.stores.connect import status_store
from pipelines.stores.events_kafka import KafkaStatusEvents
from pipelines.stores.results_s3 import S3ResultStore
from pipelines.stores.status import JobState
from pipelines.stores.status_redis import RedisStatusStore
from pipelines.tasks import batch_payload
from tests.integration.conftest import running_intake, running_worker

pytestmark = pytest.mark.integration


def plain_s3(settings: BlazeSettings) -> Minio:
    """A bare S3 client, as a user with only the bucket's credentials would have."""
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3.access_key,
        secret_key=settings.s3.secret_key.get_secret_value(),
        secure=False,
    )


class BucketReader(threading.Thread):
    """Polls the bucket for result documents and checks each is whole the first time seen."""

    def __init__(self, settings: BlazeSettings, expect: int) -> None:
        super().__init__(daemon=True)
        self.s3 = plain_s3(settings)
        self.bucket = settings.s3.bucket
        self.prefix = f"{settings.namespace}/jobs/"
        self.expect = expect
        self.seen: dict[str, dict[str, Any]] = {}
        self.problems: list[str] = []
        self.polls = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.seen) < self.expect:
            self.polls += 1
            for obj in self.s3.list_objects(self.bucket, prefix=self.prefix, recursive=True):
                key = obj.object_name or ""
                if not key.endswith("/result.json") or key in self.seen:
                    continue
                self.check(key)
            time.sleep(0.05)

    def check(self, key: str) -> None:
        resp = self.s3.get_object(self.bucket, key)
        raw = resp.read()
        resp.close()
        resp.release_conn()
        try:
            doc = json.loads(raw)
        except ValueError:
            self.problems.append(f"{key}: not whole JSON ({len(raw)} bytes)")
            return
        if doc.get("status") != "succeeded" or key != f"{self.prefix}{doc['job_id']}/result.json":
            self.problems.append(f"{key}: {doc.get('status')} {doc.get('error')}")
        for image in doc.get("images", []):
            got = self.s3.get_object(self.bucket, image["key"])
            png = got.read()
            got.close()
            got.release_conn()
            if not png.startswith(b"\x89PNG") or len(png) != image["bytes"]:
                self.problems.append(f"{image['key']}: missing or partial image")
        self.seen[key] = doc


def test_a_bucket_reader_never_sees_a_partial_result_and_ends_with_all_200(
    settings: BlazeSettings,
) -> None:
    jobs: list[AnyJob] = [
        LLMJob(model="tiny" if i % 2 else "tiny2", prompt=f"question {i}", max_new_tokens=4)
        for i in range(160)
    ]
    jobs += [
        DiffusionJob(
            model="sd-tiny",
            prompt=f"a fox {i}",
            width=64,
            height=64,
            num_inference_steps=2,
            num_images=1 + i % 2,
        )
        for i in range(40)
    ]
    reader = BucketReader(settings, expect=len(jobs))
    reader.start()
    with running_worker(settings), running_intake(settings), Client(settings) as client:
        client.submit_many(jobs)
        ids = [j.job_id for j in jobs]
        got = {r.job_id: r for r in client.iter_results(ids, timeout=240)}
    reader.join(60)
    reader.stop.set()
    assert reader.problems == []
    assert len(reader.seen) == 200 and reader.polls > 3
    assert set(got) == set(ids) and all(r.status == "succeeded" for r in got.values())
    assert all(isinstance(got[j.job_id], LLMResult) for j in jobs[:160])
    fox = got[jobs[161].job_id]
    assert isinstance(fox, DiffusionResult) and len(fox.images) == 2
    assert all(r.provenance["seed"] is not None for r in got.values())  # derived, reproducible

    # one manifest per dispatched batch, naming every job exactly once
    store = S3ResultStore(settings)
    manifests = store.list_keys(f"{settings.namespace}/batches/")
    named: list[str] = []
    for key in manifests:
        doc = json.loads(store.get(key) or b"{}")
        assert doc["worker"] and doc["device"] == "cpu" and doc["finished_at"] >= doc["started_at"]
        named += [row["job_id"] for row in doc["jobs"] if row["status"] == "succeeded"]
    assert sorted(named) == sorted(ids) and 1 < len(manifests) < len(ids)

    # a presigned URL serves an image to someone without credentials
    with Client(settings) as client:
        url, _ = client.urls(fox.job_id, expires_s=300)
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read().startswith(b"\x89PNG")

    # every state change is on the status topic, in order per job
    seen: dict[str, list[JobState]] = {}
    for ev in KafkaStatusEvents(settings).read(idle_s=3):
        seen.setdefault(ev.job_id, []).append(ev.state)
    for jid in ids:
        states = seen[jid]
        assert states[-1] is JobState.SUCCEEDED, (jid, states)
        assert {JobState.QUEUED, JobState.BATCHED, JobState.RUNNING} <= set(states), states
        assert [s.rank for s in states] == sorted(s.rank for s in states), states


def test_cancelling_half_of_a_queued_batch_cancels_exactly_those(settings: BlazeSettings) -> None:
    jobs = [LLMJob(model="tiny", prompt=f"p{i}", max_new_tokens=2) for i in range(20)]
    half = [j.job_id for j in jobs[::2]]
    with Client(settings) as client:
        client.submit_many(jobs)  # no consumer yet: every job waits on Kafka
        states = client.cancel([*half, "never-submitted"])
        assert {states[j] for j in half} == {JobState.CANCELLED}
        assert states["never-submitted"] is None
        with running_worker(settings), running_intake(settings):
            final = client.wait([j.job_id for j in jobs], timeout=120)
            cancelled = {j for j, s in final.items() if s.state is JobState.CANCELLED}
            assert cancelled == set(half)
            assert all(final[j.job_id].state is JobState.SUCCEEDED for j in jobs[1::2])
            assert all(final[j].attempts == 0 for j in half)  # never ran
            # the worker that met them wrote a cancelled result, so bucket pollers see it too
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                docs = [client.result(j) for j in half]
                if all(d is not None for d in docs):
                    break
                time.sleep(0.3)
            assert {d.status for d in docs if d is not None} == {"cancelled"}
            assert len([d for d in docs if d is not None]) == len(half)
        again = client.cancel([jobs[1].job_id])
        assert again[jobs[1].job_id] is JobState.SUCCEEDED  # too late: it already ran


class Stamp:
    """An engine that stamps its name into every output, so two attempts differ."""

    def __init__(self, name: str, mark: str) -> None:
        self.name, self.mark = name, mark

    def load(self, device: str) -> None:
        pass

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        return [Output(text=f"{self.mark}:{j.prompt}", finish_reason="stop") for j in batch]

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "engine": self.mark}


def test_a_redelivered_job_leaves_one_result(settings: BlazeSettings) -> None:
    jobs = [LLMJob(model="tiny", prompt=f"r{i}", max_new_tokens=3) for i in range(6)]
    payload = batch_payload(
        [j.model_dump(mode="json") for j in jobs], batch_id="redelivered", queued_at=time.time()
    )
    store = S3ResultStore(settings)
    status = RedisStatusStore(settings)
    keys = [settings.result_key(j.job_id) for j in jobs]

    # the same batch delivered twice to a real worker: the second delivery runs nothing
    with running_worker(settings), Client(settings) as client:
        dispatcher = CeleryDispatcher(settings)
        dispatcher.dispatch(settings.queue("llm", "cpu"), payload)
        client.wait([j.job_id for j in jobs], timeout=60)
        first = store.get_many(keys)
        dispatcher.dispatch(settings.queue("llm", "cpu"), payload)
        manifest = settings.manifest_key("redelivered")
        deadline = time.monotonic() + 30
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not rows:
            rows = json.loads(store.get(manifest) or b"{}").get("jobs", [])
            rows = rows if {r["status"] for r in rows} == {"skipped"} else []
            time.sleep(0.2)
        assert len(rows) == len(jobs)  # the second delivery ran nothing
        assert store.get_many(keys) == first
        assert all(len(store.list_keys(settings.result_prefix(j.job_id))) == 1 for j in jobs)

    # two attempts racing with the status lost in between: the first write wins, both agree
    race = [LLMJob(model="m", prompt=f"x{i}") for i in range(4)]
    race_payload = batch_payload(
        [j.model_dump(mode="json") for j in race], batch_id="race", queued_at=time.time()
    )
    a = BatchRunner(settings, store, status, EngineCache(lambda m: Stamp(m, "A"), "cpu"))
    b = BatchRunner(settings, store, status, EngineCache(lambda m: Stamp(m, "B"), "cpu"))
    assert a.run(race_payload)["succeeded"] == 4
    status.reset([j.job_id for j in race])  # as if Redis had lost the first attempt
    summary = b.run(race_payload)
    assert summary["skipped"] == 4
    with Client(settings) as client:
        texts = {j.job_id: client.result(j.job_id) for j in race}
        assert {getattr(r, "text", "")[:2] for r in texts.values()} == {"A:"}
        assert {s.state for s in client.status(list(texts)).values() if s} == {JobState.SUCCEEDED}


def test_sweep_deletes_old_prefixes_and_keeps_running_batches(settings: BlazeSettings) -> None:
    store = S3ResultStore(settings)
    ns = settings.namespace
    store.put_many(
        [
            (f"{ns}/jobs/old/result.json", b"{}", "application/json"),
            (f"{ns}/jobs/old/image-0.png", b"png", "image/png"),
            (f"{ns}/batches/b1/manifest.json", b"{}", "application/json"),
            (f"{ns}/openai-batches/open/batch.json", b'{"status": "in_progress"}', "x/json"),
            (f"{ns}/openai-batches/done/batch.json", b'{"status": "completed"}', "x/json"),
        ]
    )
    later = time.time() + 3600
    dry = sweep(settings, store, 60, dry_run=True, now=later)
    assert dry.objects == 4 and len(store.list_keys(f"{ns}/")) == 5
    report = sweep(settings, store, 60, now=later)
    assert report.prefixes == {"jobs": 1, "batches": 1, "openai-batches": 1}
    assert report.kept_open_batches == 1
    assert store.list_keys(f"{ns}/") == [f"{ns}/openai-batches/open/batch.json"]
    assert sweep(settings, store, 3600).objects == 0  # nothing is an hour old yet


def test_status_store_claims_and_cancels_atomically(settings: BlazeSettings) -> None:
    store = status_store(settings)
    ids = [f"c{i}" for i in range(10)]
    store.update([_queued(j) for j in ids])
    claims = store.claim(ids[:5], time.time())
    assert all(c.claimed and c.attempts == 1 for c in claims.values())
    states, _ = store.cancel(ids, "stop", time.time())
    assert {states[j] for j in ids[:5]} == {JobState.RUNNING}
    assert {states[j] for j in ids[5:]} == {JobState.CANCELLED}
    refused = store.claim(ids[5:], time.time())
    assert not any(c.claimed for c in refused.values())
    assert {c.state for c in refused.values()} == {JobState.CANCELLED}
    store.close()


def _queued(job_id: str) -> Any:
    from pipelines.stores.status import StatusUpdate

    return StatusUpdate(job_id, JobState.QUEUED)


def test_continuous_generation_settles_early_and_refills_from_the_next_batch_in_hand(
    settings: BlazeSettings,
) -> None:
    """Real Redis, S3, Kafka and a worker holding two batches (Celery's threads pool), a
    continuous model in the batch layout: a short job is settled as its row ends, before its
    batch does; the next batch's jobs take the running batch's free slots and end while the
    first batch's long row still runs."""
    settings = settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"batches_in_hand": 2})}
    )
    settings.registry_file.write_text(
        "models:\n  flow:\n"
        f"    source: {settings.models_dir / 'tiny'}\n"
        "    generation: continuous\n    max_rows: 4\n    max_batch_size: 2\n"
        "    max_wait_s: 0.05\n    result_layout: batch\n"
    )
    short = LLMJob(model="flow", prompt="a", max_new_tokens=1)
    longer = LLMJob(model="flow", prompt="the quick brown fox", max_new_tokens=480)
    second = [LLMJob(model="flow", prompt=f"next {i}", max_new_tokens=4) for i in range(2)]
    ids = [j.job_id for j in [short, longer, *second]]
    with running_worker(settings), running_intake(settings), Client(settings) as client:
        client.submit_many([short, longer])  # sent together: one batch
        deadline = time.monotonic() + 60
        while getattr(client.status([longer.job_id])[longer.job_id], "state", None) is not (
            JobState.RUNNING
        ):  # the first batch is in hand
            assert time.monotonic() < deadline, "the first batch never ran"
            time.sleep(0.01)
        client.submit_many(second)
        final = client.wait(ids, timeout=120)
        assert {s.state for s in final.values()} == {JobState.SUCCEEDED}
        docs = {j: client.result(j) for j in ids}
    got = {j: d for j, d in docs.items() if isinstance(d, LLMResult)}
    assert len(got) == 4 and got[longer.job_id].usage.completion_tokens > 200
    assert got[short.job_id].provenance["batch_size"] == 2  # they did share the batch
    ended = final[longer.job_id].times["succeeded"]
    # settled in more than one write: the short job as its row ended, the long one at the end
    assert final[short.job_id].times["succeeded"] < ended
    for job in second:  # the next batch ran and ended while the first batch's long row ran
        assert final[job.job_id].times["running"] < ended
        assert final[job.job_id].times["succeeded"] < ended
    s3 = S3ResultStore(settings)
    objects = [k for k in s3.list_keys(f"{settings.namespace}/batches/") if k.endswith(".jsonl")]
    assert len(objects) >= 3  # the first batch's two writes, the second batch's
    assert s3.get(settings.result_key(short.job_id)) is None  # no object per job
