"""The batch result layout, and reading a job's result whichever layout wrote it.

With ``layout: batch`` (``BLAZE_S3__LAYOUT=batch``, or ``result_layout`` per model) a worker
writes one object per batch instead of one per job:
``{ns}/batches/{batch_id}/results-{run}.jsonl``, one result document per line, ``run`` unique
to the attempt (a rerun never overwrites). Where each job's line lives, its *loc*
(``key#offset:length``), is recorded with the job's terminal status, first writer wins (see
``pipelines.stores.status.records_loc``), and listed in the batch's manifest, which is written
last and so marks the batch complete. A reader with a job id looks for the job's loc first
and then for ``{ns}/jobs/{job_id}/result.json`` (the per-job layout).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pipelines.errors import ServiceUnavailable
from pipelines.settings import BlazeSettings
from pipelines.stores.results import ResultStore
from pipelines.stores.status import StatusStore

CONTENT_TYPE = "application/x-ndjson"
_LOC = re.compile(r"^(?P<key>.+)#(?P<offset>\d+):(?P<length>\d+)$")


def pack(docs: Sequence[tuple[str, bytes]]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """One JSON document per line; returns the body and each job's (offset, length)."""
    spans: dict[str, tuple[int, int]] = {}
    parts: list[bytes] = []
    offset = 0
    for job_id, doc in docs:
        line = doc.replace(b"\n", b" ")  # JSON needs no raw newline; a reader splits on them
        spans[job_id] = (offset, len(line))
        parts += [line, b"\n"]
        offset += len(line) + 1
    return b"".join(parts), spans


def loc(key: str, offset: int, length: int) -> str:
    return f"{key}#{offset}:{length}"


def parse_loc(value: str) -> tuple[str, int, int] | None:
    m = _LOC.match(value)
    return None if m is None else (m["key"], int(m["offset"]), int(m["length"]))


def read_results(
    settings: BlazeSettings,
    results: ResultStore,
    status: StatusStore | None,
    job_ids: Sequence[str],
) -> dict[str, bytes | None]:
    """Each job's result document, or None while it has none: its line of a batch object where
    its status records one (one GET per batch object, however many of its jobs are asked),
    else its per-job object.

    The status comes first: it costs one pipelined Redis call for all the jobs, where looking
    for a per-job object first cost a GET per job that the batch layout always answered 404
    (5,000 of them to read 5,000 jobs back). With the status store down, the per-job objects
    are still read; only if some job has none is the outage raised."""
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return {}
    out: dict[str, bytes | None] = dict.fromkeys(ids)
    down: ServiceUnavailable | None = None
    where: dict[str, tuple[str, int, int]] = {}
    if status is not None:
        try:
            for j, st in status.get(ids).items():
                parsed = parse_loc(st.loc) if st is not None and st.loc else None
                if parsed is not None:
                    where[j] = parsed
        except ServiceUnavailable as exc:
            down = exc
    if where:
        objects = results.get_many(sorted({key for key, _, _ in where.values()}))
        for j, (key, offset, length) in where.items():
            body = objects.get(key)
            if body is not None and offset + length <= len(body):
                out[j] = body[offset : offset + length]
    rest = {j: settings.result_key(j) for j in ids if out[j] is None}
    if rest:
        raw = results.get_many(list(rest.values()))
        for j, key in rest.items():
            out[j] = raw.get(key)
    if down is not None and any(v is None for v in out.values()):
        raise down
    return out
