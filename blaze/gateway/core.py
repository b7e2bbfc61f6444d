"""The gateway's connections and the checks every route shares (who calls, may it, how fast).

A gateway replica holds nothing of its own: jobs go to Kafka, status, keys, owners and rate
buckets live in Redis, files and results in S3. So any number of replicas can serve behind a
load balancer, and a restart loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import jwt
from fastapi import Request, Response
from starlette.concurrency import run_in_threadpool

from blaze.gateway.auth import KeyStore, Principal, TokenVerifier, looks_like_jwt
from blaze.gateway.errors import ApiError, not_found
from blaze.gateway.files import FileStore
from blaze.gateway.frontdoor import AuditLog
from blaze.gateway.limits import Limits, too_many
from blaze.gateway.metrics import GatewayMetrics
from blaze.gateway.publisher import Publisher
from blaze.sdk import Client
from pipelines.errors import NotFound
from pipelines.openai.service import BatchInfo, BatchService
from pipelines.settings import BlazeSettings
from pipelines.stores import connect
from pipelines.stores.redis_client import redis_client

log = logging.getLogger("blaze.gateway")


class Gateway:
    """Everything a request may need, built once per replica."""

    def __init__(self, settings: BlazeSettings) -> None:
        self.settings = settings
        self.redis = redis_client(settings, health_check_s=30)
        self.client = Client(settings, status_store=connect.status_store(settings))
        self.status = self.client.status_store
        self.results = self.client.result_store
        self.batches = BatchService.of(self.client)
        self.publisher = Publisher(self.client)
        self.files = FileStore(settings, self.results)
        self.keys = KeyStore(settings, self.redis)
        self.tokens = TokenVerifier(settings.gateway)
        self.limits = Limits(settings, self.redis, self.status)
        self.audit = AuditLog(settings)
        self.registry = connect.live_registry(settings)
        self.metrics = GatewayMetrics()
        self.on_close: list[Callable[[], None]] = []

    def close(self) -> None:
        for hook in self.on_close:
            hook()
        self.publisher.close()
        self.audit.close()
        self.client.close()
        self.redis.close()

    # -- who calls ------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "missing API key: send it as 'Authorization: Bearer <key>'",
                headers={"www-authenticate": "Bearer"},
            )
        return self.verify(token)

    def verify(self, token: str) -> Principal:
        """The caller a bearer token (API key or JWT) stands for; ``ApiError`` 401 if none."""
        if looks_like_jwt(token) and self.tokens.enabled:
            try:
                return self.tokens.verify(token)
            except (jwt.PyJWTError, ValueError) as exc:
                raise ApiError(
                    401, f"invalid bearer token: {str(exc)[:200]}", code="invalid_token"
                ) from None
        who = self.keys.verify(token)
        if who is None:
            raise ApiError(401, "invalid API key (unknown, revoked or expired)")
        return who

    def require(self, scope: str, rate: bool = True) -> Callable[[Request, Response], Principal]:
        """A route dependency: the caller, if it may act in ``scope`` and is within its rate
        (``rate=False``: the route takes the request from the bucket itself, with its jobs)."""

        def check(request: Request, response: Response) -> Principal:
            who = self.authenticate(request)
            request.state.principal = who
            if not who.can(scope):
                raise ApiError(
                    403, f"this key lacks the {scope!r} scope", code="insufficient_scope"
                )
            if not rate:
                request.state.uncharged = True  # submit_jobs takes it, with the jobs
                return who
            bucket = self.limits.request(who)
            if not bucket.allowed:
                raise too_many(bucket, "requests", f"{who.requests_per_s:g} requests per second")
            response.headers.update(bucket.headers("requests"))
            return who

        return check

    async def charge(self, request: Request) -> ApiError | None:
        """Take the request a route refused before its own rate check (``rate=False``)."""
        who = getattr(request.state, "principal", None)
        if not getattr(request.state, "uncharged", False) or who is None:
            return None
        request.state.uncharged = False
        bucket = await run_in_threadpool(self.limits.request, who)
        if bucket.allowed:
            return None
        return too_many(bucket, "requests", f"{who.requests_per_s:g} requests per second")

    # -- what it owns ---------------------------------------------------------------------
    def owned_jobs(self, who: Principal, job_ids: list[str]) -> None:
        """``ApiError`` 404 naming the first job that ``who`` may not see."""
        if "admin" in who.scopes:
            return
        for job_id, owner in self.limits.owners(job_ids).items():
            if owner != who.tenant:
                raise not_found("job", job_id)

    def owned_batch(self, who: Principal, batch_id: str, refresh: bool = True) -> BatchInfo:
        """The batch as it stands, if ``who`` may see it; ``ApiError`` 404 otherwise."""
        try:
            info = self.batches.load(batch_id)
        except NotFound:
            raise not_found("batch", batch_id) from None
        if not who.owns(info.blaze.get("owner")):
            raise not_found("batch", batch_id)
        return self.batches.refresh(batch_id) if refresh else info
