"""The intake's cache gate: hits answered without a worker, twins of running jobs parked."""

from __future__ import annotations

from consumers.cached import CacheGate
from consumers.intake import Entry
from pipelines.jobs import LLMJob
from pipelines.registry import ModelSpec, Registry
from pipelines.result_cache import ResultCache
from pipelines.results import LLMResult, parse_result
from pipelines.settings import BlazeSettings
from pipelines.stores.cache_index import MemoryCacheIndex
from pipelines.stores.results_memory import MemoryResultStore
from pipelines.stores.status import JobState, StatusUpdate
from pipelines.stores.status_memory import MemoryStatusStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


SETTINGS = BlazeSettings(namespace="t", cache={"coalesce_s": 10})


def make() -> tuple[CacheGate[Entry], ResultCache, MemoryStatusStore, MemoryResultStore, Clock]:
    clock = Clock()
    store, status = MemoryResultStore(), MemoryStatusStore()
    cache = ResultCache(SETTINGS, MemoryCacheIndex(), store, memory=True)
    registry = Registry({"m": ModelSpec(name="m", engine="echo")})
    gate: CacheGate[Entry] = CacheGate(SETTINGS, cache, registry, status, store, clock=clock)
    return gate, cache, status, store, clock


def entry(job_id: str, offset: int, prompt: str = "same", **extra: object) -> Entry:
    return Entry(LLMJob(job_id=job_id, model="m", prompt=prompt, **extra), "tp", offset)  # type: ignore[arg-type]


def answer_of(cache: ResultCache, key: str, origin: str) -> None:
    cache.store([(key, LLMResult(job_id=origin, status="succeeded", model="m", text="same"))])


def test_a_hit_is_answered_written_and_settled_and_a_miss_goes_on_with_its_key() -> None:
    gate, cache, status, store, _ = make()
    first = entry("a", 1)
    assert gate.admit([first]) == [first]
    key = gate.batched(["a"])["a"]
    assert key.startswith("m/")
    answer_of(cache, key, "a")
    again, other = entry("b", 2), entry("c", 3, prompt="new")
    assert gate.admit([again, other]) == [other]
    assert gate.take_answered() == [again]
    doc = parse_result(store.objects["t/jobs/b/result.json"])
    assert doc.cached and doc.provenance["cached_from"] == "a"
    st = status.get(["b"])["b"]
    assert st is not None and st.state is JobState.SUCCEEDED
    assert gate.admit([entry("d", 4, cache=False)])[0].job.job_id == "d"  # opted out


def test_twins_wait_for_the_running_answer_then_are_answered_from_it() -> None:
    gate, cache, _, store, clock = make()
    one, two, three = entry("a", 1), entry("b", 2), entry("c", 3)
    assert gate.admit([one, two]) == [one]  # twins in one poll: one runs
    assert gate.admit([three]) == []
    key = gate.batched(["a"])["a"]
    clock.now = 1
    assert gate.tick() == [] and gate.take_answered() == []  # the twin is still running
    answer_of(cache, key, "a")
    clock.now = 2
    assert gate.tick() == []
    assert {e.job.job_id for e in gate.take_answered()} == {"b", "c"}
    assert parse_result(store.objects["t/jobs/c/result.json"]).provenance["cached_from"] == "a"


def test_a_twin_runs_itself_when_the_running_one_fails_or_takes_too_long() -> None:
    gate, _, status, _, clock = make()
    one, two, three = entry("a", 1), entry("b", 2), entry("c", 3)
    gate.admit([one, two, three])
    status.update([StatusUpdate("a", JobState.FAILED, "boom")])
    clock.now = 1
    released = gate.tick()
    assert released == [two]  # one of them runs for both; the other waits for it
    clock.now = 12  # past coalesce_s
    assert gate.tick() == [three]


def test_a_twin_waits_a_moment_for_the_answer_of_a_twin_that_just_succeeded() -> None:
    gate, cache, status, _, clock = make()
    one, two = entry("a", 1), entry("b", 2)
    gate.admit([one, two])
    key = gate.batched(["a"])["a"]
    status.update([StatusUpdate("a", JobState.SUCCEEDED)])  # its answer is not stored yet
    clock.now = 1
    assert gate.tick() == []
    answer_of(cache, key, "a")
    clock.now = 1.5
    assert gate.tick() == [] and [e.job.job_id for e in gate.take_answered()] == ["b"]
    three, four = entry("c", 3, prompt="other"), entry("d", 4, prompt="other")
    gate.admit([three, four])
    status.update([StatusUpdate("c", JobState.SUCCEEDED)])  # stored nothing (e.g. --dtype)
    clock.now = 2
    assert gate.tick() == []
    clock.now = 4.1
    assert gate.tick() == [four]
