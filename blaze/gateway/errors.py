"""Every error the gateway answers is JSON: OpenAI's shape on the OpenAI routes, Blaze's on ours.

OpenAI routes: ``{"error": {"message", "type", "param", "code"}}``; the jobs, keys and
dead-letter routes: ``{"error": {"type", "message", "field"}}``. Nothing a client sends can
produce a stack trace: unexpected failures answer 500 with an opaque reference that the
gateway's log carries beside the traceback.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.errors import (
    BlazeError,
    ConfigError,
    InvalidJob,
    JobTimeout,
    NotFound,
    ServiceUnavailable,
)

log = logging.getLogger("blaze.gateway")

BLAZE_PREFIXES = ("/v1/jobs", "/v1/keys", "/v1/dead-letters")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}
_CODES = {401: "invalid_api_key", 403: "insufficient_scope", 429: "rate_limit_exceeded"}


class ApiError(BlazeError):
    """An answer other than success: status, what went wrong, and which field, if one."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, stage="gateway")
        self.status = status
        self.message = message
        self.field = field
        self.code = code
        self.headers = headers or {}


def not_found(what: str, ident: str) -> ApiError:
    """404 for an id that does not exist *or* that the caller does not own (ids do not leak)."""
    return ApiError(404, f"no {what} with id {ident[:140]!r}", code=f"{what}_not_found")


def error_body(path: str, err: ApiError) -> dict[str, Any]:
    kind = _TYPES.get(err.status, "invalid_request_error" if err.status < 500 else "server_error")
    if path.startswith(BLAZE_PREFIXES):
        return {"error": {"type": kind, "message": err.message, "field": err.field}}
    code = err.code or _CODES.get(err.status)
    return {"error": {"message": err.message, "type": kind, "param": err.field, "code": code}}


def respond(request: Request, err: ApiError) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, err), err.status, headers=err.headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or None


def validation_error(errors: list[dict[str, Any]], status: int = 422) -> ApiError:
    """An ``ApiError`` from pydantic's errors, naming the first field (inputs never echoed)."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _field(tuple(first.get("loc", ())))
    msgs = [f"{_field(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg')}" for e in errors[:5]]
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return ApiError(status, "; ".join(msgs) + more, field=field, code="invalid_value")


def from_blaze(exc: BlazeError) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ServiceUnavailable):
        # the address is ours to know; the client learns which service, not where it is
        return ApiError(503, f"{exc.service} is unavailable; try again", code="unavailable")
    if isinstance(exc, InvalidJob):
        return validation_error(list(exc.errors)) if exc.errors else ApiError(422, str(exc))
    if isinstance(exc, NotFound):
        return ApiError(404, str(exc), code="not_found")
    if isinstance(exc, JobTimeout):
        return ApiError(504, str(exc), code="timeout")
    if isinstance(exc, ConfigError):
        return ApiError(400, str(exc), code="invalid_value")
    return ApiError(400, str(exc))


Charge = Callable[[Request], Awaitable[ApiError | None]]
"""Counts a refused request against its caller's rate, if nothing did yet; returns the 429 to
answer instead when the caller is over it."""


def install(app: FastAPI, charge: Charge) -> None:
    """Route every failure through one of the two JSON shapes."""

    async def refuse(request: Request, err: ApiError) -> JSONResponse:
        if err.status != 429:  # a refused request still counts against the caller's rate
            err = await charge(request) or err
        return respond(request, err)

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return await refuse(request, exc)

    @app.exception_handler(BlazeError)
    async def _blaze(request: Request, exc: BlazeError) -> JSONResponse:
        return await refuse(request, from_blaze(exc))

    @app.exception_handler(redis.RedisError)
    async def _redis(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("Redis failed on %s %s: %s", request.method, request.url.path, exc)
        return respond(
            request, ApiError(503, "Redis is unavailable; try again", code="unavailable")
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [dict(e) for e in exc.errors()]
        json_error = any(e.get("type") == "json_invalid" for e in errors)
        return await refuse(request, validation_error(errors, 400 if json_error else 422))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail) if exc.status_code != 404 else f"no route {request.url.path}"
        return respond(request, ApiError(exc.status_code, message[:300]))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.exception("unexpected error %s on %s %s", ref, request.method, request.url.path)
        err = ApiError(500, f"internal error (reference {ref} in the gateway log)")
        return respond(request, err)
