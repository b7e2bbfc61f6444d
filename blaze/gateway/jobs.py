"""The jobs API: submit, status, result, cancel, and a stream of status events (SSE).

Bodies use the same pydantic job schemas as Kafka messages, so the JSON Schema ``blaze
submit schema`` prints and this service's OpenAPI document agree. Every job records its
owner (the key's tenant); a job of another tenant answers 404, like an unknown one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from blaze.gateway.auth import Principal
from blaze.gateway.core import Gateway
from blaze.gateway.errors import ApiError, not_found
from pipelines.client import stand_in
from pipelines.errors import BlazeError
from pipelines.jobs import GROUP_TAG, AnyJob, Job, is_job_id
from pipelines.observe import trace
from pipelines.results import DiffusionResult, parse_result
from pipelines.stores.batch_results import read_results
from pipelines.stores.status import JobState, JobStatus

MAX_FOLLOWED = 1000
EVENT_POLL_S = 0.25
HEARTBEAT_S = 15.0


class SubmitJobs(BaseModel):
    """One or many jobs to run (at most ``gateway.max_jobs_per_request``)."""

    jobs: Annotated[list[Job], Field(min_length=1)]


class Accepted(BaseModel):
    job_id: str
    kind: str
    state: str = "queued"


class SubmitAnswer(BaseModel):
    object: str = "list"
    data: list[Accepted]


def status_body(st: JobStatus) -> dict[str, Any]:
    body = dataclasses.asdict(st)
    body["state"] = st.state.value
    return body


def submit_jobs(
    gw: Gateway, who: Principal, request: Request, jobs: list[AnyJob], batch: bool = False
) -> dict[str, str]:
    """Check, admit and publish jobs for ``who``: the one path every submission takes.

    Returns the rate-limit headers for the answer. Routes that call it take the request
    from the bucket here (``require(..., rate=False)``), in the same round trip as the jobs;
    the batch service (``batch``) publishes from a route that took it already, and only it
    may publish jobs tagged with a batch id.
    """
    limit = gw.settings.gateway.max_jobs_per_request
    if len(jobs) > limit and not batch:
        raise ApiError(422, f"{len(jobs)} jobs in one request; at most {limit}", field="jobs")
    ids = [j.job_id for j in jobs]
    if len(set(ids)) != len(ids):
        raise ApiError(422, "job ids repeat within the request", field="jobs")
    for k, job in enumerate(jobs):
        if GROUP_TAG in job.tags and not batch:
            raise ApiError(
                422,
                f"the tag {GROUP_TAG!r} is reserved for OpenAI batches (POST /v1/batches)",
                field=f"jobs[{k}].tags.{GROUP_TAG}",
            )
    request.state.audit_ids = ids
    if batch:
        headers = gw.limits.jobs(who, len(jobs)).headers("jobs")
        gw.limits.admit(who, ids)
    else:
        request.state.uncharged = False  # the request is counted here, refused or not
        headers = gw.limits.submit(who, ids)
    parent = request.headers.get(trace.HEADER)
    parent = parent if trace.parse(parent) else None
    try:
        if batch:  # a whole batch file is one round of its own
            gw.client.submit_many(jobs, traceparent=parent)
        else:
            gw.publisher.publish(jobs, parent)
    except BlazeError:
        gw.limits.release(who, ids)
        raise
    via = "batch" if batch else ("interactive" if request.url.path != "/v1/jobs" else "jobs")
    for kind, n in Counter(j.kind for j in jobs).items():
        gw.metrics.submitted.labels(kind, via).inc(n)
    return headers


def router(gw: Gateway) -> APIRouter:
    api = APIRouter(prefix="/v1/jobs", tags=["jobs"])
    submitter: Principal = Depends(gw.require("submit"))
    jobs_submitter: Principal = Depends(gw.require("submit", rate=False))
    reader: Principal = Depends(gw.require("read"))

    def owned_status(who: Principal, job_id: str) -> JobStatus:
        if not is_job_id(job_id):
            raise not_found("job", job_id)
        gw.owned_jobs(who, [job_id])
        st = gw.status.get([job_id])[job_id]
        if st is None:
            raise not_found("job", job_id)
        return st

    @api.post("", status_code=202, response_model=SubmitAnswer)
    def submit(
        body: SubmitJobs, request: Request, response: Response, who: Principal = jobs_submitter
    ) -> SubmitAnswer:
        """Queue jobs; answers once the broker has every one of them."""
        response.headers.update(submit_jobs(gw, who, request, list(body.jobs)))
        return SubmitAnswer(data=[Accepted(job_id=j.job_id, kind=j.kind) for j in body.jobs])

    @api.get("/events")
    async def events(
        request: Request,
        who: Principal = reader,
        ids: Annotated[str | None, Query(max_length=130 * MAX_FOLLOWED)] = None,
        group: Annotated[str | None, Query(max_length=128)] = None,
    ) -> StreamingResponse:
        """Server-Sent Events: ``status`` for each change of the jobs (``ids``, comma
        separated) or ``progress`` of a batch (``group``), then ``end`` once all settled."""
        if (ids is None) == (group is None):
            raise ApiError(422, "give exactly one of 'ids' or 'group'", field="ids")
        if group is not None:
            await run_in_threadpool(gw.owned_batch, who, group, False)
            stream = _group_events(gw, request, group)
        else:
            wanted = list(dict.fromkeys(i for i in ids.split(",") if i)) if ids else []
            bad = [i for i in wanted if not is_job_id(i)]
            if bad or not wanted or len(wanted) > MAX_FOLLOWED:
                raise ApiError(
                    422, f"ids must be 1 to {MAX_FOLLOWED} comma-separated job ids", field="ids"
                )
            await run_in_threadpool(gw.owned_jobs, who, wanted)
            stream = _job_events(gw, request, wanted)
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    @api.get("/{job_id}")
    def status(job_id: str, who: Principal = reader) -> dict[str, Any]:
        """The job's state, when it reached each state, attempts, and why it failed."""
        return status_body(owned_status(who, job_id))

    @api.get("/{job_id}/result")
    def result(job_id: str, who: Principal = reader) -> dict[str, Any]:
        """The result document (images with presigned URLs); 409 while the job runs."""
        st = owned_status(who, job_id)
        raw = read_results(gw.settings, gw.results, gw.status, [job_id])[job_id]
        if raw is None:
            if st.state in (JobState.DEAD, JobState.CANCELLED):  # ended before any worker
                return stand_in(st).model_dump(mode="json")
            raise ApiError(
                409, f"job {job_id} has no result yet (state: {st.state.value})", code="not_ready"
            )
        doc = parse_result(raw)
        body = doc.model_dump(mode="json")
        if isinstance(doc, DiffusionResult):
            expires = gw.settings.gateway.presign_expires_s
            for image, out in zip(doc.images, body["images"], strict=True):
                out["url"] = gw.results.presign(image.key, expires)
        return body

    @api.post("/{job_id}/cancel")
    def cancel(job_id: str, request: Request, who: Principal = submitter) -> dict[str, Any]:
        """Cancel a job that has not started; answers the job's state afterwards."""
        owned_status(who, job_id)
        request.state.audit_ids = [job_id]
        state = gw.client.cancel([job_id], reason=f"cancelled by {who.name}")[job_id]
        return {"job_id": job_id, "state": state.value if state else None}

    return api


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _job_events(gw: Gateway, request: Request, ids: list[str]) -> AsyncIterator[bytes]:
    seen: dict[str, tuple[str, float]] = {}
    beat = time.monotonic()
    while not await request.is_disconnected():
        statuses = await run_in_threadpool(gw.status.get, ids)
        for job_id, st in statuses.items():
            if st is not None and seen.get(job_id) != (st.state.value, st.updated_at):
                seen[job_id] = (st.state.value, st.updated_at)
                beat = time.monotonic()
                yield _sse("status", status_body(st))
        done = [st for st in statuses.values() if st is not None and st.state.terminal]
        if len(done) == len(ids):
            yield _sse("end", {"jobs": len(ids)})
            return
        if time.monotonic() - beat > HEARTBEAT_S:
            beat = time.monotonic()
            yield b": keep-alive\n\n"
        await anyio.sleep(EVENT_POLL_S)


async def _group_events(gw: Gateway, request: Request, group: str) -> AsyncIterator[bytes]:
    last: object = None
    beat = time.monotonic()
    while not await request.is_disconnected():
        progress = await run_in_threadpool(gw.status.group_progress, group)
        now = {"group": group, "total": progress.total, "done": progress.done}
        now["counts"] = progress.counts
        if now != last:
            last, beat = now, time.monotonic()
            yield _sse("progress", now)
        if progress.complete:
            yield _sse("end", now)
            return
        if time.monotonic() - beat > HEARTBEAT_S:
            beat = time.monotonic()
            yield b": keep-alive\n\n"
        await anyio.sleep(EVENT_POLL_S)
