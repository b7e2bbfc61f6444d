"""The Redis ``CacheIndex``: one string per entry (``{ns}:cache:MODEL/HEX``, ``SET NX EX``),
the shared counters in one hash and the generation number in one string. Every call is one
round trip (pipelined), however many keys it takes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from pipelines.errors import ServiceUnavailable
from pipelines.settings import BlazeSettings
from pipelines.stores.cache_index import CacheEntry
from pipelines.stores.redis_client import redis_client

_SCAN = 1000


class RedisCacheIndex:
    """Cache entries in Redis (or Valkey) under ``{namespace}:cache:``."""

    def __init__(self, settings: BlazeSettings) -> None:
        self.url = settings.redis_url
        self.r = redis_client(settings)
        ns = settings.namespace
        self.prefix = f"{ns}:cache:"
        self.stats_key = f"{ns}:cache-stats"
        self.gen_key = f"{ns}:cache-gen"

    def _unavailable(self, exc: Exception) -> ServiceUnavailable:
        return ServiceUnavailable("Redis", self.url.split("@")[-1], str(exc)[:200])

    def get_many(self, keys: Sequence[str]) -> dict[str, CacheEntry]:
        if not keys:
            return {}
        try:
            raw = self.r.mget([self.prefix + k for k in keys])
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        out: dict[str, CacheEntry] = {}
        for key, value in zip(keys, raw, strict=True):
            entry = CacheEntry.from_json(value) if value is not None else None
            if entry is not None:
                out[key] = entry
        return out

    def put_many(self, entries: Sequence[tuple[str, CacheEntry]], ttl_s: int) -> None:
        if not entries:
            return
        try:
            with self.r.pipeline(transaction=False) as p:
                for key, entry in entries:
                    p.set(self.prefix + key, entry.to_json(), nx=True, ex=ttl_s)
                p.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def _keys(self, model: str | None) -> list[str]:
        match = self.prefix + (f"{model}/*" if model else "*")
        return [
            k.decode() if isinstance(k, bytes) else str(k)
            for k in self.r.scan_iter(match=match, count=_SCAN)
        ]

    def delete(self, model: str | None = None, older_than: float | None = None) -> list[str]:
        try:
            keys = self._keys(model)
            if older_than is not None and keys:
                values = self.r.mget(keys)
                keys = [
                    k
                    for k, v in zip(keys, values, strict=True)
                    if v is not None
                    and (e := CacheEntry.from_json(v)) is not None
                    and e.at < older_than
                ]
            for start in range(0, len(keys), _SCAN):
                self.r.delete(*keys[start : start + _SCAN])
            if keys:
                self.r.incr(self.gen_key)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return [k[len(self.prefix) :] for k in keys]

    def generation(self) -> int:
        try:
            return int(self.r.get(self.gen_key) or 0)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def count(self, counts: Mapping[str, int]) -> None:
        if not counts:
            return
        try:
            with self.r.pipeline(transaction=False) as p:
                for name, n in counts.items():
                    p.hincrby(self.stats_key, name, n)
                p.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def counts(self) -> dict[str, int]:
        try:
            raw = self.r.hgetall(self.stats_key)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}

    def usage(self) -> tuple[int, int]:
        try:
            keys = self._keys(None)
            total = 0
            for start in range(0, len(keys), _SCAN):
                with self.r.pipeline(transaction=False) as p:
                    for k in keys[start : start + _SCAN]:
                        p.strlen(k)
                    total += sum(int(n) for n in p.execute())
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None
        return len(keys), total

    def close(self) -> None:
        self.r.close()
