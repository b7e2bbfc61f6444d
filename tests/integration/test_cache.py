"""The result cache on the real stack: Kafka, Redis (the index), S3 (results, cached objects)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from pipelines.cache_keys import forget_digests
from pipelines.client import Client
from pipelines.jobs import AnyJob, DiffusionJob, LLMJob
from pipelines.openai.service import BatchService, finalize_groups
from pipelines.result_cache import ResultCache
from pipelines.results import AnyResult, DiffusionResult
from pipelines.retention import sweep
from pipelines.settings import BlazeSettings
from pipelines.stores.cache_index_redis import RedisCacheIndex
from pipelines.stores.events_kafka import KafkaStatusEvents
from pipelines.stores.results_s3 import S3ResultStore
from pipelines.stores.status import JobState
from tests.integration.conftest import running_intake, running_worker

pytestmark = pytest.mark.integration


@contextmanager
def cached_pipeline(settings: BlazeSettings) -> Iterator[tuple[Client, ResultCache]]:
    """A worker that stores answers, an intake that answers hits, and a client."""
    forget_digests()
    with ExitStack() as stack:
        store = S3ResultStore(settings)
        stack.callback(store.close)
        cache = ResultCache(settings, RedisCacheIndex(settings), store, memory=True)
        client = stack.enter_context(Client(settings))
        finalize = finalize_groups(BatchService.of(client))
        stack.enter_context(running_worker(settings, dtype=None))
        stack.enter_context(running_intake(settings, answers=cache, on_groups_done=finalize))
        yield client, cache


def run(client: Client, jobs: list[AnyJob]) -> dict[str, AnyResult]:
    client.submit_many(jobs)
    final = client.wait([j.job_id for j in jobs], timeout=120)
    assert {s.state for s in final.values()} == {JobState.SUCCEEDED}, final
    out = {}
    for j in jobs:
        doc = client.result(j.job_id)
        assert doc is not None and doc.job_id == j.job_id
        out[j.job_id] = doc
    return out


def eventually(check: Callable[[], bool], timeout: float = 5) -> bool:
    """Counters reach the index at most once a second."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def text_of(client: Client, job_id: str) -> str:
    """The ``text`` of a result document as stored (the raw JSON, not a re-serialised one)."""
    raw = client.result_store.get(client.settings.result_key(job_id))
    assert raw is not None
    return str(json.loads(raw)["text"])


def test_repeats_are_answered_from_the_cache_and_only_deterministic_jobs_hit(
    settings: BlazeSettings,
) -> None:
    greedy = {"model": "tiny", "prompt": "cache me", "max_new_tokens": 6}
    sampled = {**greedy, "temperature": 0.9}
    image = {"model": "sd-tiny", "prompt": "a red square", "width": 64, "height": 64}
    first = {
        "a": LLMJob(job_id="a", **greedy),
        "s1": LLMJob(job_id="s1", **sampled),
        "e1": LLMJob(job_id="e1", seed=7, **sampled),
        "img1": DiffusionJob(job_id="img1", seed=3, num_inference_steps=2, **image),
    }
    second = {
        "b": LLMJob(job_id="b", **greedy),  # same as a
        "b-seed": LLMJob(job_id="b-seed", seed=5, **greedy),  # greedy: the seed changes nothing
        "c": LLMJob(job_id="c", **{**greedy, "max_new_tokens": 7}),
        "d": LLMJob(job_id="d", **{**greedy, "prompt": "cache me!"}),
        "s2": LLMJob(job_id="s2", **sampled),  # sampled without a seed: never cached
        "e2": LLMJob(job_id="e2", seed=7, **sampled),  # same seed as e1
        "f": LLMJob(job_id="f", seed=8, **sampled),
        "opt-out": LLMJob(job_id="opt-out", cache=False, **greedy),
        "img2": DiffusionJob(job_id="img2", seed=3, num_inference_steps=2, **image),
        "img3": DiffusionJob(job_id="img3", seed=4, num_inference_steps=2, **image),
    }
    twins = [
        LLMJob(job_id=f"twin{i}", model="tiny", prompt="twins", max_new_tokens=5) for i in range(4)
    ]
    with cached_pipeline(settings) as (client, cache):
        ran = run(client, list(first.values()))
        assert not any(d.cached for d in ran.values())
        got = run(client, list(second.values()))
        hits = {j for j, d in got.items() if d.cached}
        assert hits == {"b", "b-seed", "e2", "img2"}, hits
        assert got["b"].provenance["cached_from"] == "a"
        assert got["e2"].provenance["cached_from"] == "e1"
        assert text_of(client, "b") == text_of(client, "a")  # byte for byte
        assert text_of(client, "e2") == text_of(client, "e1")
        img1, img2 = ran["img1"], got["img2"]
        assert isinstance(img1, DiffusionResult) and isinstance(img2, DiffusionResult)
        assert img2.images[0].key == settings.result_prefix("img2") + "image-0.png"
        assert client.result_store.get(img2.images[0].key) == client.result_store.get(
            img1.images[0].key
        )
        # twins submitted together: one runs, the others are answered from it
        dup = run(client, twins)
        computed = [j for j, d in dup.items() if not d.cached]
        assert len(computed) == 1, dup
        assert {d.provenance["cached_from"] for d in dup.values() if d.cached} == set(computed)
        assert eventually(lambda: cache.index.counts().get("coalesced", 0) >= 3)
        counts = cache.index.counts()
    assert counts["stored"] >= 6  # a, e1, img1, c, d, f, img3, the computed twin
    assert sum(counts.get(f"{tier}_hits", 0) for tier in ("memory", "redis", "s3")) >= 4
    assert counts["coalesced"] == 3
    # a hit's events are published as for any job
    states = {e.state for e in KafkaStatusEvents(settings).read(idle_s=3) if e.job_id == "b"}
    assert JobState.SUCCEEDED in states


def test_what_changes_the_answer_misses_and_swept_or_lost_entries_run_again(
    settings: BlazeSettings, tiny_models: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "m"
    shutil.copytree(tiny_models / "tiny", folder)
    registry = settings.registry_file

    def use(dtype: str) -> None:
        registry.write_text(f"models:\n  m:\n    source: {folder}\n    dtype: {dtype}\n")

    job = {"model": "m", "prompt": "same question", "max_new_tokens": 4}
    use("float32")
    big = settings.model_copy(
        update={"cache": settings.cache.model_copy(update={"inline_bytes": 0})}
    )
    with cached_pipeline(big) as (client, cache):
        assert not run(client, [LLMJob(job_id="p1", **job)])["p1"].cached
        hit = run(client, [LLMJob(job_id="p2", **job)])["p2"]
        assert hit.cached and hit.provenance["cached_from"] == "p1"
        objects = client.result_store.list_keys(settings.cache_prefix("m"))
        assert [k.rsplit("/", 1)[1] for k in objects] == ["result.json"]  # the S3 tier
        # the cached object is gone (a lifecycle rule, a hand): the job runs instead
        client.result_store.delete_many(objects)
        again = run(client, [LLMJob(job_id="p3", **job)])["p3"]
        assert not again.cached
        assert eventually(lambda: cache.index.counts().get("stale", 0) >= 1)
        # a retention sweep takes results and cache entries: the next ask computes again
        report = sweep(settings, client.result_store, 0, index=cache.index)
        assert report.cache_entries >= 1
        assert not run(client, [LLMJob(job_id="p4", **job)])["p4"].cached
        assert run(client, [LLMJob(job_id="p5", **job)])["p5"].cached
    use("bfloat16")  # another dtype: another answer
    with cached_pipeline(settings) as (client, _):
        assert not run(client, [LLMJob(job_id="q1", **job)])["q1"].cached
        assert run(client, [LLMJob(job_id="q2", **job)])["q2"].cached
    for name in ("model.safetensors", "config.json"):  # other weights: another answer
        shutil.copy(tiny_models / "tiny2" / name, folder / name)
    with cached_pipeline(settings) as (client, _):
        assert not run(client, [LLMJob(job_id="r1", **job)])["r1"].cached


def test_a_resubmitted_openai_batch_is_answered_and_finished_by_the_consumer(
    settings: BlazeSettings,
) -> None:
    def line(n: int) -> str:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": f"q{n}"}],
            "max_tokens": 3,
        }
        req = {"custom_id": f"r{n}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        return json.dumps(req)

    lines = [(n, line(n)) for n in range(1, 6)]
    with cached_pipeline(settings) as (client, _):
        service = BatchService.of(client)
        first = service.submit_lines(lines, source="first.jsonl")
        assert service.wait(first.id, timeout=120).status == "completed"
        again = service.submit_lines(lines, source="again.jsonl")
        deadline = time.monotonic() + 60
        while service.load(again.id).status != "completed":  # no refresh: the consumer's hook
            assert time.monotonic() < deadline, service.load(again.id)
            time.sleep(0.2)
        outputs = [
            json.loads(x)
            for x in (
                client.result_store.get(settings.openai_batch_prefix(again.id) + "output.jsonl")
                or b""
            ).splitlines()
        ]
    assert sorted(o["custom_id"] for o in outputs) == [f"r{n}" for n in range(1, 6)]
    assert all(o["response"]["status_code"] == 200 for o in outputs)
