"""The Redis ``VersionStore``: one hash of records (``{ns}:models``, name → JSON), a revision
counter (``{ns}:models-rev``) and a capped audit list (``{ns}:models-audit``). A change is a
WATCH/MULTI transaction on the hash, retried when another node changed it meanwhile."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from pipelines.errors import ServiceUnavailable
from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import redis_client
from pipelines.stores.versions import Change
from pipelines.versions import ModelRecord

AUDIT_KEEP = 10_000


class RedisVersionStore:
    """Model records in Redis (or Valkey), shared by every node of a namespace."""

    def __init__(self, settings: BlazeSettings, *, timeout_s: float = 5) -> None:
        self.url = settings.redis_url
        self.r = redis_client(settings, connect_timeout_s=timeout_s, timeout_s=timeout_s)
        ns = settings.namespace
        self.key, self.rev_key, self.audit_key = (
            f"{ns}:models",
            f"{ns}:models-rev",
            f"{ns}:models-audit",
        )

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable("Redis", self.url.split("@")[-1], str(exc)[:200])

    def revision(self) -> int:
        try:
            return int(self.r.get(self.rev_key) or 0)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def load(self) -> dict[str, ModelRecord]:
        try:
            raw = self.r.hgetall(self.key)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        out = {}
        for body in raw.values():
            record = ModelRecord.model_validate_json(body)
            out[record.name] = record
        return out

    def change(self, name: str, fn: Change) -> ModelRecord:
        try:
            with self.r.pipeline() as p:
                while True:
                    try:
                        p.watch(self.key)  # type: ignore[no-untyped-call]
                        raw = p.hget(self.key, name)
                        before = None if raw is None else ModelRecord.model_validate_json(raw)
                        after = fn(before)
                        if after == before:
                            p.unwatch()
                            return after
                        p.multi()
                        p.hset(self.key, name, after.to_json())
                        p.incr(self.rev_key)
                        p.execute()
                        return after
                    except redis.WatchError:
                        continue
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def audit(self, entry: dict[str, Any]) -> None:
        body = json.dumps({"at": time.time(), **entry})
        try:
            with self.r.pipeline(transaction=False) as p:
                p.lpush(self.audit_key, body)
                p.ltrim(self.audit_key, 0, AUDIT_KEEP - 1)
                p.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def trail(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        try:
            raw = self.r.lrange(self.audit_key, 0, AUDIT_KEEP - 1)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        found = [json.loads(x) for x in raw]
        return [e for e in found if name is None or e.get("model") == name][:limit]

    def close(self) -> None:
        self.r.close()
