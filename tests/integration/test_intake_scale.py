"""Intake at scale on the real broker: two consumers, floods of bad input, kill -9 crashes."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.deadletters_kafka import KafkaDeadLetters
from pipelines.stores.results_s3 import S3ResultStore
from pipelines.stores.status import JobState
from pipelines.stores.status_redis import RedisStatusStore
from tests.conftest import settings_env
from tests.integration.conftest import running_intake, running_worker

pytestmark = pytest.mark.integration


def test_two_consumers_run_2000_mixed_jobs_exactly_once(settings: BlazeSettings) -> None:
    settings = settings.model_copy(
        update={"batch": settings.batch.model_copy(update={"max_size": 32})}
    )
    jobs = [
        LLMJob(model="tiny" if i % 3 else "tiny2", prompt=f"job {i}", max_new_tokens=1 + i % 2)
        for i in range(2000)
    ]
    ids = [j.job_id for j in jobs]
    with (
        running_worker(settings),
        running_intake(settings) as first,
        running_intake(settings) as second,
        Client(settings) as client,
    ):
        client.submit_many(jobs)
        final = client.wait(ids, timeout=300)
    assert {s.state for s in final.values()} == {JobState.SUCCEEDED}
    statuses = RedisStatusStore(settings).get(ids)
    assert all(s is not None and s.attempts == 1 and s.dispatches == 1 for s in statuses.values())
    assert first().dispatched_jobs + second().dispatched_jobs == 2000
    assert first().received > 0 and second().received > 0  # the group shared the partitions
    keys = S3ResultStore(settings).list_keys(f"{settings.namespace}/jobs/")
    assert len(keys) == 2000


def random_payloads(n: int, valid_every: int, seed: int = 7) -> tuple[list[bytes], list[LLMJob]]:
    """Malformed and random payloads with valid jobs interleaved (the valid ones returned too)."""
    rng = random.Random(seed)
    good = LLMJob(model="tiny", prompt="ok", max_new_tokens=1).model_dump(mode="json")

    def junk() -> bytes:
        choice = rng.randrange(8)
        if choice == 0:
            return rng.randbytes(rng.randrange(0, 300))
        if choice == 1:
            return json.dumps(good)[: rng.randrange(1, 60)].encode()  # truncated JSON
        if choice == 2:
            return json.dumps(rng.choice([None, 1, 2.5, "s", [1, 2], True])).encode()
        if choice == 3:  # a valid job with one field broken
            field, value = rng.choice(
                [
                    ("max_new_tokens", -1),
                    ("temperature", 9),
                    ("model", "a/b"),
                    ("prompt", ""),
                    ("job_id", "../x"),
                    ("messages", "hi"),
                    ("stop", ["x"] * 9),
                    ("kind", "video"),
                ]
            )
            return json.dumps({**good, field: value}).encode()
        if choice == 4:
            return json.dumps({"model": "tiny"}).encode()
        if choice == 5:
            return json.dumps({**good, "model": "not-registered"}).encode()
        if choice == 6:
            return ("\ud800" + "x" * rng.randrange(50)).encode("utf-8", "surrogatepass")
        return json.dumps({**good, "extra": {"deep": [1, {"x": None}]}}).encode()

    payloads: list[bytes] = []
    valid: list[LLMJob] = []
    for i in range(n):
        if i % valid_every == 0:
            job = LLMJob(model="tiny", prompt=f"valid {i}", max_new_tokens=1)
            valid.append(job)
            payloads.append(job.model_dump_json().encode())
        else:
            payloads.append(junk())
    return payloads, valid


def test_10000_bad_payloads_become_dead_letters_and_valid_jobs_still_complete(
    settings: BlazeSettings,
) -> None:
    from kafka import KafkaProducer

    payloads, valid = random_payloads(10_000, valid_every=50)
    with running_worker(settings), running_intake(settings) as stats, Client(settings) as client:
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20)
        for p in payloads:
            producer.send(settings.jobs_topic("llm"), p)
        producer.flush()
        producer.close()
        final = client.wait([j.job_id for j in valid], timeout=300)
        assert {s.state for s in final.values()} == {JobState.SUCCEEDED}
    bad = len(payloads) - len(valid)
    assert stats().received == len(payloads) and stats().dead_lettered == bad
    letters = KafkaDeadLetters(settings).read()
    assert len(letters) == bad
    assert all(x.body["reason"] and x.body["source"]["offset"] >= 0 for x in letters)
    reasons = {str(x.body["reason"]).split(":")[0].split(" '")[0] for x in letters}
    assert {"invalid JSON", "invalid job", "unknown llm model"} <= reasons


def test_consumer_killed_at_random_moments_loses_and_duplicates_nothing(
    settings: BlazeSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kill -9 the consumer process 5 times while jobs stream in; every job ends once."""
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"consumer_session_timeout_ms": 6000}),
            "batch": settings.batch.model_copy(update={"max_size": 8, "max_wait_s": 0.2}),
        }
    )
    env = settings_env(settings)
    cmd = [sys.executable, "-m", "blaze", "consume"]
    rng = random.Random(11)
    jobs = [LLMJob(model="tiny", prompt=f"crash {i}", max_new_tokens=1) for i in range(1500)]
    ids = [j.job_id for j in jobs]
    log_path = tmp_path / "consumer.log"
    sent, kills = 0, 0

    def feed(seconds: float) -> None:
        nonlocal sent
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if sent < len(jobs):
                client.submit_many(jobs[sent : sent + 10])
                sent += 10
            time.sleep(0.1)

    with running_worker(settings), Client(settings) as client:
        log = log_path.open("ab")
        while kills < 5:
            joined = log_path.read_text().count("intake joined group")
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            if kills == 0:
                feed(rng.uniform(0.5, 2.0))  # mid-join: must not wedge the group
            else:
                deadline = time.monotonic() + 90
                while log_path.read_text().count("intake joined group") == joined:
                    assert time.monotonic() < deadline, "consumer did not rejoin"
                    feed(0.2)
                feed(rng.uniform(0.2, 2.5))  # consuming: batches open, commits pending
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        client.submit_many(jobs[sent:])
        joined = log_path.read_text().count("intake joined group")
        final_proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90  # the group is not wedged by the kills
            while log_path.read_text().count("intake joined group") == joined:
                assert time.monotonic() < deadline, "consumer did not rejoin after the kills"
                time.sleep(0.2)
            final = client.wait(ids, timeout=240)
        finally:
            final_proc.send_signal(signal.SIGTERM)
            assert final_proc.wait(60) == 0
            log.close()
    assert {s.state for s in final.values()} == {JobState.SUCCEEDED}
    statuses = RedisStatusStore(settings).get(ids)
    dispatches = sum(s.dispatches for s in statuses.values() if s)
    # the model ran once per job: redelivered jobs found their result and were skipped
    assert all(s is not None and s.attempts == 1 for s in statuses.values())
    assert len(S3ResultStore(settings).list_keys(f"{settings.namespace}/jobs/")) == len(jobs)
    with capsys.disabled():
        print(
            f"\n[crash test] {kills} kill -9s, {len(jobs)} jobs, "
            f"{dispatches - len(jobs)} re-delivered after a crash, 0 lost, 0 run twice"
        )
