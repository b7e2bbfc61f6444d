"""The gateway application: ``create_app(settings)``, or ``from_env()`` for uvicorn workers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from blaze.gateway import admin, errors, jobs, openai
from blaze.gateway.core import Gateway
from blaze.gateway.frontdoor import FrontDoor
from pipelines.settings import BlazeSettings, load_settings

log = logging.getLogger("blaze.gateway")


def create_app(settings: BlazeSettings, gateway: Gateway | None = None) -> FastAPI:
    """The HTTP API over the pipeline; connections are made here, once."""
    gw = gateway or Gateway(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            gw.close()

    app = FastAPI(
        title="Blaze gateway",
        version="1",
        description="Jobs API and OpenAI-compatible Files, Batches and inference routes.",
        lifespan=lifespan,
    )
    app.state.gateway = gw
    errors.install(app, gw.charge)
    app.include_router(jobs.router(gw))
    app.include_router(openai.router(gw))
    app.include_router(admin.router(gw))

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    gws = settings.gateway
    app.add_middleware(
        FrontDoor,
        json_limit=gws.max_body_kb * 1024,
        upload_limit=gws.max_file_mb << 20,
        audit=gw.audit,
    )
    return app


def from_env() -> FastAPI:
    """The app from ``BLAZE_*`` settings (what ``blaze gateway --workers N`` starts in each)."""
    return create_app(load_settings())
