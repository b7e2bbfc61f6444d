"""The result cache's tiers, answers and expiry, on the in-memory index and store."""

from __future__ import annotations

import json

from pipelines.jobs import DiffusionJob, LLMJob
from pipelines.result_cache import ResultCache
from pipelines.results import DiffusionResult, ImageRef, LLMResult, parse_result
from pipelines.settings import BlazeSettings
from pipelines.stores.cache_index import CacheEntry, MemoryCacheIndex
from pipelines.stores.results_memory import MemoryResultStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    inline_bytes: int = 16_384,
) -> tuple[ResultCache, MemoryCacheIndex, MemoryResultStore, Clock]:
    settings = BlazeSettings(namespace="t", cache={"inline_bytes": inline_bytes, "ttl_s": 60})
    clock = Clock()
    index, store = MemoryCacheIndex(clock), MemoryResultStore(clock)
    return ResultCache(settings, index, store, memory=True, clock=clock), index, store, clock


def doc(job_id: str, text: str = "Paris") -> LLMResult:
    return LLMResult(
        job_id=job_id, status="succeeded", model="m", text=text, provenance={"seed": 1}
    )


def test_small_answers_live_inline_and_come_back_as_the_asking_jobs_own() -> None:
    cache, index, _, _ = make()
    cache.store(
        [("m/k1", doc("origin")), ("m/k2", doc("bad").model_copy(update={"status": "failed"}))]
    )
    assert set(index.entries) == {"m/k1"}  # failed answers are never cached
    assert cache.lookup(["m/k1", "m/k9"])["m/k1"].tier == "redis"
    assert cache.lookup(["m/k1"])["m/k1"].tier == "memory"
    job = LLMJob(job_id="asker", model="m", prompt="capital?", tags={"team": "x"})
    body = cache.answer([(job, cache.lookup(["m/k1"])["m/k1"])])["asker"]
    got = parse_result(body)
    assert got.job_id == "asker" and got.cached and got.tags == {"team": "x"}
    assert isinstance(got, LLMResult) and got.text == "Paris"
    assert got.provenance["cached_from"] == "origin" and got.provenance["seed"] == 1
    counts = cache.drain()
    assert counts["redis_hits"] == 1 and counts["memory_hits"] == 2 and counts["misses"] == 1


def test_large_answers_are_objects_and_a_lost_object_is_stale_not_a_failure() -> None:
    cache, index, store, _ = make(inline_bytes=0)
    cache.store([("m/k1", doc("origin"))])
    assert index.entries["m/k1"][0].doc is None
    assert list(store.objects) == ["t/cache/m/k1/result.json"]
    job = LLMJob(job_id="asker", model="m", prompt="capital?")
    hit = cache.lookup(["m/k1"])["m/k1"]
    assert hit.tier == "s3" and "asker" in cache.answer([(job, hit)])
    store.delete_many(["t/cache/m/k1/result.json"])
    assert cache.answer([(job, cache.lookup(["m/k1"])["m/k1"])]) == {}
    assert cache.drain()["stale"] == 1


def test_images_are_copied_beside_the_asking_job() -> None:
    cache, _, store, _ = make()
    store.put_many([("t/jobs/origin/image-0.png", b"PNG", "image/png")])
    ref = ImageRef(key="t/jobs/origin/image-0.png", seed=3, width=64, height=64, bytes=3)
    result = DiffusionResult(job_id="origin", status="succeeded", model="sd", images=[ref])
    cache.store([("sd/k", result)])
    assert store.objects["t/cache/sd/k/image-0.png"] == b"PNG"
    job = DiffusionJob(job_id="asker", model="sd", prompt="cat", seed=3)
    got = parse_result(cache.answer([(job, cache.lookup(["sd/k"])["sd/k"])])["asker"])
    assert isinstance(got, DiffusionResult) and got.images[0].key == "t/jobs/asker/image-0.png"
    assert store.objects["t/jobs/asker/image-0.png"] == b"PNG"


def test_entries_expire_and_a_clear_empties_every_consumers_memory() -> None:
    cache, index, _, clock = make()
    cache.store([("m/k1", doc("one")), ("other/k2", doc("two"))])
    assert cache.lookup(["m/k1", "other/k2"]).keys() == {"m/k1", "other/k2"}
    assert index.delete(model="m") == ["m/k1"]  # e.g. blaze cache clear --model m
    assert cache.lookup(["m/k1", "other/k2"]).keys() == {"other/k2"}
    clock.now += 61
    assert cache.lookup(["other/k2"]) == {}


def test_the_first_answer_stays() -> None:
    cache, index, _, _ = make()
    cache.store([("m/k", doc("first", "A"))])
    cache.store([("m/k", doc("second", "B"))])
    entry = index.entries["m/k"][0]
    assert entry.origin == "first" and json.loads(entry.doc or b"")["text"] == "A"
    assert CacheEntry.from_json(entry.to_json()) == entry
    assert CacheEntry.from_json(b"not json") is None
