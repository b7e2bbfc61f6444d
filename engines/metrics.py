"""The worker's metrics (prometheus-client), declared in one place.

Names follow vLLM and Triton (``blaze_prompt_tokens_total`` as vLLM's ``prompt_tokens_total``);
labels are bounded: ``kind``, ``model``, ``device``, ``state``. Engine state (loaded models and
their memory, GPU utilisation) is read when scraped, from the engine cache and NVML.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from engines.base import memory_bytes
from engines.cache import EngineCache

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
TOKENS_PER_S_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000)


class WorkerMetrics:
    """Counters and histograms of one worker process, on its own registry."""

    def __init__(self, device: str, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.device = device
        kmd = ["kind", "model", "device"]
        self.ended = Counter(
            "blaze_jobs_ended",
            "Jobs this worker settled, by final state (succeeded, failed, cancelled)",
            ["kind", "model", "state"],
            registry=r,
        )
        self.batches = Counter(
            "blaze_worker_batches", "Batches this worker ran", ["device"], registry=r
        )
        self.redeliveries = Counter(
            "blaze_job_redeliveries",
            "Jobs that reached a worker again after an earlier attempt",
            ["kind"],
            registry=r,
        )
        self.engine_calls = Counter(
            "blaze_engine_calls", "Engine calls (one per model per batch)", kmd, registry=r
        )
        self.engine_errors = Counter(
            "blaze_engine_errors", "Engine calls that raised or could not load", kmd, registry=r
        )
        self.prompt_tokens = Counter(
            "blaze_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "blaze_generation_tokens", "Tokens generated", ["model"], registry=r
        )
        self.images = Counter("blaze_images", "Images generated", ["model"], registry=r)
        self.model_loads = Counter(
            "blaze_model_loads", "Models loaded", ["model", "device"], registry=r
        )
        self.model_unloads = Counter(
            "blaze_model_unloads", "Models unloaded", ["model", "device"], registry=r
        )
        km = ["kind", "model"]
        self.queue_wait = Histogram(
            "blaze_queue_wait_seconds",
            "From submission to the start of the job's engine call",
            km,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_wait = Histogram(
            "blaze_batch_wait_seconds",
            "From dispatch to a worker queue to the start of the batch's engine call",
            km,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "blaze_compute_seconds",
            "Duration of one engine call (a whole batch of one model)",
            km,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "blaze_e2e_seconds",
            "From submission to the job's result being stored",
            km,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_s = Histogram(
            "blaze_batch_tokens_per_second",
            "Generated tokens per second of one engine call",
            ["model"],
            buckets=TOKENS_PER_S_BUCKETS,
            registry=r,
        )
        self.busy = Gauge(
            "blaze_worker_busy",
            "batches the worker is running (0 when idle)",
            ["device"],
            registry=r,
        )
        self.busy.labels(device).set(0)

    def watch(self, cache: EngineCache) -> None:
        """Report the cache's engines (and the GPU, if any) whenever scraped."""
        self.registry.register(_EngineCollector(cache, self.device))
        cache.on_load = lambda model: self.model_loads.labels(model, self.device).inc()
        cache.on_unload = lambda model: self.model_unloads.labels(model, self.device).inc()


class _EngineCollector(Collector):
    def __init__(self, cache: EngineCache, device: str) -> None:
        self.cache = cache
        self.device = device  # as the user named it (cuda:3), not torch's name after pinning
        self._nvml: Any = _nvml(device)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        loaded = GaugeMetricFamily(
            "blaze_engine_loaded",
            "1 for each model loaded on this worker",
            labels=["model", "device"],
        )
        memory = GaugeMetricFamily(
            "blaze_engine_memory_bytes",
            "Parameter memory of each loaded model",
            labels=["model", "device"],
        )
        unhealthy = GaugeMetricFamily(
            "blaze_engine_unhealthy",
            "1 for each model whose last load on this worker failed (its jobs fail with why)",
            labels=["model", "device"],
        )
        for model, engine in list(self.cache.engines.items()):
            loaded.add_metric([model, self.device], 1)
            memory.add_metric([model, self.device], memory_bytes(engine))
        for model in list(self.cache.failures):
            unhealthy.add_metric([model, self.device], 1)
        yield loaded
        yield memory
        yield unhealthy
        if self._nvml is not None:
            yield from self._gpu()

    def _gpu(self) -> Iterator[GaugeMetricFamily]:
        pynvml, handle = self._nvml
        util = GaugeMetricFamily(
            "blaze_gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=["device"]
        )
        used = GaugeMetricFamily(
            "blaze_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["device"]
        )
        try:
            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:  # a GPU that stops answering must not break the scrape
            log.warning("NVML: %s", exc)
            return
        util.add_metric([self.device], rates.gpu / 100)
        used.add_metric([self.device], mem.used)
        yield util
        yield used


def _nvml(device: str) -> Any:
    """(pynvml, handle) for a ``cuda:N`` device when NVML is installed and answers, else None."""
    if not device.startswith("cuda"):
        return None
    try:
        import pynvml  # nvidia-ml-py: present where a GPU is

        pynvml.nvmlInit()
        index = int(device.partition(":")[2] or 0)
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as exc:
        log.info("no GPU metrics for %s: %s", device, exc)
        return None
