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

from engines.cache import EngineCache
from engines.devices import pin_device
from engines.factory import engine_factory
from engines.runner import BatchRunner
from pipelines.errors import ModelUnavailable, ServiceUnavailable
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
        log.info("batch %s: %s", payload.get("batch_id"), summary)
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
) -> None:
    """Serve ``{namespace}.{kind}.{device}`` for each kind until SIGTERM.

    Warm shutdown finishes the batch in hand; a batch taken but not finished by a process
    that dies goes back to the queue (late acknowledgement). ``on_groups_done`` hears of job
    groups (OpenAI-style batches) whose last job a batch settled.
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
    for model in preload:
        try:
            cache.get(model)
        except ModelUnavailable as exc:
            log.error("preload: %s", exc)
    queues = ",".join(settings.queue(kind, device) for kind in kinds)
    name = f"{settings.namespace}-{device.replace(':', '')}@%h"
    runner = BatchRunner(
        settings, results, status, cache, on_groups_done, name.replace("%h", socket.gethostname())
    )
    app = worker_app(settings, runner)
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
