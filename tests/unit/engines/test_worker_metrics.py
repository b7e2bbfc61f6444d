"""The worker's metrics count each settled job once; its heartbeat state follows the batch."""

import sys
import types

import pytest
from prometheus_client import CollectorRegistry

from engines.cache import EngineCache
from engines.metrics import WorkerMetrics
from engines.runner import BatchRunner
from pipelines.jobs import LLMJob
from pipelines.observe import trace
from pipelines.stores.results_memory import MemoryResultStore
from pipelines.stores.status_memory import MemoryStatusStore
from pipelines.tasks import batch_payload
from tests.unit.engines.test_worker import SETTINGS, EchoEngine, result


def metered() -> tuple[BatchRunner, WorkerMetrics, MemoryStatusStore, MemoryResultStore]:
    metrics = WorkerMetrics("cpu", CollectorRegistry())

    def factory(model: str) -> EchoEngine:
        return EchoEngine(model)

    cache = EngineCache(factory, "cpu")  # type: ignore[arg-type]
    metrics.watch(cache)
    results, status = MemoryResultStore(), MemoryStatusStore()
    return BatchRunner(SETTINGS, results, status, cache, metrics=metrics), metrics, status, results


def v(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_each_settled_job_counts_once_by_state() -> None:
    run, m, _, results = metered()
    jobs = [
        LLMJob(job_id="ok1", model="m", prompt="a"),
        LLMJob(job_id="ok2", model="m", prompt="b"),
        LLMJob(job_id="bad", model="m", prompt="poison"),
        LLMJob(job_id="brk", model="broken", prompt="x"),
    ]
    tp = trace.new_traceparent()
    body = batch_payload(
        [j.model_dump(mode="json") for j in jobs],
        batch_id="b1",
        queued_at=0.0,
        traces={"ok1": tp},
    )
    run.run(body)
    assert v(m, "blaze_jobs_ended_total", kind="llm", model="m", state="succeeded") == 2
    assert v(m, "blaze_jobs_ended_total", kind="llm", model="m", state="failed") == 1
    assert v(m, "blaze_jobs_ended_total", kind="llm", model="broken", state="failed") == 1
    assert v(m, "blaze_engine_calls_total", kind="llm", model="m", device="cpu") == 1
    assert v(m, "blaze_engine_errors_total", kind="llm", model="broken", device="cpu") == 1
    assert v(m, "blaze_generation_tokens_total", model="m") == 2
    assert v(m, "blaze_queue_wait_seconds_count", kind="llm", model="m") == 3
    assert v(m, "blaze_e2e_seconds_count", kind="llm", model="m") == 3
    assert v(m, "blaze_model_loads_total", model="m", device="cpu") == 1
    assert v(m, "blaze_engine_loaded", model="m", device="cpu") == 1
    assert v(m, "blaze_engine_unhealthy", model="broken", device="cpu") == 1
    assert v(m, "blaze_engine_unhealthy", model="m", device="cpu") == 0
    assert v(m, "blaze_worker_busy", device="cpu") == 0
    assert v(m, "blaze_worker_batches_total", device="cpu") == 1
    # the result names the job's trace (a hop of the consumer's traceparent)
    prov = result(results, "ok1")["provenance"]
    assert trace.trace_id(prov["traceparent"]) == trace.trace_id(tp)
    assert "traceparent" not in result(results, "ok2")["provenance"]
    assert run.current is None and run.last is not None
    assert run.last["batch_id"] == "b1" and run.last["outcome"]["succeeded"] == 2

    # the same batch again: nothing is counted twice
    run.run(body)
    assert v(m, "blaze_jobs_ended_total", kind="llm", model="m", state="succeeded") == 2
    assert v(m, "blaze_worker_batches_total", device="cpu") == 2


def test_a_job_claimed_before_counts_as_a_redelivery() -> None:
    run, m, status, _ = metered()
    job = LLMJob(job_id="r1", model="m", prompt="x")
    status.claim(["r1"], 0.0)  # an earlier attempt took it and died
    run.run(batch_payload([job.model_dump(mode="json")], batch_id="b2", queued_at=0.0))
    assert v(m, "blaze_job_redeliveries_total", kind="llm") == 1
    assert v(m, "blaze_jobs_ended_total", kind="llm", model="m", state="succeeded") == 1


def test_gpu_gauges_come_from_nvml_for_the_workers_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML's answers become the GPU gauges, labelled with the device as the user named it.

    No GPU is on the test machines: an in-memory NVML stands in for the driver's library
    (its four calls, with the shapes nvidia-ml-py returns)."""
    asked: list[int] = []

    class Rates:
        gpu = 73

    class Memory:
        used = 5 << 30

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: asked.append(i) or f"handle{i}",
        nvmlDeviceGetUtilizationRates=lambda h: Rates(),
        nvmlDeviceGetMemoryInfo=lambda h: Memory(),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    metrics = WorkerMetrics("cuda:3", CollectorRegistry())
    metrics.watch(EngineCache(EchoEngine, "cuda:0"))  # type: ignore[arg-type]
    assert asked == [3]  # NVML counts physical GPUs: the user's index, not torch's cuda:0
    assert v(metrics, "blaze_gpu_utilization_ratio", device="cuda:3") == 0.73
    assert v(metrics, "blaze_gpu_memory_used_bytes", device="cuda:3") == 5 << 30
    cpu = WorkerMetrics("cpu", CollectorRegistry())
    cpu.watch(EngineCache(EchoEngine, "cpu"))  # type: ignore[arg-type]
    assert cpu.registry.get_sample_value("blaze_gpu_utilization_ratio", {"device": "cpu"}) is None
