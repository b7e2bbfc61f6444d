"""``/dashboard``: the live operator view, served by the gateway.

Who may look: an admin key, or a key with the read-only ``dashboard`` scope. A browser cannot
put a bearer header on an EventSource, so the sign-in form posts the key once and the answer
keeps it in an HttpOnly, SameSite=Strict cookie scoped to ``/dashboard``. A link may carry the
key after ``#`` (``/dashboard#key=...``): a fragment never reaches a server or its access log,
and the sign-in page posts it and drops it from the address bar. A key in the query string
would be written to every access log on the way, so ``?key=`` is refused.

The page is plain JavaScript and SVG (nothing fetched from a CDN); it follows
``/dashboard/events``, a Server-Sent Events stream of one monitor snapshot per second (the
same figures ``blaze top`` shows: the processes' /metrics and heartbeats).
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Form, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.concurrency import run_in_threadpool

from blaze.gateway.auth import Principal
from blaze.gateway.core import Gateway
from blaze.gateway.errors import ApiError
from blaze.monitor import Monitor, openai_batches, pipeline_runs

COOKIE = "blaze_dashboard"
STATIC = Path(__file__).parent / "static"
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


class SharedMonitor:
    """One monitor per replica; viewers within ``max_age_s`` of each other share a snapshot."""

    def __init__(self, gw: Gateway, max_age_s: float = 0.9) -> None:
        self.gw = gw
        self.max_age_s = max_age_s
        self._monitor: Monitor | None = None
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, Any]] | None = None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            if self._last and time.monotonic() - self._last[0] < self.max_age_s:
                return self._last[1]
            if self._monitor is None:
                self._monitor = Monitor(
                    self.gw.settings,
                    batches=openai_batches(self.gw.batches),
                    pipelines=pipeline_runs(self.gw.settings),
                )
            snap = self._monitor.snapshot()
            self._last = (time.monotonic(), snap)
            return snap

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close()


LOGIN = (STATIC / "login.html").read_text()


def router(gw: Gateway) -> APIRouter:
    api = APIRouter(prefix="/dashboard", include_in_schema=False)
    shared = SharedMonitor(gw)
    gw.on_close.append(shared.close)

    def token_of(request: Request) -> str | None:
        token = request.cookies.get(COOKIE)
        if not token:
            scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
            token = bearer.strip() if scheme.lower() == "bearer" else None
        return token

    def viewer(request: Request, token: str | None = None) -> Principal:
        token = token or token_of(request)
        if not token:
            raise ApiError(401, "sign in with an admin or dashboard key")
        who = gw.verify(token)
        if not who.can("dashboard"):
            raise ApiError(403, "this key lacks the 'dashboard' scope", code="insufficient_scope")
        return who

    def login_page(message: str, status: int) -> HTMLResponse:
        page = LOGIN.replace("{{message}}", html.escape(message))
        return HTMLResponse(page, status_code=status)

    def signed_in(request: Request, key: str) -> Response:
        try:
            viewer(request, key)
        except ApiError as exc:
            return login_page(exc.message, exc.status)
        resp = RedirectResponse("/dashboard", status_code=303)
        resp.set_cookie(
            COOKIE,
            key,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/dashboard",
            max_age=12 * 3600,
        )
        return resp

    @api.get("")
    def page(request: Request, key: str | None = None) -> Response:
        if key is not None:
            return login_page(
                "Keys do not go in the query string (access logs keep URLs): use the form, or "
                "/dashboard#key=... . Revoke that key if this URL passed through a proxy.",
                400,
            )
        try:
            viewer(request)
        except ApiError as exc:  # a page to sign in on, not an error: 200
            return login_page(
                "Sign in to watch the pipeline." if exc.status == 401 else exc.message, 200
            )
        return FileResponse(STATIC / "dashboard.html", media_type="text/html")

    @api.post("/login")
    def login(request: Request, key: str = Form("")) -> Response:
        return signed_in(request, key.strip())

    @api.post("/logout")
    def logout() -> Response:
        resp = RedirectResponse("/dashboard", status_code=303)
        resp.delete_cookie(COOKIE, path="/dashboard")
        return resp

    @api.get("/assets/{name}")
    def asset(name: str) -> Response:
        if name not in ASSETS:
            raise ApiError(404, f"no asset {name!r}")
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    @api.get("/snapshot")
    async def snapshot(request: Request) -> dict[str, Any]:
        viewer(request)
        return await run_in_threadpool(shared.snapshot)

    @api.get("/events")
    async def events(request: Request) -> StreamingResponse:
        viewer(request)
        token = token_of(request) or ""

        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            checked = time.monotonic()
            while not await request.is_disconnected():
                if time.monotonic() - checked > 30:  # a revoked key stops its open streams too
                    try:
                        await run_in_threadpool(viewer, request, token)
                    except ApiError:
                        yield "event: signed-out\ndata: {}\n\n"
                        return
                    checked = time.monotonic()
                snap = await run_in_threadpool(shared.snapshot)
                yield f"event: snapshot\ndata: {json.dumps(snap, default=str)}\n\n"
                await anyio.sleep(1.0)

        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    return api
