"""The worker process: pinned to one device, serving its Celery queues one batch at a time.

Late acknowledgement: a batch is acknowledged only after its results are written, so a batch
whose worker dies goes back to the queue. Storage errors retry the whole (idempotent) batch.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from celery import Celery

from engines.base import memory_bytes
from engines.cache import EngineCache
from engines.devices import pin_device
from engines.factory import engine_factory
from engines.metrics import WorkerMetrics
from engines.runner import BatchRunner
from pipelines.errors import ModelUnavailable, ServiceUnavailable
from pipelines.observe.checks import service_checks
from pipelines.observe.probes import Check
from pipelines.observe.process import ProcessObserver, process_id
from pipelines.settings import BlazeSettings
from pipelines.stores.results import ResultStore
from pipelines.stores.status import GroupsDone, StatusStore
from pipelines.tasks import RUN_BATCH, celery_app

log = logging.getLogger(__name__)


def worker_app(settings: BlazeSettings, runner: BatchRunner) -> Celery:
    """A Celery app with ``blaze.run_batch`` bound to ``runner``."""
    app = celery_app(settings, name=f"{settings.namespace}-worker")

    @app.task(  # type: ignore[untyped-decorator]
        name=RUN_BATCH, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
    )
    def run_batch(self: Any, payload: dict[str, Any]) -> dict[str, int]:
        try:
            summary = runner.run(payload)
        except ServiceUnavailable as exc:
            # Results could not be stored: retry the whole (idempotent) batch later.
            log.warning("batch %s: %s; retrying", payload.get("batch_id"), exc)
            raise self.retry(
                exc=exc, countdown=min(60, 2 ** min(self.request.retries, 6))
            ) from None
        jobs = payload.get("jobs") or []
        log.info(
            "batch %s: %s",
            payload.get("batch_id"),
            summary,
            extra={
                "batch_id": payload.get("batch_id"),
                "job_ids": [j.get("job_id") for j in jobs if isinstance(j, dict)],
                "traces": payload.get("traces") or {},
            },
        )
        return summary

    return app


def run_worker(
    settings: BlazeSettings,
    *,
    results: ResultStore,
    status: StatusStore,
    on_groups_done: GroupsDone | None = None,
    device: str = "cpu",
    preload: Sequence[str] = (),
    dtype: str | None = None,
    loglevel: str = "INFO",
    kinds: Sequence[str] = ("llm", "diffusion", "embed"),
    metrics_port: int | None = None,
) -> None:
    """Serve ``{namespace}.{kind}.{device}`` for each kind until SIGTERM.

    Warm shutdown finishes the batch in hand; a batch taken but not finished by a process
    that dies goes back to the queue (late acknowledgement). ``on_groups_done`` hears of job
    groups (OpenAI-style batches) whose last job a batch settled. With a ``metrics_port``
    (0: a free one) it serves /metrics, /livez and /readyz there and beats into Redis.
    """
    torch_device = pin_device(device)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if settings.worker.torch_threads:
        torch.set_num_threads(settings.worker.torch_threads)
    budget = settings.worker.memory_budget_mb
    cache = EngineCache(
        engine_factory(settings, dtype), torch_device, None if budget is None else budget << 20
    )
    metrics = WorkerMetrics(device) if settings.observe.enabled else None
    if metrics is None:
        metrics_port = None
    else:
        metrics.watch(cache)
    queues = ",".join(settings.queue(kind, device) for kind in kinds)
    name = f"{settings.namespace}-{device.replace(':', '')}@%h"
    runner = BatchRunner(
        settings,
        results,
        status,
        cache,
        on_groups_done,
        name.replace("%h", socket.gethostname()),
        metrics,
    )
    observer = None
    if metrics is not None and metrics_port is not None:
        observer = ProcessObserver(
            settings,
            "worker",
            process_id(device),
            metrics.registry,
            worker_checks(settings, cache, preload),
            info=lambda: {
                "device": device,
                "queues": queues.split(","),
                "models": {m: memory_bytes(e) for m, e in list(cache.engines.items())},
                "health": cache.health(),
                "batch": runner.current,
                "last_batch": runner.last,
                "recent_failures": list(runner.failures),
            },
            port=metrics_port,
        ).start()
    for model in preload:
        try:
            cache.get(model)
        except ModelUnavailable as exc:
            log.error("preload: %s", exc)
    app = worker_app(settings, runner)
    try:
        _serve(app, queues, name, loglevel)
    finally:
        if observer is not None:
            observer.stop()


def worker_checks(
    settings: BlazeSettings, cache: EngineCache, preload: Sequence[str]
) -> dict[str, Check]:
    """Redis (the Celery broker and status), S3 (results), Kafka if status events are on,
    and every preloaded model loaded."""
    names = ["redis", "s3"] + (["kafka"] if settings.kafka.status_events else [])
    checks = service_checks(settings, *names)

    def engines() -> str | None:
        missing = [m for m in preload if m not in cache.engines]
        if not missing:
            return None
        health = cache.health()
        return "; ".join(f"{m}: {health.get(m, 'loading')}" for m in missing)

    if preload:
        checks["engine"] = engines
    return checks


def _serve(app: Celery, queues: str, name: str, loglevel: str) -> None:
    app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--hostname",
            name,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
