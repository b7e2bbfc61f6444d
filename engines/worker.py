"""The worker process: pinned to one device, serving its Celery queues.

Two batches in hand by default (``worker.batches_in_hand``), each run by its own thread and its
own ``BatchRunner`` over the shared engines (Celery's threads pool): a continuous model's rows
from every batch in hand share its running batch, other engines take turns, one batch's
results are written while the next computes, and a batch that would wait for the engine goes
to an idle worker of its queue (``engines.handoff``). With 1, one batch at a time on Celery's
solo pool.

Late acknowledgement: a batch is acknowledged only after its results are written, so a batch
whose worker dies goes back to the queue (every batch in hand, when it held several). Storage
errors retry the whole (idempotent) batch.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext, suppress
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_ready

from engines.base import memory_bytes
from engines.cache import EngineCache
from engines.devices import pin_device
from engines.factory import engine_factory
from engines.handoff import Handoff
from engines.metrics import WorkerMetrics
from engines.recovery import DeviceLost
from engines.runner import RECENT, BatchRunner
from pipelines.errors import ModelUnavailable, ServiceUnavailable
from pipelines.fleet import BatchTimes, Breakers, Leases
from pipelines.observe.checks import service_checks
from pipelines.observe.probes import Check
from pipelines.observe.process import ProcessObserver, process_id
from pipelines.registry import Registry, load_registry
from pipelines.result_cache import ResultCache
from pipelines.settings import BlazeSettings
from pipelines.stores.deadletters import DeadLetterStore
from pipelines.stores.results import ResultStore
from pipelines.stores.status import GroupsDone, StatusStore
from pipelines.tasks import RUN_BATCH, celery_app

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005


def worker_app(
    settings: BlazeSettings,
    runner: BatchRunner | Callable[[], BatchRunner],
    leases: Leases | None = None,
    breakers: Breakers | None = None,
    on_device_lost: Callable[[str], None] | None = None,
    handoff: Handoff | None = None,
) -> Celery:
    """A Celery app with ``blaze.run_batch`` bound to ``runner`` (or to the runner a callable
    gives the calling thread, for a worker holding several batches).

    With ``leases`` the batch in hand keeps a lease (its worker's sign of life, see
    ``pipelines.fleet``); with ``breakers`` each batch's outcome is recorded on its queue's
    breaker. ``on_device_lost`` hears why the device is gone: the batch goes back to its queue
    and the worker is expected to stop. With ``handoff`` the worker says when it holds no
    batch, and hands a batch that would wait for its engine to a worker that holds none
    (``engines.handoff``).
    """
    app = celery_app(settings, name=f"{settings.namespace}-worker")

    def runner_here() -> BatchRunner:
        return runner if isinstance(runner, BatchRunner) else runner()

    holder = runner_here().worker_name

    @app.task(  # type: ignore[untyped-decorator]
        name=RUN_BATCH, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
    )
    def run_batch(self: Any, payload: dict[str, Any]) -> dict[str, int]:
        batch_id = str(payload.get("batch_id") or self.request.id)
        queue = str((self.request.delivery_info or {}).get("routing_key") or "")
        keep = leases.kept(batch_id, holder) if leases is not None else nullcontext()
        if handoff is not None:
            handoff.took()
        try:
            return _run_batch(self, payload, batch_id, queue, keep)
        finally:
            if handoff is not None:
                handoff.ended(time.time())

    def _run_batch(
        self: Any, payload: dict[str, Any], batch_id: str, queue: str, keep: Any
    ) -> dict[str, int]:
        try:
            with keep:
                if handoff is not None and handoff.give_back(payload, queue):
                    log.info("batch %s: handed back to %s for an idle worker", batch_id, queue)
                    raise Reject("handed to an idle worker", requeue=True)
                summary = runner_here().run(payload)
        except ServiceUnavailable as exc:
            # Results could not be stored: retry the whole (idempotent) batch later; the
            # lease covers the wait, so the retry is not mistaken for a dead worker's batch.
            countdown = min(60, 2 ** min(self.request.retries, 6))
            if leases is not None:
                with suppress(Exception):
                    leases.hold(batch_id, holder, countdown + settings.fleet.lease_s)
            log.warning("batch %s: %s; retrying", batch_id, exc)
            raise self.retry(exc=exc, countdown=countdown) from None
        except DeviceLost as exc:
            log.error("batch %s: %s; returning it to %s and stopping", batch_id, exc, queue)
            _record(breakers, queue, ok=False, reason=str(exc))
            if on_device_lost is not None:
                on_device_lost(str(exc))
            raise Reject(str(exc), requeue=True) from None
        if summary.get("engine_calls"):
            failed = summary["device_failed"] == summary["engine_calls"]
            _record(breakers, queue, ok=not failed, reason="the engine failed the whole batch")
        jobs = payload.get("jobs") or []
        log.info(
            "batch %s: %s",
            batch_id,
            summary,
            extra={
                "batch_id": batch_id,
                "job_ids": [j.get("job_id") for j in jobs if isinstance(j, dict)],
                "traces": payload.get("traces") or {},
            },
        )
        return summary

    return app


def _record(breakers: Breakers | None, queue: str, *, ok: bool, reason: str) -> None:
    if breakers is None or not queue:
        return
    try:
        state = breakers.record(queue, ok, reason)
    except redis.RedisError as exc:
        log.warning("breaker of %s not updated: %s", queue, exc)
        return
    if state == "open" and not ok:
        log.warning("breaker of %s is open: %s", queue, reason)


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
    dead_letters: DeadLetterStore | None = None,
    answers: ResultCache | None = None,
    registry: Registry | None = None,
) -> None:
    """Serve ``{namespace}.{kind}.{device}`` for each kind until SIGTERM.

    Warm shutdown finishes the batch in hand; a batch taken but not finished by a process
    that dies goes back to the queue (late acknowledgement). ``on_groups_done`` hears of job
    groups (OpenAI-style batches) whose last job a batch settled. With a ``metrics_port``
    (0: a free one) it serves /metrics, /livez and /readyz there and beats into Redis.
    Failed jobs go to ``dead_letters``; the answers of jobs the consumer gave a cache key
    are stored in ``answers`` (not with a ``dtype`` override: the key assumed the registry's).
    ``registry`` (default: the file's) says what each model, alias and version is.
    Raises ``DeviceLost`` once it stopped because its device failed and would not reload
    (exit non-zero so that a supervisor restarts it).
    """
    torch_device = pin_device(device)
    # A thread waiting for the GIL gets it after this long at most (default 5 ms). Engine
    # steps hold it between kernels; a second batch in hand waits for it at every round trip
    # of its claims and writes: with the default, the real-stack test's second batch ended
    # only after the first batch's 480-token row of the tiny model, with this it ends before.
    # No cost measured on SmolLM2 (bench/compare.py: 9.80 jobs/s with it, 9.60 without).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if settings.worker.torch_threads:
        torch.set_num_threads(settings.worker.torch_threads)
    budget = settings.worker.memory_budget_mb
    registry = registry or load_registry(settings)
    preload = [preload_ref(registry, m) for m in preload]
    cache = EngineCache(
        engine_factory(settings, dtype, registry),
        torch_device,
        None if budget is None else budget << 20,
    )
    metrics = WorkerMetrics(device) if settings.observe.enabled else None
    if metrics is None:
        metrics_port = None
    else:
        metrics.watch(cache)
    queues = ",".join(settings.queue(kind, device) for kind in kinds)
    name = f"{settings.namespace}-{device.replace(':', '')}@%h"

    def layout_of(model: str) -> str:
        spec = registry.get(model)
        return settings.s3.layout if spec is None else spec.layout(settings)

    times = BatchTimes(settings)
    leases, breakers = Leases(settings), Breakers(settings)
    runners = Runners(
        lambda: BatchRunner(
            settings,
            results,
            status,
            cache,
            on_groups_done,
            name.replace("%h", socket.gethostname()),
            metrics,
            dead_letters,
            times,
            layout_of,
            answers if dtype is None else None,
            leases,
        )
    )
    lost: list[str] = []

    def device_lost(why: str) -> None:
        lost.append(why)
        os.kill(os.getpid(), signal.SIGTERM)  # warm shutdown: stop taking batches

    observer = None
    if metrics is not None and metrics_port is not None:
        observer = ProcessObserver(
            settings,
            "worker",
            process_id(device),
            metrics.registry,
            worker_checks(settings, cache, preload, lost),
            info=lambda: {
                "device": device,
                "queues": queues.split(","),
                "models": {m: memory_bytes(e) for m, e in list(cache.engines.items())},
                "health": {**cache.health(), **({"device": f"lost: {lost[0]}"} if lost else {})},
                "weight": settings.fleet.weight,
                **runners.info(),
            },
            port=metrics_port,
        ).start()
    for model in preload:
        try:
            cache.get(model)
        except ModelUnavailable as exc:
            log.error("preload: %s", exc)
    handoff = Handoff(settings, leases.client, cache, process_id(device), queues.split(","))
    # listed idle once the worker consumes, so a batch handed to it is not taken back first
    worker_ready.connect(lambda **_: handoff.start(time.time()), weak=False)
    app = worker_app(settings, runners, leases, breakers, device_lost, handoff)
    try:
        _serve(app, queues, name, loglevel, settings.worker.batches_in_hand)
    finally:
        handoff.stop()
        if observer is not None:
            observer.stop()
    if lost:
        raise DeviceLost(lost[0])


def preload_ref(registry: Registry, model: str) -> str:
    """What a worker loads for ``--model``: the version the model's ``stable`` alias names
    (so its batches find it loaded), or the model itself where it has no versions."""
    if "@" not in model:
        routed = registry.route(f"{model}@stable", "")
        if routed is not None:
            return routed.ref
    routed = registry.route(model, "")
    return model if routed is None else routed.ref


def worker_checks(
    settings: BlazeSettings,
    cache: EngineCache,
    preload: Sequence[str],
    lost: Sequence[str] = (),
) -> dict[str, Check]:
    """Redis (the Celery broker and status), S3 (results), Kafka if status events are on,
    every preloaded model loaded, and the device not lost."""
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
    checks["device"] = lambda: f"lost: {lost[0]}" if lost else None
    return checks


class Runners:
    """The calling thread's ``BatchRunner`` (made on its first batch), and what the heartbeat
    says of all of them together."""

    def __init__(self, make: Callable[[], BatchRunner]) -> None:
        self._make = make
        self._local = threading.local()
        self._lock = threading.Lock()
        self.all: list[BatchRunner] = []

    def __call__(self) -> BatchRunner:
        runner: BatchRunner | None = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._local.runner = self._make()
            with self._lock:
                self.all.append(runner)
        return runner

    def info(self) -> dict[str, Any]:
        """Batches in hand, the last one ended, recent failures and seconds per job (of the
        worker: its runners' rates added up)."""
        with self._lock:
            runners = list(self.all)
        running = [r.current for r in runners if r.current is not None]
        ended = [r.last for r in runners if r.last is not None]
        failures = sorted((f for r in runners for f in list(r.failures)), key=lambda f: f["at"])
        rates = [1 / r.sec_per_job for r in runners if r.sec_per_job]
        return {
            "sec_per_job": 1 / sum(rates) if rates else None,
            "batch": running[0] if running else None,
            "batches": running,
            "last_batch": max(ended, key=lambda b: b["finished_at"]) if ended else None,
            "recent_failures": failures[-RECENT:],
        }


def _serve(app: Celery, queues: str, name: str, loglevel: str, in_hand: int) -> None:
    """Celery's solo pool for one batch at a time, its threads pool for several (the
    prefetch multiplier of 1 makes ``in_hand`` the batches taken from the broker at once)."""
    app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--pool",
            "solo" if in_hand == 1 else "threads",
            "--concurrency",
            str(in_hand),
            "--hostname",
            name,
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
