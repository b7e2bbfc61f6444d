"""The result cache's index: cache key → entry, shared by every consumer and worker.

The ``CacheIndex`` contract, its in-memory backend (unit tests, docs) and the ``CacheEntry``
record; the Redis backend is ``cache_index_redis``. Keys are ``MODEL/HEX`` (the model, then the
job's cache key, ``pipelines.cache_keys``), so one model's entries can be cleared alone. The
first entry stored under a key stays until it expires or is cleared: the job that ran first is
the one every hit names. A *generation* number changes whenever entries are removed, so a
process that keeps entries in memory knows to drop them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

TIERS = ("memory", "redis", "s3")
"""Where a hit was found: the consumer's memory, the index's inline document, S3."""


@dataclass(frozen=True)
class CacheEntry:
    """What the cache knows of one answer: the job that computed it, when, and its result
    document inline (small ones) or the S3 key of a content-addressed copy, with its images'."""

    origin: str
    at: float
    doc: bytes | None = None
    object: str = ""
    images: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"origin": self.origin, "at": self.at}
        if self.doc is not None:
            body["doc"] = self.doc.decode()
        if self.object:
            body["object"] = self.object
        if self.images:
            body["images"] = list(self.images)
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> CacheEntry | None:
        """The entry, or None for a value that is not one (a stranger's key)."""
        try:
            body = json.loads(raw)
            doc = body.get("doc")
            return cls(
                origin=str(body["origin"]),
                at=float(body["at"]),
                doc=doc.encode() if isinstance(doc, str) else None,
                object=str(body.get("object") or ""),
                images=tuple(str(k) for k in body.get("images") or ()),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    @property
    def size(self) -> int:
        return len(self.doc or b"") + len(self.object) + sum(len(k) for k in self.images) + 64


class CacheIndex(Protocol):
    """Cache entries by ``MODEL/HEX`` key, with expiry, counters and a generation number."""

    def get_many(self, keys: Sequence[str]) -> dict[str, CacheEntry]:
        """The entries found (missing and expired keys are left out)."""
        ...

    def put_many(self, entries: Sequence[tuple[str, CacheEntry]], ttl_s: int) -> None:
        """Store entries that are not there yet (the first one stays), expiring after ttl_s."""
        ...

    def delete(self, model: str | None = None, older_than: float | None = None) -> list[str]:
        """Remove every entry (of ``model``; stored before ``older_than``); returns their keys
        and moves the generation on when any went."""
        ...

    def generation(self) -> int: ...

    def count(self, counts: Mapping[str, int]) -> None:
        """Add to the shared counters (hits per tier, misses, stores)."""
        ...

    def counts(self) -> dict[str, int]: ...

    def usage(self) -> tuple[int, int]:
        """How many entries there are and the bytes of their values."""
        ...

    def close(self) -> None: ...


class MemoryCacheIndex:
    """A dict-backed index for unit tests and docs; inspect ``entries`` directly."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.entries: dict[str, tuple[CacheEntry, float]] = {}  # key -> (entry, expires at)
        self.counters: dict[str, int] = {}
        self.gen = 0
        self.clock = clock
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, CacheEntry]:
        now = self.clock()
        out: dict[str, CacheEntry] = {}
        with self._lock:
            for k in keys:
                got = self.entries.get(k)
                if got is not None and got[1] > now:
                    out[k] = got[0]
        return out

    def put_many(self, entries: Sequence[tuple[str, CacheEntry]], ttl_s: int) -> None:
        now = self.clock()
        with self._lock:
            for key, entry in entries:
                old = self.entries.get(key)
                if old is None or old[1] <= now:
                    self.entries[key] = (entry, now + ttl_s)

    def delete(self, model: str | None = None, older_than: float | None = None) -> list[str]:
        with self._lock:
            gone = [
                k
                for k, (e, _) in self.entries.items()
                if (model is None or k.startswith(model + "/"))
                and (older_than is None or e.at < older_than)
            ]
            for k in gone:
                del self.entries[k]
            if gone:
                self.gen += 1
        return gone

    def generation(self) -> int:
        return self.gen

    def count(self, counts: Mapping[str, int]) -> None:
        with self._lock:
            for name, n in counts.items():
                self.counters[name] = self.counters.get(name, 0) + n

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    def usage(self) -> tuple[int, int]:
        with self._lock:
            return len(self.entries), sum(len(e.to_json()) for e, _ in self.entries.values())

    def close(self) -> None:
        pass
