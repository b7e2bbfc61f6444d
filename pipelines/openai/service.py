"""OpenAI Batch API compatibility: an input file in, ``output.jsonl`` and ``errors.jsonl`` out.

An input line is ``{"custom_id", "method": "POST", "url", "body"}`` for ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings`` or ``/v1/images/generations``. Each valid line becomes
one Blaze job (id ``{batch_id}-{line}``, tagged with the batch and the custom id) in a job
*group*; a line that cannot run becomes an error line at once, naming the field. The status
store counts the group's settled jobs; whoever settles the last one (a worker, a cancel, or
the next status call) writes the output files. Everything sits under
``{namespace}/openai-batches/{batch_id}/``: ``batch.json`` (the batch object), ``input.jsonl``,
``requests.jsonl`` (line → custom id → job id), and at the end ``output.jsonl`` and
``errors.jsonl`` in OpenAI's output format, in input order.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from pipelines.errors import BlazeError, JobTimeout, NotFound
from pipelines.jobs import AnyJob, is_job_id
from pipelines.openai.outputs import error_line, job_error, success_line
from pipelines.openai.requests import RequestError, parse_batch_lines, read_batch_file
from pipelines.results import parse_result
from pipelines.settings import BlazeSettings, parse_duration
from pipelines.stores.batch_results import read_results
from pipelines.stores.results import ResultStore
from pipelines.stores.status import GroupsDone, JobStatus, StatusStore

if TYPE_CHECKING:
    from pipelines.client import Client

log = logging.getLogger(__name__)

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
FINAL_STATUSES = ("completed", "failed", "expired", "cancelled")


# -- the batch object ------------------------------------------------------------------------
class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchInfo(BaseModel):
    """The batch object, shaped like OpenAI's; ``blaze`` adds Blaze's own breakdown."""

    model_config = ConfigDict(extra="ignore")

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: dict[str, Any] | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = RequestCounts()
    metadata: dict[str, str] | None = None
    blaze: dict[str, Any] = Field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex[:24]}"


class Publish(Protocol):
    """Publishes jobs (``Client.submit_many``): returns once the broker has every one."""

    def __call__(
        self, jobs: Sequence[AnyJob], progress: Callable[[int, int], None] | None = None
    ) -> object: ...


class BatchService:
    """Submits, tracks, cancels and finalizes OpenAI-style batches.

    Args:
        settings: Namespace, bucket and key layout.
        results: Where the batch files and the jobs' results are.
        status: Counts each batch's settled jobs (a job group).
        publish: Publishes the requests as jobs; only ``submit`` needs it, so a worker that
            only finalizes batches goes without a producer.
    """

    def __init__(
        self,
        settings: BlazeSettings,
        results: ResultStore,
        status: StatusStore,
        publish: Publish | None = None,
    ) -> None:
        self.settings = settings
        self.store = results
        self.status = status
        self.publish = publish

    @classmethod
    def of(cls, client: Client) -> BatchService:
        """The service on a client's stores, publishing through it."""
        return cls(client.settings, client.result_store, client.status_store, client.submit_many)

    # -- storage -------------------------------------------------------------------------
    def _key(self, batch_id: str, name: str) -> str:
        return self.settings.openai_batch_prefix(batch_id) + name

    def _save(self, info: BatchInfo) -> BatchInfo:
        body = info.model_dump_json(indent=1).encode()
        self.store.put_many([(self._key(info.id, "batch.json"), body, "application/json")])
        return info

    def load(self, batch_id: str) -> BatchInfo:
        """The stored batch object; ``BlazeError`` if there is no such batch."""
        raw = self.store.get(self._key(batch_id, "batch.json")) if is_job_id(batch_id) else None
        if raw is None:
            raise NotFound(f"unknown batch {batch_id!r} in namespace {self.settings.namespace}")
        return BatchInfo.model_validate_json(raw)

    def _requests(self, batch_id: str) -> list[dict[str, Any]]:
        raw = self.store.get(self._key(batch_id, "requests.jsonl")) or b""
        return [json.loads(ln) for ln in raw.splitlines() if ln.strip()]

    # -- submit ----------------------------------------------------------------------------
    def submit(
        self,
        path: Path,
        *,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        model: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> BatchInfo:
        """Validate every line of a local file, store the batch files, publish the requests."""
        lines = read_batch_file(path)

        def store_input(key: str) -> None:
            with path.open("rb") as fh:
                self.store.put_stream(key, fh, "application/jsonl")

        return self.submit_lines(
            lines,
            source=path.name,
            store_input=store_input,
            completion_window=completion_window,
            metadata=metadata,
            model=model,
            progress=progress,
        )

    def submit_lines(
        self,
        lines: Sequence[tuple[int, str]],
        *,
        source: str,
        store_input: Callable[[str], None] | None = None,
        input_file_id: str | None = None,
        endpoint: str | None = None,
        owner: str | None = None,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        model: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> BatchInfo:
        """Validate numbered input lines, store the batch files, publish the valid requests.

        ``store_input`` copies the input under the batch's prefix; a caller whose input
        already lies in the bucket names it by ``input_file_id`` instead. ``endpoint``, when
        given, is the url every line must have; ``owner`` is recorded for the gateway. If
        publishing fails, the batch ends ``failed`` (its jobs' marks removed) and the error
        is raised again.
        """
        window = parse_duration(completion_window, "completion window")
        now = time.time()
        batch_id = new_batch_id()
        expires = datetime.fromtimestamp(now + window, UTC)
        requests = parse_batch_lines(
            lines, batch_id, model=model, deadline=expires, endpoint=endpoint
        )
        jobs = [r.job for r in requests if r.job is not None]
        invalid = len(requests) - len(jobs)
        urls = [r.url for r in requests if r.url]
        blaze: dict[str, Any] = {"source_file": source, "invalid": invalid, "jobs": len(jobs)}
        if owner is not None:
            blaze["owner"] = owner
        info = BatchInfo(
            id=batch_id,
            endpoint=endpoint or (max(set(urls), key=urls.count) if urls else ""),
            input_file_id=input_file_id or self._key(batch_id, "input.jsonl"),
            completion_window=completion_window,
            status="validating",
            created_at=int(now),
            expires_at=int(now + window),
            request_counts=RequestCounts(total=len(requests), failed=invalid),
            metadata=metadata,
            blaze=blaze,
        )
        if store_input is not None:
            store_input(info.input_file_id)
        rows = b"".join(json.dumps(r.to_row()).encode() + b"\n" for r in requests)
        self.store.put_many([(self._key(batch_id, "requests.jsonl"), rows, "application/jsonl")])
        if not jobs:
            info.status, info.failed_at = "failed", int(time.time())
            info.errors = _errors_list(
                [
                    {"code": r.error.code, "message": r.error.message, "param": r.error.param}
                    | {"line": r.line}
                    for r in requests[:100]
                    if r.error
                ]
            )
            self._write_outputs(info, requests_rows=[r.to_row() for r in requests])
            return self._save(info)
        if self.publish is None:
            raise BlazeError(
                "this batch service cannot publish jobs (it was built without a client)"
            )
        self._save(info)
        self.status.open_group(batch_id, len(jobs))
        try:
            self.publish(jobs, progress=progress)
        except BlazeError as exc:
            info.status, info.failed_at = "failed", int(time.time())
            info.errors = _errors_list([{"code": "publish_failed", "message": str(exc)}])
            self._save(info)
            raise
        info.status, info.in_progress_at = "in_progress", int(time.time())
        return self._save(info)

    # -- progress ----------------------------------------------------------------------------
    def refresh(self, batch_id: str) -> BatchInfo:
        """The batch as it stands; ends it (files written) if every request has settled."""
        info = self.load(batch_id)
        if info.final or info.status == "validating":
            return info
        progress = self.status.group_progress(batch_id)
        if progress.complete:
            return self.finalize(batch_id)
        if (
            info.expires_at is not None
            and time.time() > info.expires_at
            and "expired" not in progress.marks
        ):
            self.status.mark_group(batch_id, "expired", time.time())
            self._cancel_jobs(batch_id, "batch expired")
            return self.refresh(batch_id)
        return self._live(info, progress.counts, progress.marks)

    def _live(self, info: BatchInfo, counts: dict[str, int], marks: dict[str, float]) -> BatchInfo:
        invalid = int(info.blaze.get("invalid", 0))
        succeeded = counts.get("succeeded", 0)
        info.request_counts = RequestCounts(
            total=info.request_counts.total,
            completed=succeeded,
            failed=invalid + sum(v for k, v in counts.items() if k != "succeeded"),
        )
        info.blaze = {**info.blaze, "counts": counts}
        if "cancelling" in marks:
            info.status, info.cancelling_at = "cancelling", int(marks["cancelling"])
        return info

    def cancel(self, batch_id: str) -> BatchInfo:
        """Stop a batch: requests not yet running never run; running ones finish."""
        info = self.load(batch_id)
        if info.final:
            return info
        self.status.mark_group(batch_id, "cancelling", time.time())
        self._cancel_jobs(batch_id, "batch cancelled")
        return self.refresh(batch_id)

    def _cancel_jobs(self, batch_id: str, reason: str) -> None:
        ids = [r["job_id"] for r in self._requests(batch_id) if r.get("job_id")]
        for start in range(0, len(ids), 5000):
            _, applied = self.status.cancel(ids[start : start + 5000], reason, time.time())
            if applied.groups_done:
                self.finalize(batch_id)

    def wait(
        self,
        batch_id: str,
        timeout: float | None = None,
        poll_s: float = 1.0,
        progress: Callable[[BatchInfo], None] | None = None,
    ) -> BatchInfo:
        """Refresh until the batch ends; ``BlazeError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.refresh(batch_id)
            if progress:
                progress(info)
            if info.final:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(
                    f"batch {batch_id} still {info.status} after {timeout}s", pending=[batch_id]
                )
            time.sleep(poll_s)

    # -- the end -------------------------------------------------------------------------------
    def finalize(self, batch_id: str) -> BatchInfo:
        """Write output.jsonl and errors.jsonl and the final batch object (idempotent)."""
        info = self.load(batch_id)
        if info.final:
            return info
        progress = self.status.group_progress(batch_id)
        if not progress.complete:
            return self._live(info, progress.counts, progress.marks)
        finalizing = self.status.mark_group(batch_id, "finalizing", time.time())
        marks = {**progress.marks, "finalizing": finalizing}
        counts = self._write_outputs(info, self._requests(batch_id), expired="expired" in marks)
        status: BatchStatus = "completed"
        if "expired" in marks:
            status = "expired"
        elif "cancelling" in marks:
            status = "cancelled"
        ended = self.status.mark_group(batch_id, status, time.time())
        info.status = status
        info.finalizing_at = int(finalizing)
        info.cancelling_at = int(marks["cancelling"]) if "cancelling" in marks else None
        setattr(info, f"{status}_at", int(ended))
        info.request_counts = RequestCounts(
            total=info.request_counts.total, completed=counts["completed"], failed=counts["failed"]
        )
        info.blaze = {**info.blaze, "counts": progress.counts}
        log.info("batch %s %s: %s", batch_id, status, info.request_counts)
        return self._save(info)

    def _write_outputs(
        self, info: BatchInfo, requests_rows: list[dict[str, Any]], expired: bool = False
    ) -> dict[str, int]:
        """Stream both output files to the bucket, one line per request, in input order."""
        counts = {"completed": 0, "failed": 0}
        with _spool() as out, _spool() as errs:
            for chunk in _chunks(requests_rows, 256):
                ids = [r["job_id"] for r in chunk if r.get("job_id")]
                statuses = self.status.get(ids) if ids else {}
                docs = read_results(self.settings, self.store, self.status, ids)
                for r in chunk:
                    line, target = self._output_line(info.id, r, statuses, docs, expired)
                    (out if target == "output" else errs).write(json.dumps(line).encode() + b"\n")
                    counts["completed" if target == "output" else "failed"] += 1
            for name, fh in (("output.jsonl", out), ("errors.jsonl", errs)):
                fh.seek(0)
                self.store.put_stream(self._key(info.id, name), fh, "application/jsonl")
        info.output_file_id = self._key(info.id, "output.jsonl")
        info.error_file_id = self._key(info.id, "errors.jsonl")
        return counts

    def _output_line(
        self,
        batch_id: str,
        row: dict[str, Any],
        statuses: dict[str, JobStatus | None],
        docs: dict[str, bytes | None],
        expired: bool,
    ) -> tuple[dict[str, Any], str]:
        job_id = row.get("job_id")
        out_id = "batch_req_" + (job_id or f"{batch_id}-{row['line']:06d}")
        if not job_id:
            err = RequestError(**row["error"])
            return error_line(out_id, row.get("custom_id"), None, err), "errors"
        raw = docs.get(job_id)
        doc = parse_result(raw) if raw is not None else None
        if doc is not None and doc.status == "succeeded":
            bucket = self.settings.s3.bucket
            return success_line(out_id, row["custom_id"], row["url"], doc, bucket), "output"
        err = job_error(statuses.get(job_id), doc, expired)
        return error_line(out_id, row["custom_id"], job_id, err), "errors"

    def download(self, batch_id: str, out_dir: Path) -> list[Path]:
        """Fetch batch.json, output.jsonl and errors.jsonl into ``out_dir``."""
        info = self.refresh(batch_id)
        if not info.final:
            c = info.request_counts
            raise BlazeError(
                f"batch {batch_id} is {info.status} ({c.completed + c.failed} of {c.total} "
                "requests done); its files are written when it ends"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in ("batch.json", "output.jsonl", "errors.jsonl"):
            data = self.store.get(self._key(batch_id, name))
            if data is None:
                continue
            target = out_dir / name
            target.write_bytes(data)
            written.append(target)
        return written

    def list_batches(self) -> list[BatchInfo]:
        """Every batch of this namespace, newest first."""
        prefix = f"{self.settings.namespace}/openai-batches/"
        keys = [k for k in self.store.list_keys(prefix) if k.endswith("/batch.json")]
        docs = self.store.get_many(keys)
        infos = [BatchInfo.model_validate_json(d) for d in docs.values() if d is not None]
        return sorted(infos, key=lambda b: b.created_at, reverse=True)


def _errors_list(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": data}


def _spool() -> BinaryIO:
    return tempfile.SpooledTemporaryFile(max_size=32 << 20)  # type: ignore[return-value]


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def finalize_groups(service: BatchService) -> GroupsDone:
    """A hook for whoever settles jobs (a worker, a cancel): finalize each batch whose last
    job it just settled."""

    def hook(groups: set[str]) -> None:
        for group in groups:
            try:
                service.finalize(group)
            except BlazeError as exc:  # the next status call finalizes instead
                log.warning("could not finalize batch %s: %s", group, exc)

    return hook
