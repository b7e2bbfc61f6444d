"""The result cache: never compute the same answer twice.

Three tiers. The consumer keeps recent entries in memory (an LRU bounded by ``memory_mb``); the
index (Redis) maps every key to its entry, with small result documents inline; larger documents
and every image live in S3 as content-addressed objects under ``{ns}/cache/MODEL/HEX/``. A hit
is answered with the job's own result document (``cached: true``; ``provenance.cached_from``
names the job that ran); its images are server-side copies. An entry whose S3 objects are gone
(a retention sweep) is *stale*: the job runs instead, never fails.

Workers store the entries of the jobs they ran (``store``); consumers look keys up (``lookup``)
and answer hits (``answer``). Counters (hits per tier, misses, stale, stored) are kept here and
added to the index's shared ones by ``flush_counts``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cachetools import TTLCache

from pipelines.cache_keys import cache_key, engine_version, weights_digest
from pipelines.errors import ServiceUnavailable
from pipelines.jobs import AnyJob
from pipelines.registry import ModelSpec
from pipelines.results import AnyResult, DiffusionResult, parse_result
from pipelines.settings import BlazeSettings
from pipelines.stores.cache_index import CacheEntry, CacheIndex
from pipelines.stores.results import ResultStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """A key found in the cache, and in which tier."""

    key: str
    entry: CacheEntry
    tier: str


class ResultCache:
    """Cache keys, look-ups, answers and stores over an index and the result store.

    Args:
        settings: ``cache`` settings, namespace and key layout.
        index: Where entries are (Redis in production).
        results: Where large documents and images are (S3 in production).
        memory: Keep an in-process tier (the consumer's).
        clock: Wall clock for entry ages.
    """

    def __init__(
        self,
        settings: BlazeSettings,
        index: CacheIndex,
        results: ResultStore,
        *,
        memory: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.index = index
        self.results = results
        self.clock = clock
        cfg = settings.cache
        self.ttl_s = cfg.ttl_s
        self.memory: TTLCache[str, CacheEntry] | None = None
        if memory and cfg.memory_mb > 0:
            self.memory = TTLCache(
                maxsize=cfg.memory_mb << 20, ttl=cfg.ttl_s, getsizeof=lambda e: e.size
            )
        self._generation: int | None = None
        self._engines: dict[str, str] = {}
        self.tally: Counter[str] = Counter()
        self._lock = threading.Lock()

    # -- keys ----------------------------------------------------------------------------
    def key_of(self, job: AnyJob, spec: ModelSpec) -> str | None:
        """``MODEL/HEX``, or None when the job is not to be cached (see ``cache_keys``)."""
        if not self.settings.cache.enabled:
            return None
        digest = weights_digest(self.settings, spec)
        if digest is None:
            return None
        engine = self._engines.get(spec.name)
        if engine is None:
            engine = self._engines[spec.name] = engine_version(spec)
        hexkey = cache_key(job, spec, digest, engine)
        return None if hexkey is None else f"{spec.name}/{hexkey}"

    # -- look-ups (consumer) ---------------------------------------------------------------
    def lookup(self, keys: Sequence[str]) -> dict[str, Hit]:
        """Hits among ``keys``: memory first, then the index; counts hits and misses (per key
        asked: two jobs asking the same key count twice)."""
        asked = list(keys)
        keys = list(dict.fromkeys(asked))
        if not keys:
            return {}
        now = self.clock()
        hits: dict[str, Hit] = {}
        if self.memory is not None and self._generation is None:
            self._generation = self.index.generation()  # what the memory tier starts from
        if self.memory is not None:
            found = {k: e for k in keys if (e := self.memory.get(k)) is not None}
            if found and self._memory_current():
                hits = {k: Hit(k, e, "memory") for k, e in found.items() if e.at + self.ttl_s > now}
        rest = [k for k in keys if k not in hits]
        for key, entry in self.index.get_many(rest).items():
            if entry.at + self.ttl_s <= now:
                continue
            hits[key] = Hit(key, entry, "redis" if entry.doc is not None else "s3")
            if self.memory is not None:
                self.memory[key] = entry
        with self._lock:
            for key in asked:
                hit = hits.get(key)
                self.tally["misses" if hit is None else f"{hit.tier}_hits"] += 1
        return hits

    def _memory_current(self) -> bool:
        """Whether the memory tier still holds: entries were not removed meanwhile."""
        assert self.memory is not None
        gen = self.index.generation()
        if gen != self._generation:
            self.memory.clear()
            self._generation = gen
            return False
        self._generation = gen
        return True

    def forget(self, keys: Sequence[str]) -> None:
        """Drop entries from the memory tier (their objects were found gone)."""
        if self.memory is not None:
            for k in keys:
                self.memory.pop(k, None)

    # -- answers (consumer) ----------------------------------------------------------------
    def answer(
        self, hits: Sequence[tuple[AnyJob, Hit]], prov: dict[str, dict[str, Any]] | None = None
    ) -> dict[str, bytes]:
        """Each job's own result document made from its hit, images copied beside it.

        Jobs whose cached objects are gone are left out (stale: they must run). ``prov`` adds
        provenance per job id (its trace hop)."""
        objects = sorted({h.entry.object for _, h in hits if h.entry.doc is None})
        bodies = self.results.get_many(objects) if objects else {}
        docs: dict[str, AnyResult] = {}
        copies: dict[str, list[tuple[str, str]]] = {}
        stale: list[str] = []
        now = self.clock()
        for job, hit in hits:
            raw = hit.entry.doc if hit.entry.doc is not None else bodies.get(hit.entry.object)
            if raw is None:
                stale.append(hit.key)
                continue
            cached = parse_result(raw)
            extra = (prov or {}).get(job.job_id, {})
            update: dict[str, Any] = {
                "job_id": job.job_id,
                "model": job.model,
                "tags": dict(job.tags),
                "cached": True,
                "created_at": datetime.fromtimestamp(now, UTC),
                "provenance": {
                    **cached.provenance,
                    **extra,
                    "cached_from": hit.entry.origin,
                    "cache_key": hit.key,
                },
                "timings": {
                    "queue_wait_s": round(max(0.0, now - job.submitted_at.timestamp()), 4),
                    "compute_s": 0.0,
                },
            }
            if isinstance(cached, DiffusionResult):
                prefix = self.settings.result_prefix(job.job_id)
                refs = [
                    r.model_copy(update={"key": f"{prefix}image-{k}.png"})
                    for k, r in enumerate(cached.images)
                ]
                copies[job.job_id] = list(zip(hit.entry.images, [r.key for r in refs], strict=True))
                update["images"] = refs
            docs[job.job_id] = cached.model_copy(update=update)
        pairs = [p for ps in copies.values() for p in ps]
        missing = self.results.copy_many(pairs) if pairs else set()
        for job, hit in hits:
            if any(src in missing for src, _ in copies.get(job.job_id, [])):
                docs.pop(job.job_id, None)
                stale.append(hit.key)
        if stale:
            self.forget(stale)
            with self._lock:
                self.tally["stale"] += len(stale)
        return {job_id: doc.to_json() for job_id, doc in docs.items()}

    # -- stores (worker) -------------------------------------------------------------------
    def store(self, items: Sequence[tuple[str, AnyResult]]) -> None:
        """Remember succeeded results under their keys ``MODEL/HEX``: inline in the index
        when small, else as objects under ``{ns}/cache/``. Never raises: a result the cache
        could not keep is computed again next time."""
        entries: list[tuple[str, CacheEntry]] = []
        puts: list[tuple[str, bytes, str]] = []
        copies: list[tuple[str, str]] = []
        now = self.clock()
        for key, doc in items:
            if doc.status != "succeeded" or doc.cached:
                continue
            body = doc.to_json()
            images = doc.images if isinstance(doc, DiffusionResult) else []
            if not images and len(body) <= self.settings.cache.inline_bytes:
                entries.append((key, CacheEntry(doc.job_id, now, body)))
                continue
            model, _, hexkey = key.partition("/")
            prefix = f"{self.settings.cache_prefix(model)}{hexkey}/"
            puts.append((prefix + "result.json", body, "application/json"))
            cached_images = tuple(f"{prefix}image-{k}.png" for k in range(len(images)))
            copies += [(ref.key, dst) for ref, dst in zip(images, cached_images, strict=True)]
            entries.append(
                (key, CacheEntry(doc.job_id, now, None, prefix + "result.json", cached_images))
            )
        if not entries:
            return
        try:
            missing = self.results.copy_many(copies) if copies else set()
            if missing:  # an image vanished under us: keep the rest, not this one
                gone = {dst.rsplit("/", 1)[0] for src, dst in copies if src in missing}
                entries = [
                    (k, e) for k, e in entries if not any(e.object.startswith(g) for g in gone)
                ]
            if puts:
                self.results.put_many(puts, if_absent=True)
            self.index.put_many(entries, self.ttl_s)
            self.index.count({"stored": len(entries)})
        except ServiceUnavailable as exc:
            log.warning("result cache: %d entries not stored: %s", len(entries), exc)

    # -- counters ---------------------------------------------------------------------------
    def drain(self) -> Counter[str]:
        """The counts since the last drain (for metrics), reset."""
        with self._lock:
            out, self.tally = self.tally, Counter()
        return out

    def flush_counts(self, counts: Counter[str]) -> None:
        """Add counts to the index's shared counters (``blaze cache stats``)."""
        if not counts:
            return
        try:
            self.index.count(counts)
        except ServiceUnavailable as exc:
            log.warning("result cache counters not recorded: %s", exc)
