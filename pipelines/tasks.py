"""The Celery side of the contract between consumers and workers: app config and task names.

Consumers send tasks by name to a queue; workers register the implementations. Neither imports
the other. Tasks are acknowledged late and rejected when the worker is lost, so a batch whose
worker dies goes back to the queue; results are idempotent, so a rerun is harmless.
"""

from __future__ import annotations

import ssl
from typing import Any

from celery import Celery

from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import redis_tls

RUN_BATCH = "blaze.run_batch"


def celery_app(settings: BlazeSettings, name: str = "blaze") -> Celery:
    """A Celery app on the Redis broker from settings (no result backend: results go to S3)."""
    app = Celery(name, broker=settings.redis_url, set_as_current=False)
    pw = settings.redis.password
    vt = settings.worker.visibility_timeout_s
    transport: dict[str, Any] = {
        "visibility_timeout": vt,
        "socket_connect_timeout": 5,
        # A batch whose worker died comes back once it is older than the visibility timeout.
        # kombu looks for such batches every `interval` s but by default scans only every
        # 10th look (every 100 s); scan on every look instead, a cheap ZRANGE.
        "unacked_restore_interval": max(1, min(10, vt // 4)),
        "unacked_restore_throttle": 1,
    }
    if pw is not None:
        app.conf.broker_password = pw.get_secret_value()
    tls = redis_tls(settings)
    if tls:  # rediss://: kombu takes the ssl module's names for the same options
        app.conf.broker_use_ssl = {
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            **{k: v for k, v in tls.items() if k != "ssl_cert_reqs"},
        }
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        task_default_queue=settings.queue("llm", "cpu"),
    )
    return app


def celery_priority(priority: int) -> int:
    """The Celery priority of a Blaze priority: kombu's Redis transport serves lower numbers
    first (in steps 0, 3, 6, 9), Blaze's 9 is the most urgent."""
    return 9 - max(0, min(9, priority))


def batch_payload(
    jobs: list[dict[str, Any]],
    *,
    batch_id: str,
    queued_at: float,
    traces: dict[str, str] | None = None,
    priority: int | None = None,
    cache_keys: dict[str, str] | None = None,
    versions: dict[str, str] | None = None,
    shadow: str | None = None,
    alone: bool = False,
) -> dict[str, Any]:
    """The body of one ``run_batch`` task: the jobs themselves plus batch bookkeeping.

    ``traces`` maps job ids to the W3C ``traceparent`` each job arrived with (the consumer's
    hop), so the worker logs and records it with the job's result. ``priority`` (0-9, 9 most
    urgent) is the batch's: its most urgent job's, by default. ``cache_keys`` maps job ids to
    their result-cache keys (``pipelines.result_cache``): the worker stores those answers.
    ``versions`` maps job ids to the version each runs on (``name@N``, ``pipelines.versions``)
    where that is not what the job names; a ``shadow`` batch runs its jobs on that version and
    keeps their results apart (never the jobs' own results, states or events). An ``alone``
    batch (the reaper's, of one job whose worker died too often) runs with nothing else on the
    engine beside it.
    """
    if priority is None:
        priority = max((int(j.get("priority", 5)) for j in jobs), default=5)
    body: dict[str, Any] = {
        "batch_id": batch_id,
        "queued_at": queued_at,
        "priority": priority,
        "jobs": jobs,
    }
    if traces:
        body["traces"] = traces
    if cache_keys:
        body["cache_keys"] = cache_keys
    if versions:
        body["versions"] = versions
    if shadow:
        body["shadow"] = shadow
    if alone:
        body["alone"] = True
    return body
