"""Settling result documents: writing them and recording the jobs' terminal states.

Per job (the default layout): one ``result.json`` each, written with ``If-None-Match`` (first
writer wins); a job whose key was taken keeps the document already there.

Per batch (``pipelines.stores.batch_results``): one object holds the attempt's result
documents, one per line; each job's terminal status records where its line is. The status
store keeps the first loc a job gets, so of two attempts at a job (a redelivered batch, a
worker that died after writing) the first to settle it wins, as ``If-None-Match`` does for the
per-job layout; the loser's line stays in its object but nothing points at it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from pipelines.results import AnyResult, parse_result
from pipelines.settings import BlazeSettings
from pipelines.stores.batch_results import CONTENT_TYPE, loc, pack, parse_loc, read_results
from pipelines.stores.results import ResultStore
from pipelines.stores.status import Applied, JobState, StatusStore, StatusUpdate

log = logging.getLogger(__name__)

STATE = {
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "cancelled": JobState.CANCELLED,
}


@dataclass(frozen=True)
class Settled:
    """How a batch's documents ended up: each job's outcome (``final``: this attempt's, or
    the one an earlier attempt wrote first), the jobs whose outcome another attempt wrote
    (``taken``), what the status call applied, and where each outcome lives (key, and its
    (offset, length) in a batch object)."""

    final: dict[str, AnyResult]
    taken: set[str]
    applied: Applied
    where: dict[str, tuple[str, tuple[int, int] | None]]


def settle_per_job(
    settings: BlazeSettings,
    results: ResultStore,
    status: StatusStore,
    docs: list[AnyResult],
    done: Iterable[str] = (),
) -> Settled:
    """One ``result.json`` per job (first writer wins), then the terminal states.

    ``done``: jobs an earlier attempt is known to have written a result for (their documents
    are read back as their outcome)."""
    keys = {d.job_id: settings.result_key(d.job_id) for d in docs}
    items = [(keys[d.job_id], d.to_json(), "application/json") for d in docs]
    taken_keys = results.put_many(items, if_absent=True)
    taken = {d.job_id for d in docs if keys[d.job_id] in taken_keys} | set(done)
    final = {d.job_id: d for d in docs if d.job_id not in taken}
    for job_id in sorted(taken):
        raw = results.get(settings.result_key(job_id))
        if raw is not None:
            final[job_id] = parse_result(raw)
    if taken:
        log.info("kept %d results an earlier attempt had written", len(taken))
    applied = status.update(
        [
            StatusUpdate(d.job_id, STATE[d.status], d.error or "")
            for d in final.values()
            if d.status != "cancelled"
        ]
    )
    where: dict[str, tuple[str, tuple[int, int] | None]] = {
        j: (settings.result_key(j), None) for j in final
    }
    return Settled(final, taken, applied, where)


def merge(parts: list[Settled]) -> Settled:
    """Several settlements of one batch as one (the early ones and the final one)."""
    out = Settled({}, set(), Applied(), {})
    for part in parts:
        out.final.update(part.final)
        out.taken.update(part.taken)
        out.where.update(part.where)
        out.applied.moved.extend(part.applied.moved)
        out.applied.groups_done.update(part.applied.groups_done)
        out.applied.locs.update(part.applied.locs)
    return out


def settle_in_batch_object(
    settings: BlazeSettings,
    results: ResultStore,
    status: StatusStore,
    batch_id: str,
    docs: list[AnyResult],
) -> Settled:
    """Write the documents as one object, then record each job's state and loc."""
    if not docs:
        return Settled({}, set(), Applied(), {})
    key = settings.batch_results_key(batch_id, uuid.uuid4().hex[:12])
    body, spans = pack([(d.job_id, d.to_json()) for d in docs])
    results.put_many([(key, body, CONTENT_TYPE)])
    mine = {d.job_id: loc(key, *spans[d.job_id]) for d in docs}
    applied = status.update(
        [StatusUpdate(d.job_id, STATE[d.status], d.error or "", loc=mine[d.job_id]) for d in docs]
    )
    taken = {j for j, at in mine.items() if applied.locs.get(j) != at}
    final = {d.job_id: d for d in docs if d.job_id not in taken}
    where: dict[str, tuple[str, tuple[int, int] | None]] = {j: (key, spans[j]) for j in final}
    if taken:  # another attempt settled them first: its documents are their outcome
        for j, raw in read_results(settings, results, status, sorted(taken)).items():
            if raw is not None:
                final[j] = parse_result(raw)
                recorded = parse_loc(applied.locs.get(j, ""))
                where[j] = (
                    (recorded[0], recorded[1:]) if recorded else (settings.result_key(j), None)
                )
        log.info("kept %d results an earlier attempt had written", len(taken))
    return Settled(final, taken, applied, where)
