"""The gateway application: ``create_app(settings)``, or ``from_env()`` for uvicorn workers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from blaze.gateway import admin, dashboard, errors, jobs, openai
from blaze.gateway.core import Gateway
from blaze.gateway.frontdoor import FrontDoor
from blaze.gateway.metrics import Metered
from pipelines.observe.checks import service_checks
from pipelines.observe.heartbeats import blaze_version
from pipelines.observe.probes import Readiness, readiness_body
from pipelines.observe.process import ProcessObserver, process_id
from pipelines.settings import BlazeSettings, load_settings

log = logging.getLogger("blaze.gateway")


def create_app(settings: BlazeSettings, gateway: Gateway | None = None) -> FastAPI:
    """The HTTP API over the pipeline; connections are made here, once."""
    gw = gateway or Gateway(settings)
    # /readyz lives as long as the app; heartbeats as long as each lifespan (an app can be
    # started more than once, e.g. by a test client and then a fuzzer)
    readiness = Readiness(service_checks(settings, "kafka", "redis", "s3"))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        gws = settings.gateway
        # no probe server of its own: the gateway serves /metrics, /livez and /readyz itself
        observer = ProcessObserver(
            settings,
            "gateway",
            process_id(),
            gw.metrics.registry,
            {},
            port=None,
            url=f"http://{gws.host}:{gws.port}",
        ).start()
        try:
            yield
        finally:
            observer.stop()
            readiness.close()
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
    app.include_router(dashboard.router(gw))

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/livez", tags=["health"])
    def livez() -> dict[str, str]:
        """The process answers (nothing else is checked)."""
        return {"status": "alive", "role": "gateway", "version": blaze_version()}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Kafka, Redis and S3 reachable; 503 naming what is not."""
        code, body = readiness_body(readiness.run())
        return JSONResponse(body, status_code=code)

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    gws = settings.gateway
    app.add_middleware(
        FrontDoor,
        json_limit=gws.max_body_kb * 1024,
        upload_limit=gws.max_file_mb << 20,
        audit=gw.audit,
    )
    app.add_middleware(Metered, metrics=gw.metrics)
    return app


def from_env() -> FastAPI:
    """The app from ``BLAZE_*`` settings (what ``blaze gateway --workers N`` starts in each)."""
    return create_app(load_settings())
