"""The batch result layout, and reading a job's result whichever layout wrote it.

With ``layout: batch`` (``BLAZE_S3__LAYOUT=batch``, or ``result_layout`` per model) a worker
writes one object per batch instead of one per job:
``{ns}/batches/{batch_id}/results-{run}.jsonl``, one result document per line, ``run`` unique
to the attempt (a rerun never overwrites). Where each job's line lives, its *loc*
(``key#offset:length``), is recorded with the job's terminal status, first writer wins (see
``pipelines.stores.status.records_loc``), and listed in the batch's manifest, which is written
last and so marks the batch complete. A reader with a job id looks for
``{ns}/jobs/{job_id}/result.json`` first (the per-job layout) and then for the job's loc.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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
    """Each job's result document, or None while it has none: its per-job object, else its
    line of a batch object (one GET per batch object, however many of its jobs are asked)."""
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return {}
    keys = {j: settings.result_key(j) for j in ids}
    raw = results.get_many(list(keys.values()))
    out: dict[str, bytes | None] = {j: raw.get(keys[j]) for j in ids}
    missing = [j for j in ids if out[j] is None]
    if not missing or status is None:
        return out
    where: dict[str, tuple[str, int, int]] = {}
    for j, st in status.get(missing).items():
        parsed = parse_loc(st.loc) if st is not None and st.loc else None
        if parsed is not None:
            where[j] = parsed
    if not where:
        return out
    objects = results.get_many(sorted({key for key, _, _ in where.values()}))
    for j, (key, offset, length) in where.items():
        body = objects.get(key)
        if body is not None and offset + length <= len(body):
            out[j] = body[offset : offset + length]
    return out
