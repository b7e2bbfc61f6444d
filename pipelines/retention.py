"""Retention: delete results (and batch files) older than a configured age.

The unit of deletion is a prefix: one job (``{ns}/jobs/{id}/``), one dispatched batch's
manifest (``{ns}/batches/{id}/``), one OpenAI-style batch (``{ns}/openai-batches/{id}/``) or
one result-cache entry's objects (``{ns}/cache/MODEL/KEY/``). A prefix goes only when its
*newest* object is older than the cutoff, so a job is never left half-deleted and nothing still
being written is touched; an OpenAI-style batch also stays until it has ended. Result-cache
entries stored before the cutoff leave the index too, so a job asked again after a sweep is
computed again rather than answered from what was swept.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from pipelines.settings import BlazeSettings
from pipelines.stores.cache_index import CacheIndex
from pipelines.stores.results import ObjectInfo, ResultStore

AREAS = ("jobs", "batches", "openai-batches", "cache")
_DEPTH = {"cache": 2}  # path segments that name one unit: cache/MODEL/KEY/
_OPEN_BATCH = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass
class SweepReport:
    """What a sweep found and removed."""

    cutoff: float
    prefixes: dict[str, int] = field(default_factory=dict)
    objects: int = 0
    bytes: int = 0
    kept_open_batches: int = 0
    cache_entries: int = 0


def sweep(
    settings: BlazeSettings,
    store: ResultStore,
    older_than_s: float,
    *,
    dry_run: bool = False,
    now: float | None = None,
    index: CacheIndex | None = None,
) -> SweepReport:
    """Delete every prefix of this namespace whose newest object is older than the cutoff,
    and the result-cache entries of ``index`` stored before it."""
    cutoff = (now if now is not None else time.time()) - older_than_s
    report = SweepReport(cutoff)
    for area in AREAS:
        groups: dict[str, list[ObjectInfo]] = {}
        root = f"{settings.namespace}/{area}/"
        for obj in store.scan(root):
            depth = _DEPTH.get(area, 1)
            parts = obj.key[len(root) :].split("/")
            ident = "/".join(parts[:depth])
            groups.setdefault(root + ident + "/", []).append(obj)
        doomed: list[ObjectInfo] = []
        for prefix, objs in groups.items():
            if max(o.modified.timestamp() for o in objs) >= cutoff:
                continue
            if area == "openai-batches" and _still_open(store, prefix + "batch.json"):
                report.kept_open_batches += 1
                continue
            doomed.extend(objs)
            report.prefixes[area] = report.prefixes.get(area, 0) + 1
        report.objects += len(doomed)
        report.bytes += sum(o.size for o in doomed)
        if doomed and not dry_run:
            store.delete_many([o.key for o in doomed])
    if index is not None and not dry_run:
        report.cache_entries = len(index.delete(older_than=cutoff))
    return report


def _still_open(store: ResultStore, key: str) -> bool:
    raw = store.get(key)
    if raw is None:
        return False
    try:
        return json.loads(raw).get("status") in _OPEN_BATCH
    except ValueError:
        return False
