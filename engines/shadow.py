"""Shadow batches: jobs run again on another version of their model, results kept apart.

The consumer sends a sample of a model's jobs to its shadow version (``pipelines.versions``)
as batches of their own. Their documents go to ``{ns}/shadow/{name@N}/{job_id}.json`` (first
writer wins) and nowhere else: no claim, no state, no event, no result-cache entry, no image
(a shadow diffusion document keeps its image sizes and seeds, not the PNGs), so the job's
own answer is never touched. ``blaze models compare`` reads them back beside the real ones.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import TypeAdapter, ValidationError

from engines.base import Output
from engines.cache import EngineCache
from engines.documents import result_docs
from engines.recovery import run_with_retries
from pipelines.errors import ModelUnavailable, ServiceUnavailable
from pipelines.jobs import AnyJob, Job, job_seed
from pipelines.settings import BlazeSettings
from pipelines.stores.results import ResultStore

log = logging.getLogger(__name__)
_JOB: TypeAdapter[AnyJob] = TypeAdapter(Job)


def run_shadow(
    settings: BlazeSettings, results: ResultStore, engines: EngineCache, payload: dict[str, Any]
) -> dict[str, int]:
    """Run one shadow batch; returns counts (``shadow_written``, ``shadow_failed``)."""
    ref = str(payload["shadow"])
    jobs: list[AnyJob] = []
    for raw in payload.get("jobs", []):
        try:
            job = _JOB.validate_python(raw)
        except ValidationError:
            continue
        jobs.append(
            job if job.seed is not None else job.model_copy(update={"seed": job_seed(job.job_id)})
        )
    if not jobs:
        return {"shadow_written": 0, "shadow_failed": 0}
    t0 = time.time()
    fleet = settings.fleet
    try:
        got = run_with_retries(
            engines, ref, jobs, retries=fleet.engine_retries, backoff_s=fleet.retry_backoff_s
        )
        outputs, prov = got.outputs, got.engine.describe()
    except ModelUnavailable as exc:
        outputs, prov = [Output(error=str(exc))] * len(jobs), {"model": ref}
    queued_at = float(payload.get("queued_at", t0))
    docs, _images = result_docs(
        settings, ref, jobs, outputs, prov, (t0, time.time() - t0, queued_at), len(jobs), {}
    )
    items = [(settings.shadow_key(ref, d.job_id), d.to_json(), "application/json") for d in docs]
    try:
        results.put_many(items, if_absent=True)
    except ServiceUnavailable as exc:  # a shadow never retries: it must not hold a queue
        log.warning("shadow results of %s not written: %s", ref, exc)
        return {"shadow_written": 0, "shadow_failed": len(docs)}
    failed = sum(d.status != "succeeded" for d in docs)
    log.info("shadow batch of %d jobs on %s: %d failed", len(docs), ref, failed)
    return {"shadow_written": len(docs), "shadow_failed": failed}
