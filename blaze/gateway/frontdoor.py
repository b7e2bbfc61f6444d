"""What every request passes before and after its route: the body size limit and the audit.

A body over the limit is refused with 413 before the route reads it, whether the client
announced its length or streams it chunked. Every mutating call (POST, PUT, PATCH, DELETE) is
audited once it is answered: who (key id, name, tenant), what (method and route), which ids,
the outcome (status code) and the client's address, to ``{namespace}.audit`` and the log.
Routes add the ids they touched to ``request.state.audit_ids``; nothing else of a request
(no prompt, no key) is recorded.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from kafka.errors import KafkaError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from blaze.gateway.errors import ApiError, error_body
from pipelines.kafka import ensure_topics, make_producer
from pipelines.settings import BlazeSettings

log = logging.getLogger("blaze.audit")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
MAX_AUDIT_IDS = 100


class AuditLog:
    """Publishes audit records to ``{namespace}.audit`` (fire and forget) and logs them."""

    def __init__(self, settings: BlazeSettings) -> None:
        self.topic = f"{settings.namespace}.audit"
        self.enabled = settings.gateway.audit
        self._producer = None
        if self.enabled:
            ensure_topics(settings, [self.topic])
            # nobody waits for an audit record: gather them 100 ms, so a busy gateway sends a
            # few large batches (the embedded broker writes one S3 object per batch)
            self._producer = make_producer(settings, acks=1, linger_ms=100)

    def record(self, entry: dict[str, Any]) -> None:
        log.info("audit %s", json.dumps(entry, sort_keys=True))
        if self._producer is None:
            return
        try:
            actor = entry.get("actor") or {}
            fut = self._producer.send(  # keyed by tenant: one tenant's records stay in order
                self.topic,
                key=str(actor.get("tenant", "")).encode(),
                value=json.dumps(entry).encode(),
            )
            fut.add_errback(lambda exc: log.warning("audit record not published: %s", exc))
        except KafkaError as exc:
            log.warning("audit record not published: %s", exc)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)


class FrontDoor:
    """ASGI middleware: body limits and the audit of mutating calls."""

    def __init__(
        self, app: ASGIApp, *, json_limit: int, upload_limit: int, audit: AuditLog | None
    ) -> None:
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        limit = self.upload_limit if path == "/v1/files" else self.json_limit
        state = scope.setdefault("state", {})
        outcome = {"status": 500, "started": False}
        too_big = False

        async def send_413() -> None:
            err = ApiError(413, f"the request body is over the {limit} byte limit")
            body = json.dumps(error_body(path, err)).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            await send({"type": "http.response.start", "status": 413, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            outcome.update(status=413, started=True)

        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await send_413()
            self._audit(scope, state, 413)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen, too_big
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    too_big = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: Message) -> None:
            if too_big:  # the route gave up on the cut body: the 413 is the answer
                if not outcome["started"]:
                    await send_413()
                return
            if message["type"] == "http.response.start":
                outcome.update(status=message["status"], started=True)
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except Exception:
            if not too_big:
                raise
            if not outcome["started"]:
                await send_413()
        if method in MUTATING:
            self._audit(scope, state, int(outcome["status"]))

    def _audit(self, scope: Scope, state: dict[str, Any], status: int) -> None:
        if self.audit is None or scope["method"] not in MUTATING:
            return
        ids = list(state.get("audit_ids", []))
        who = state.get("principal")
        route = scope.get("route")
        client = scope.get("client")
        self.audit.record(
            {
                "at": time.time(),
                "actor": who.audit() if who is not None else None,
                "action": f"{scope['method']} {getattr(route, 'path', scope['path'])}"[:200],
                "ids": ids[:MAX_AUDIT_IDS],
                "id_count": len(ids),
                "outcome": status,
                "client": client[0] if client else None,
            }
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
