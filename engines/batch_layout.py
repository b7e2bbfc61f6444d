"""Settling a batch in the batch result layout (``pipelines.stores.batch_results``).

One object holds the attempt's result documents, one per line; each job's terminal status
records where its line is. The status store keeps the first loc a job gets, so of two attempts
at a job (a redelivered batch, a worker that died after writing) the first to settle it wins,
as ``If-None-Match`` does for the per-job layout; the loser's line stays in its object but
nothing points at it.
"""

from __future__ import annotations

import logging
import uuid
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
