"""OpenAI-compatible routes: Files, Batches, Models, and chat/completions/embeddings.

The official ``openai`` client's batch code runs against these by changing ``base_url`` and
the key. Batch objects come from the OpenAI batch service (``pipelines.openai``), with the
file ids shown as files this gateway serves. The interactive routes submit one job at high
priority and answer when its result lands (no streaming: ``stream=true`` is a 400).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Body, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from blaze.gateway.auth import Principal
from blaze.gateway.core import Gateway
from blaze.gateway.errors import ApiError, not_found
from blaze.gateway.files import BATCH_FILE_ID, UPLOAD_ID, FileObject, batch_file_id
from blaze.gateway.jobs import submit_jobs
from pipelines.errors import ConfigError, NotFound
from pipelines.jobs import AnyJob
from pipelines.openai.outputs import response_body
from pipelines.openai.requests import RequestInvalid, batch_lines, request_job
from pipelines.openai.service import BatchInfo, BatchService
from pipelines.stores.status import JobState

Endpoint = Literal[
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/images/generations"
]
Meta = Annotated[
    dict[
        Annotated[str, StringConstraints(max_length=64)],
        Annotated[str, StringConstraints(max_length=512)],
    ],
    Field(max_length=16),
]


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: Annotated[str, StringConstraints(max_length=200)]
    endpoint: Endpoint
    completion_window: Annotated[
        str, StringConstraints(pattern=r"^[0-9]{1,6}(\.[0-9]{1,3})?[smhdw]?$")
    ] = "24h"
    metadata: Meta | None = None


def public_batch(info: BatchInfo) -> dict[str, Any]:
    """The batch object as OpenAI shows it: every file id is one ``/v1/files`` serves."""
    body = info.model_dump(mode="json")
    if not UPLOAD_ID.match(info.input_file_id):
        body["input_file_id"] = batch_file_id(info.id, "input")
    if info.output_file_id:
        body["output_file_id"] = batch_file_id(info.id, "output")
    if info.error_file_id:
        body["error_file_id"] = batch_file_id(info.id, "errors")
    body["blaze"] = {k: v for k, v in info.blaze.items() if k != "owner"}
    return body


def router(gw: Gateway) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["openai"])
    submitter: Principal = Depends(gw.require("submit"))
    jobs_submitter: Principal = Depends(gw.require("submit", rate=False))
    reader: Principal = Depends(gw.require("read"))

    def find_file(who: Principal, file_id: str) -> FileObject:
        batch = BATCH_FILE_ID.match(file_id)
        if batch:
            info = gw.owned_batch(who, batch.group(1), refresh=False)
            try:
                return gw.files.batch_file(info.id, batch.group(2), info.created_at, None)
            except NotFound:
                raise not_found("file", file_id) from None
        try:
            obj = gw.files.get(file_id)
        except NotFound:
            raise not_found("file", file_id) from None
        if not who.owns(obj.owner):
            raise not_found("file", file_id)
        return obj

    # -- files -------------------------------------------------------------------------------
    @api.post("/files")
    def upload_file(
        request: Request,
        file: Annotated[UploadFile, File()],
        purpose: Annotated[str, Form(max_length=32)],
        who: Principal = submitter,
    ) -> dict[str, Any]:
        """Upload a batch input file (JSONL, one request per line)."""
        if purpose != "batch":
            raise ApiError(400, f"purpose must be 'batch', got {purpose[:32]!r}", field="purpose")
        data = file.file.read()
        name = (file.filename or "upload.jsonl")[:255]
        try:
            batch_lines(data, name)
        except ConfigError as exc:
            raise ApiError(400, str(exc), field="file", code="invalid_file") from None
        obj = gw.files.create(file.file, len(data), name, purpose, who.tenant)
        request.state.audit_ids = [obj.id]
        return obj.public()

    @api.get("/files")
    def list_files(
        who: Principal = reader, purpose: Annotated[str | None, Query(max_length=32)] = None
    ) -> dict[str, Any]:
        owner = None if "admin" in who.scopes else who.tenant
        files = gw.files.list(owner, purpose)
        return {"object": "list", "data": [f.public() for f in files], "has_more": False}

    @api.get("/files/{file_id}")
    def get_file(file_id: str, who: Principal = reader) -> dict[str, Any]:
        return find_file(who, file_id).public()

    @api.get("/files/{file_id}/content")
    def file_content(file_id: str, who: Principal = reader) -> Response:
        obj = find_file(who, file_id)
        batch = BATCH_FILE_ID.match(obj.id)
        try:
            if batch:
                data = gw.files.batch_content(batch.group(1), batch.group(2))
            else:
                data = gw.files.content(obj.id)
        except NotFound:
            raise not_found("file", file_id) from None
        return Response(data, media_type="application/octet-stream")

    @api.delete("/files/{file_id}")
    def delete_file(file_id: str, request: Request, who: Principal = submitter) -> dict[str, Any]:
        obj = find_file(who, file_id)
        if not UPLOAD_ID.match(obj.id):
            raise ApiError(
                400, "a batch's files go with the batch (blaze results sweep)", field="file_id"
            )
        request.state.audit_ids = [obj.id]
        gw.files.delete(obj.id)
        return {"id": obj.id, "object": "file", "deleted": True}

    # -- batches -----------------------------------------------------------------------------
    @api.post("/batches")
    def create_batch(
        body: CreateBatch, request: Request, who: Principal = submitter
    ) -> dict[str, Any]:
        """Run every line of an uploaded file as a job; the batch ends with output files."""
        source = find_file(who, body.input_file_id)
        if source.purpose != "batch" or not UPLOAD_ID.match(source.id):
            raise ApiError(
                400,
                "input_file_id must be a file uploaded with purpose 'batch'",
                field="input_file_id",
            )
        try:
            lines = batch_lines(gw.files.content(source.id), source.id)
        except ConfigError as exc:
            raise ApiError(400, str(exc), field="input_file_id") from None

        def publish(jobs: Sequence[AnyJob], progress: object = None) -> None:
            submit_jobs(gw, who, request, list(jobs), batch=True)

        service = BatchService(gw.settings, gw.results, gw.status, publish=publish)
        info = service.submit_lines(
            lines,
            source=source.filename,
            input_file_id=source.id,
            endpoint=body.endpoint,
            owner=who.tenant,
            completion_window=body.completion_window,
            metadata=body.metadata,
        )
        request.state.audit_ids = [info.id, source.id]
        return public_batch(info)

    @api.get("/batches")
    def list_batches(
        who: Principal = reader,
        after: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> dict[str, Any]:
        mine = [b for b in gw.batches.list_batches() if who.owns(b.blaze.get("owner"))]
        if after is not None:
            ids = [b.id for b in mine]
            mine = mine[ids.index(after) + 1 :] if after in ids else []
        page = mine[:limit]
        return {
            "object": "list",
            "data": [public_batch(b) for b in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(mine) > limit,
        }

    @api.get("/batches/{batch_id}")
    def get_batch(batch_id: str, who: Principal = reader) -> dict[str, Any]:
        return public_batch(gw.owned_batch(who, batch_id))

    @api.post("/batches/{batch_id}/cancel")
    def cancel_batch(batch_id: str, request: Request, who: Principal = submitter) -> dict[str, Any]:
        gw.owned_batch(who, batch_id, refresh=False)
        request.state.audit_ids = [batch_id]
        return public_batch(gw.batches.cancel(batch_id))

    # -- models ------------------------------------------------------------------------------
    @api.get("/models")
    def list_models(who: Principal = reader) -> dict[str, Any]:
        return {"object": "list", "data": [_model(n) for n in gw.registry.names()]}

    @api.get("/models/{model}")
    def get_model(model: str, who: Principal = reader) -> dict[str, Any]:
        if gw.registry.get(model) is None:
            raise ApiError(
                404,
                f"model {model[:100]!r} is not registered",
                field="model",
                code="model_not_found",
            )
        return _model(model)

    # -- interactive -------------------------------------------------------------------------
    def interactive(url: str) -> Any:
        async def answer(
            request: Request,
            response: Response,
            body: Annotated[dict[str, Any], Body()],
            who: Principal = jobs_submitter,
        ) -> dict[str, Any]:
            return await _interactive(gw, who, request, response, url, body)

        answer.__doc__ = f"One {url} request as a high-priority job, answered when it ends."
        return answer

    for url in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        api.add_api_route(url.removeprefix("/v1"), interactive(url), methods=["POST"])
    return api


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "blaze"}


async def _interactive(
    gw: Gateway,
    who: Principal,
    request: Request,
    response: Response,
    url: str,
    body: dict[str, Any],
) -> dict[str, Any]:
    job_id = f"req-{uuid.uuid4().hex}"
    try:
        job = request_job(
            url, body, job_id=job_id, priority=gw.settings.gateway.interactive_priority
        )
    except RequestInvalid as bad:
        err = bad.error
        raise ApiError(400, err.message, field=err.param, code=err.code) from None
    response.headers.update(await run_in_threadpool(submit_jobs, gw, who, request, [job]))
    timeout = gw.settings.gateway.interactive_timeout_s
    deadline = time.monotonic() + timeout
    poll = 0.01
    while True:
        state = (await run_in_threadpool(gw.status.states, [job_id]))[job_id]
        if state is not None and state.terminal:
            break
        if time.monotonic() >= deadline or await request.is_disconnected():
            raise ApiError(
                504,
                f"job {job_id} did not finish within {timeout:g}s; it goes on: "
                f"GET /v1/jobs/{job_id}",
                code="timeout",
            )
        await anyio.sleep(poll)
        poll = min(poll * 1.5, 0.2)
    doc = await run_in_threadpool(gw.client.result, job_id)
    if doc is not None and doc.status == "succeeded":
        return response_body(url, doc, gw.settings.s3.bucket)
    reason = (doc.error if doc is not None else None) or f"the job ended {state.value}"
    if state is JobState.DEAD:
        raise ApiError(400, f"the request could not run: {reason}", code="invalid_request")
    raise ApiError(500, f"the request failed: {reason}", code="server_error")
