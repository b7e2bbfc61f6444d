"""The batch runner with in-memory stores: results, statuses, redelivery, failures."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from engines.base import Engine, Output
from engines.cache import EngineCache
from engines.devices import pin_device
from engines.isolate import is_out_of_memory, run_isolated
from engines.runner import BatchRunner
from pipelines.errors import ConfigError, ModelUnavailable
from pipelines.jobs import DiffusionJob, LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.results_memory import MemoryResultStore
from pipelines.stores.status import JobState, StatusUpdate
from pipelines.stores.status_memory import MemoryStatusStore
from pipelines.tasks import batch_payload

SETTINGS = BlazeSettings(namespace="unit")


class EchoEngine:
    """Upper-cases prompts; fails any job whose prompt contains 'poison'."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[int] = []

    def load(self, device: str) -> None:
        if self.name == "broken":
            raise RuntimeError("weights corrupt")

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        self.calls.append(len(batch))
        return [
            Output(error="poisoned")
            if "poison" in (j.prompt or "")
            else Output(text=(j.prompt or "").upper(), finish_reason="stop", completion_tokens=1)
            for j in batch
        ]

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "weights": "abc", "device": "cpu", "dtype": "float32"}


def runner() -> tuple[BatchRunner, MemoryResultStore, MemoryStatusStore, dict[str, EchoEngine]]:
    made: dict[str, EchoEngine] = {}

    def factory(model: str) -> Engine:
        if model == "unknown":
            raise ModelUnavailable("unknown model 'unknown'")
        made[model] = EchoEngine(model)
        return made[model]

    results, status = MemoryResultStore(), MemoryStatusStore()
    return (
        BatchRunner(SETTINGS, results, status, EngineCache(factory, "cpu")),
        results,
        status,
        made,
    )


def payload(*jobs: LLMJob) -> dict[str, Any]:
    return batch_payload([j.model_dump(mode="json") for j in jobs], batch_id="b1", queued_at=0.0)


def result(store: MemoryResultStore, jid: str) -> dict[str, Any]:
    raw = store.get(SETTINGS.result_key(jid))
    assert raw is not None
    body: dict[str, Any] = json.loads(raw)
    return body


def test_every_job_gets_a_result_and_a_terminal_state() -> None:
    run, results, status, made = runner()
    jobs = [LLMJob(job_id=f"j{i}", model="m", prompt=f"p{i}", tags={"k": "v"}) for i in range(4)]
    summary = run.run(payload(*jobs))
    assert summary == {
        "jobs": 4,
        "succeeded": 4,
        "failed": 0,
        "cancelled": 0,
        "skipped": 0,
        "engine_calls": 1,
        "device_failed": 0,
        "retried": 0,
    }
    assert made["m"].calls == [4]  # one engine call for the whole batch
    body = result(results, "j2")
    assert body["text"] == "P2" and body["status"] == "succeeded" and body["tags"] == {"k": "v"}
    assert body["provenance"]["weights"] == "abc" and body["provenance"]["batch_size"] == 4
    assert set(body["timings"]) == {"queue_wait_s", "batch_wait_s", "compute_s"}
    states = {j: s.state for j, s in status.get([j.job_id for j in jobs]).items() if s}
    assert set(states.values()) == {JobState.SUCCEEDED}


def test_a_poison_job_fails_alone() -> None:
    run, results, status, _ = runner()
    jobs = [
        LLMJob(job_id="ok", model="m", prompt="fine"),
        LLMJob(job_id="bad", model="m", prompt="poison"),
    ]
    run.run(payload(*jobs))
    assert result(results, "bad")["error"] == "poisoned"
    bad = status.get(["bad"])["bad"]
    assert bad is not None and bad.state is JobState.FAILED and bad.reason == "poisoned"
    assert result(results, "ok")["status"] == "succeeded"


def test_redelivered_batch_does_not_run_the_model_again() -> None:
    run, results, _, made = runner()
    jobs = [LLMJob(job_id="r1", model="m", prompt="x")]
    run.run(payload(*jobs))
    first = results.get(SETTINGS.result_key("r1"))
    summary = run.run(payload(*jobs))
    assert summary["skipped"] == 1 and made["m"].calls == [1]
    assert results.get(SETTINGS.result_key("r1")) == first


def test_unknown_and_broken_models_fail_their_jobs_not_the_worker() -> None:
    run, results, _, _ = runner()
    jobs = [
        LLMJob(job_id="u", model="unknown", prompt="x"),
        LLMJob(job_id="b", model="broken", prompt="x"),
        LLMJob(job_id="g", model="good", prompt="x"),
    ]
    summary = run.run(payload(*jobs))
    assert summary["failed"] == 2 and summary["succeeded"] == 1
    assert "unknown model" in result(results, "u")["error"]
    assert "weights corrupt" in result(results, "b")["error"]
    assert "broken" in run.engines.health() and run.engines.health()["good"] == "loaded"


def test_pin_device_rejects_unknown_devices() -> None:
    assert pin_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="--device"):
        pin_device("tpu")


class FragileEngine(EchoEngine):
    """Raises for the whole batch if it holds a 'crash' prompt, or if it is larger than 2."""

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        self.calls.append(len(batch))
        if len(batch) > 2 and self.name == "oom":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any("crash" in (j.prompt or "") for j in batch):
            raise ValueError("tokenizer exploded")
        return [Output(text=(j.prompt or "").upper()) for j in batch]


def test_poison_job_that_crashes_the_batch_is_isolated_by_bisection() -> None:
    engine = FragileEngine("m")
    jobs = [
        LLMJob(job_id=f"j{i}", model="m", prompt="crash" if i == 5 else f"p{i}") for i in range(8)
    ]
    outs = run_isolated(engine, jobs)
    assert [o.error is None for o in outs] == [i != 5 for i in range(8)]
    assert outs[5].error == "ValueError: tokenizer exploded"
    assert outs[0].text == "P0" and engine.calls[0] == 8


def test_out_of_memory_splits_the_batch_until_it_fits() -> None:
    engine = FragileEngine("oom")
    freed: list[int] = []
    jobs = [LLMJob(job_id=f"j{i}", model="m", prompt=f"p{i}") for i in range(8)]
    outs = run_isolated(engine, jobs, lambda: freed.append(1))
    assert all(o.error is None for o in outs) and [o.text for o in outs] == [
        f"P{i}" for i in range(8)
    ]
    assert engine.calls == [8, 4, 2, 2, 4, 2, 2] and len(freed) == 3
    assert is_out_of_memory(MemoryError()) and not is_out_of_memory(ValueError("x"))


def test_runner_isolates_a_crashing_job_inside_a_batch() -> None:
    results, status = MemoryResultStore(), MemoryStatusStore()
    run = BatchRunner(SETTINGS, results, status, EngineCache(FragileEngine, "cpu"))
    jobs = [LLMJob(job_id=f"k{i}", model="m", prompt="crash" if i == 2 else "ok") for i in range(4)]
    summary = run.run(payload(*jobs))
    assert summary["succeeded"] == 3 and summary["failed"] == 1
    assert "tokenizer exploded" in result(results, "k2")["error"]


def test_diffusion_results_list_their_images_written_before_the_document(tiny_models: Path) -> None:
    from engines.factory import engine_factory

    settings = BlazeSettings(
        namespace="unit", models_dir=tiny_models, registry_file=tiny_models / "none.yaml"
    )
    results, status = MemoryResultStore(), MemoryStatusStore()
    run = BatchRunner(
        settings, results, status, EngineCache(engine_factory(settings, "float32"), "cpu")
    )
    jobs = [
        DiffusionJob(
            job_id=f"d{i}",
            model="sd-tiny",
            prompt="fox",
            width=64,
            height=64,
            num_inference_steps=2,
            num_images=i + 1,
            seed=5,
        )
        for i in range(2)
    ]
    assert run.run(payload(*jobs))["succeeded"] == 2
    body = json.loads(results.get(settings.result_key("d1")) or b"")
    assert body["kind"] == "diffusion" and [i["seed"] for i in body["images"]] == [5, 6]
    keys = [i["key"] for i in body["images"]]
    assert keys == ["unit/jobs/d1/image-0.png", "unit/jobs/d1/image-1.png"]
    assert all((results.get(k) or b"").startswith(b"\x89PNG") for k in keys)
    order = list(results.objects)
    assert order.index(keys[0]) < order.index(settings.result_key("d1"))


def test_memory_budget_unloads_the_least_recently_used_model() -> None:
    class Sized(EchoEngine):
        def memory_bytes(self) -> int:
            return 100

    cache = EngineCache(Sized, "cpu", budget_bytes=250)
    cache.get("a")
    cache.get("b")
    cache.get("a")  # a is now the most recently used
    cache.get("c")
    assert list(cache.engines) == ["a", "c"] and cache.unloaded == ["b"]


def test_a_cancelled_job_never_runs_and_gets_a_cancelled_result() -> None:
    run, results, status, made = runner()
    jobs = [LLMJob(job_id=f"c{i}", model="m", prompt=f"p{i}") for i in range(3)]
    status.update([StatusUpdate(j.job_id, JobState.QUEUED) for j in jobs])
    status.cancel(["c1"], "changed my mind", 1.0)
    summary = run.run(payload(*jobs))
    assert summary["succeeded"] == 2 and summary["cancelled"] == 1
    assert made["m"].calls == [2]
    assert result(results, "c1")["status"] == "cancelled"
    st = status.get(["c1"])["c1"]
    assert st is not None and st.state is JobState.CANCELLED and st.attempts == 0


def test_the_first_result_written_wins_and_the_manifest_lists_the_batch() -> None:
    run, results, status, _ = runner()
    job = LLMJob(job_id="w1", model="m", prompt="late")
    earlier = b'{"job_id": "w1", "status": "succeeded", "model": "m", "text": "FIRST"}'
    results.objects[SETTINGS.result_key("w1")] = earlier  # another attempt got there first
    results.modified[SETTINGS.result_key("w1")] = 0.0
    summary = run.run(payload(job))
    assert summary["skipped"] == 1 and results.get(SETTINGS.result_key("w1")) == earlier
    st = status.get(["w1"])["w1"]
    assert st is not None and st.state is JobState.SUCCEEDED
    manifest = json.loads(results.get(SETTINGS.manifest_key("b1")) or b"{}")
    assert manifest["jobs"] == [
        {"job_id": "w1", "model": "m", "status": "succeeded", "key": SETTINGS.result_key("w1")}
    ]


def test_unseeded_jobs_get_a_seed_from_their_id() -> None:
    from pipelines.jobs import job_seed

    run, results, _, _ = runner()
    run.run(payload(LLMJob(job_id="s1", model="m", prompt="x")))
    assert result(results, "s1")["provenance"]["seed"] == job_seed("s1")
    assert job_seed("s1") == job_seed("s1") != job_seed("s2")


class Times:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, int, float]] = []

    def record(self, model: str, size: int, seconds: float) -> None:
        self.recorded.append((model, size, seconds))


def test_a_clean_batch_reports_its_seconds_by_size_and_a_failed_call_does_not() -> None:
    times = Times()
    results, status = MemoryResultStore(), MemoryStatusStore()

    def factory(model: str) -> Engine:
        if model == "unknown":
            raise ModelUnavailable("unknown model 'unknown'")
        return EchoEngine(model)

    run = BatchRunner(
        SETTINGS,
        results,
        status,
        EngineCache(factory, "cpu"),
        batch_times=times,  # type: ignore[arg-type]
    )
    run.run(payload(*[LLMJob(model="m", prompt=f"p{i}") for i in range(3)]))
    run.run(payload(LLMJob(model="unknown", prompt="x")))
    assert [(m, b) for m, b, _ in times.recorded] == [("m", 3)]
    assert times.recorded[0][2] > 0  # claim to written, not zero


def test_batches_in_hand_run_on_a_runner_per_thread_and_engines_take_turns() -> None:
    """Two threads (two batches in hand): each gets its own runner over the shared engines;
    an engine that is not ``concurrent`` never runs two batches at once; the heartbeat adds
    up what both runners report."""
    import threading
    import time

    from engines.worker import Runners

    inside = {"now": 0, "most": 0}
    lock = threading.Lock()

    class Slow(EchoEngine):
        def run(self, batch: Sequence[LLMJob]) -> list[Output]:
            with lock:
                inside["now"] += 1
                inside["most"] = max(inside["most"], inside["now"])
            time.sleep(0.05)
            with lock:
                inside["now"] -= 1
            return super().run(batch)

    results, status = MemoryResultStore(), MemoryStatusStore()
    cache = EngineCache(lambda model: Slow(model), "cpu")
    runners = Runners(lambda: BatchRunner(SETTINGS, results, status, cache))
    batches = [[LLMJob(model="m", prompt=f"b{b} j{j}") for j in range(3)] for b in range(6)]
    mine: dict[str, BatchRunner] = {}

    def serve(name: str, todo: list[list[LLMJob]]) -> None:
        for jobs in todo:
            runners().run(payload(*jobs))
            mine[name] = runners()

    threads = [
        threading.Thread(target=serve, args=(f"t{i}", batches[i::2]), name=f"t{i}")
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(runners.all) == 2 and mine["t0"] is not mine["t1"]
    assert inside["most"] == 1  # the shared engine ran one batch at a time
    assert all(result(results, j.job_id)["text"] == j.prompt.upper() for b in batches for j in b)
    info = runners.info()
    assert info["batch"] is None and info["batches"] == []
    assert info["last_batch"]["outcome"]["succeeded"] == 3
    assert 0 < info["sec_per_job"] < min(r.sec_per_job for r in runners.all)  # rates add up
