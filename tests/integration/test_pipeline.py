"""Kafka → intake → Celery → worker → S3, all real, with tiny models."""

import json

import pytest
from kafka import KafkaConsumer, KafkaProducer

from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.status import JobState
from tests.integration.conftest import running_intake, running_worker

pytestmark = pytest.mark.integration

MALFORMED = [
    b"{definitely not json",
    b"[]",
    b'{"job_id": "bad-schema", "model": "tiny"}',
    b'{"job_id": "bad-bounds", "model": "tiny", "prompt": "x", "max_new_tokens": -3}',
    b'{"job_id": "../escape", "model": "tiny", "prompt": "x"}',
]


def read_dead_letters(settings: BlazeSettings, expect: int) -> list[dict[str, object]]:
    consumer = KafkaConsumer(
        settings.dead_letter_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=8000,
    )
    out = []
    for msg in consumer:
        out.append(json.loads(msg.value))
        if len(out) >= expect:
            break
    consumer.close()
    return out


def test_jobs_flow_to_results_and_bad_messages_to_dead_letters(settings: BlazeSettings) -> None:
    jobs = [
        LLMJob(model="tiny" if i % 2 else "tiny2", prompt=f"question {i}", max_new_tokens=1 + i % 5)
        for i in range(40)
    ]
    jobs.append(LLMJob(model="no-such-model", prompt="x", job_id="unknown-model-job"))
    with running_worker(settings), running_intake(settings) as stats, Client(settings) as client:
        raw = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        client.submit_many(jobs[:20])
        for m in MALFORMED:
            raw.send(settings.jobs_topic("llm"), m)
        raw.flush()
        raw.close()
        client.submit_many(jobs[20:])
        final = client.wait([j.job_id for j in jobs], timeout=120)
        by_state = {j: s.state for j, s in final.items()}
        assert by_state.pop("unknown-model-job") is JobState.DEAD
        assert set(by_state.values()) == {JobState.SUCCEEDED}
        for job in jobs[:40]:
            res = client.result(job.job_id)
            assert res is not None and res.status == "succeeded" and res.model == job.model
            assert res.usage.completion_tokens <= job.max_new_tokens
            assert res.provenance["device"] == "cpu" and res.provenance["weights"]
        assert client.result("unknown-model-job") is None  # rejected at intake, never run
        bad = client.status(["bad-schema", "bad-bounds"])
        assert {s.state for s in bad.values() if s} == {JobState.DEAD}
    assert stats().dead_lettered == len(MALFORMED) + 1
    assert stats().batches < len(jobs)  # jobs were batched, not sent one by one
    letters = read_dead_letters(settings, len(MALFORMED) + 1)
    assert len(letters) == len(MALFORMED) + 1
    assert all(d["reason"] and d["source"] and d["stage"] == "intake" for d in letters)
    assert {d["job_id"] for d in letters} >= {"bad-schema", "bad-bounds", "unknown-model-job"}
    unknown = next(d for d in letters if d["job_id"] == "unknown-model-job")
    assert "unknown llm model 'no-such-model'" in str(unknown["reason"])


def test_restart_resumes_after_committed_offsets_and_duplicates_do_not_rerun(
    settings: BlazeSettings,
) -> None:
    first = [LLMJob(model="tiny", prompt=f"a{i}") for i in range(6)]
    with Client(settings) as client, running_worker(settings):
        with running_intake(settings) as stats:
            client.submit_many(first)
            client.wait([j.job_id for j in first], timeout=60)
        assert stats().dispatched_jobs == 6
        before = client.result_store.get(settings.result_key(first[0].job_id))
        # a re-published job id (a producer retry) and new jobs, consumed by a fresh process
        second = [LLMJob(model="tiny", prompt=f"b{i}") for i in range(3)]
        with running_intake(settings) as stats2:
            client.submit_many([first[0], *second])
            client.wait([j.job_id for j in second], timeout=60)
        assert stats2().received == 4  # resumed after the committed offsets
        assert client.result_store.get(settings.result_key(first[0].job_id)) == before
        again = client.status([first[0].job_id])[first[0].job_id]
        assert again is not None and again.attempts == 1  # the model did not run it twice


def test_dead_letters_are_listed_and_replayed_after_a_fix(settings: BlazeSettings) -> None:
    import subprocess
    import sys

    from tests.conftest import settings_env

    env = settings_env(settings)

    def blaze(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "blaze", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    wrong_model = LLMJob(job_id="fix-me", model="tinyy", prompt="typo in the model name")
    with running_worker(settings), running_intake(settings), Client(settings) as client:
        client.submit(wrong_model)
        raw = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        raw.send(settings.jobs_topic("llm"), b"{broken")
        raw.flush()
        raw.close()
        client.wait(["fix-me"], timeout=60)
        assert client.status(["fix-me"])["fix-me"].state is JobState.DEAD  # type: ignore[union-attr]

        listed = blaze("dlq", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        letters = [json.loads(line) for line in listed.stdout.splitlines()]
        assert len(letters) == 2
        fix_me = next(x for x in letters if x["job_id"] == "fix-me")
        assert "unknown llm model 'tinyy'" in fix_me["reason"] and ":" in fix_me["ref"]
        broken = next(x for x in letters if x["job_id"] is None)

        replay = blaze("dlq", "replay", "--job", "fix-me", "--set", "model=tiny")
        assert replay.returncode == 0, replay.stderr
        assert replay.stdout.split() == ["fix-me"]
        final = client.wait(["fix-me"], timeout=60)
        assert final["fix-me"].state is JobState.SUCCEEDED
        result = client.result("fix-me")
        assert result is not None and result.model == "tiny"

        # replayed again (its letter is still there, the typo too): the job succeeded since,
        # so it is kept, result and state (a replay reset both at once, before sending)
        twice = blaze("dlq", "replay", "--all")
        assert twice.returncode == 1, twice.stderr  # the broken letter cannot be replayed
        assert "kept: fix-me is succeeded" in twice.stderr and twice.stdout.split() == []
        assert "replayed 0, kept 1, skipped 1" in twice.stderr
        assert client.status(["fix-me"])["fix-me"].state is JobState.SUCCEEDED  # type: ignore[union-attr]
        assert client.result("fix-me") == result
        now = [json.loads(line) for line in blaze("dlq", "list", "--json").stdout.splitlines()]
        assert len(now) == 2 and {x["now"] for x in now} == {"succeeded", None}
        # the letters live in Kafka: listed even while Redis is out of reach, states unknown
        env["BLAZE_REDIS__URL"] = "redis://127.0.0.1:1/0"
        blind = blaze("dlq", "list", "--json")
        del env["BLAZE_REDIS__URL"]
        assert blind.returncode == 0 and "states not shown" in blind.stderr, blind.stderr
        assert [json.loads(x)["now"] for x in blind.stdout.splitlines()] == [None, None]

        unfixable = blaze("dlq", "replay", "--ref", broken["ref"])
        assert unfixable.returncode == 1 and "not JSON" in unfixable.stderr
        missing = blaze("dlq", "replay", "--job", "never-existed")
        assert missing.returncode == 2 and "never-existed" in missing.stderr


def test_diffusion_jobs_end_as_pngs_in_the_bucket(settings: BlazeSettings) -> None:
    from minio import Minio

    from pipelines.jobs import DiffusionJob

    def d(jid: str, **kw: object) -> DiffusionJob:
        base: dict[str, object] = {"model": "sd-tiny", "prompt": "a fox", "num_inference_steps": 2}
        return DiffusionJob.model_validate({"job_id": jid, **base, **kw})

    jobs = [
        d("img-a", width=64, height=64, seed=1, num_images=2),
        d("img-b", width=64, height=64, seed=2),
        d("img-c", width=96, height=64, seed=3),
    ]
    # Batches here must wait their whole window (no early leaving when quiet), so which jobs
    # share one depends only on their settings, not on how the broker hands them over.
    settings = settings.model_copy(
        update={"batch": settings.batch.model_copy(update={"quiet_s": 0.0})}
    )
    with running_worker(settings), running_intake(settings), Client(settings) as client:
        client.submit_many(jobs)
        final = client.wait([j.job_id for j in jobs], timeout=120)
    assert {s.state for s in final.values()} == {JobState.SUCCEEDED}
    s3 = Minio(
        settings.s3_endpoint,
        access_key=settings.s3.access_key,
        secret_key=settings.s3.secret_key.get_secret_value(),
        secure=False,
    )
    body = json.loads(s3.get_object("blaze-results", settings.result_key("img-a")).read())
    assert body["kind"] == "diffusion" and len(body["images"]) == 2
    png = s3.get_object("blaze-results", body["images"][1]["key"]).read()
    assert png.startswith(b"\x89PNG") and body["images"][1]["seed"] == 2
    wide = json.loads(s3.get_object("blaze-results", settings.result_key("img-c")).read())
    assert wide["images"][0]["width"] == 96
    # a and b shared a batch; c (another resolution) ran in its own
    assert body["provenance"]["batch_size"] == 2 and wide["provenance"]["batch_size"] == 1


def test_embedding_jobs_flow_through_the_pipeline(settings: BlazeSettings) -> None:
    from pipelines.jobs import EmbedJob
    from pipelines.results import parse_result
    from pipelines.stores.results_s3 import S3ResultStore

    jobs = [
        EmbedJob(job_id=f"emb-{i}", model="all-minilm-l6-v2", texts=[f"text {i}", "shared"])
        for i in range(5)
    ]
    # the registry's default dtype (auto), as a worker started without --dtype loads it
    with running_worker(settings, dtype=None), running_intake(settings), Client(settings) as client:
        client.submit_many(jobs)
        final = client.wait([j.job_id for j in jobs], timeout=120)
    assert {s.state for s in final.values()} == {JobState.SUCCEEDED}, final
    raw = S3ResultStore(settings).get(settings.result_key("emb-3"))
    assert raw is not None
    result = parse_result(raw)
    assert result.kind == "embed" and result.dim == 384 and len(result.vectors) == 2  # type: ignore[union-attr]
