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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.errors import BlazeError, ConfigError, InvalidJob
from pipelines.jobs import GROUP_TAG, AnyJob, is_job_id, validate_job
from pipelines.results import AnyResult, DiffusionResult, EmbedResult, LLMResult, parse_result
from pipelines.settings import parse_duration
from pipelines.status import JobState, JobStatus

if TYPE_CHECKING:
    from pipelines.client import Client

log = logging.getLogger(__name__)

ENDPOINTS = {
    "/v1/chat/completions": "llm",
    "/v1/completions": "llm",
    "/v1/embeddings": "embed",
    "/v1/images/generations": "diffusion",
}
MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 200 << 20
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


# -- input lines -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestError:
    """Why a request line cannot run (or did not), in OpenAI's terms."""

    code: str
    message: str
    param: str | None = None
    status_code: int = 400


@dataclass(frozen=True)
class BatchRequest:
    """One line of the input file: the job it became, or why it could not become one."""

    line: int
    custom_id: str | None
    url: str
    job: AnyJob | None = None
    error: RequestError | None = None

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "line": self.line,
            "custom_id": self.custom_id,
            "url": self.url,
            "job_id": self.job.job_id if self.job else None,
        }
        if self.error:
            row["error"] = self.error.__dict__
        return row


class _Invalid(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = RequestError(code, message, param)


# Parameters accepted only at their neutral value: anything else would change the meaning.
_NEUTRAL: dict[str, tuple[object, ...]] = {
    "n": (None, 1),
    "stream": (None, False),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}),
    "encoding_format": (None, "float"),
    "dimensions": (None,),
    "tools": (None, []),
    "tool_choice": (None, "none"),
}
_IGNORED = {"user", "metadata", "store", "service_tier", "stream_options", "quality", "style"}


def _check_params(body: dict[str, Any], allowed: set[str]) -> None:
    for name, value in body.items():
        if name in allowed or name in _IGNORED:
            continue
        if name in _NEUTRAL:
            if value not in _NEUTRAL[name]:
                raise _Invalid(
                    "unsupported_parameter",
                    f"{name}={json.dumps(value)[:60]} is not supported by Blaze",
                    name,
                )
            continue
        raise _Invalid("unsupported_parameter", f"unknown parameter {name!r}", name)


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _Invalid(
                    "invalid_value", "only text content parts are supported", f"{where}[{k}]"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise _Invalid("invalid_type", "content must be a string or a list of text parts", where)


def _sampling(body: dict[str, Any], job: dict[str, Any]) -> None:
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is not None:
        job["max_new_tokens"] = tokens
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed")):
        if body.get(src) is not None:
            job[dst] = body[src]
    stop = body.get("stop")
    if stop is not None:
        job["stop"] = [stop] if isinstance(stop, str) else stop


_SAMPLING = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop"}


def _chat_job(body: dict[str, Any]) -> dict[str, Any]:
    _check_params(body, {"model", "messages", *_SAMPLING})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid(
            "missing_required_parameter", "messages must be a non-empty list", "messages"
        )
    out = []
    for k, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _Invalid("invalid_type", "each message must be an object", f"messages[{k}]")
        role = msg.get("role")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise _Invalid(
                "invalid_value", f"unsupported role {msg.get('role')!r}", f"messages[{k}].role"
            )
        out.append({"role": role, "content": _text(msg.get("content"), f"messages[{k}].content")})
    job: dict[str, Any] = {"messages": out}
    _sampling(body, job)
    return job


def _completion_job(body: dict[str, Any]) -> dict[str, Any]:
    _check_params(body, {"model", "prompt", *_SAMPLING})
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise _Invalid("invalid_type", "prompt must be one string", "prompt")
    job: dict[str, Any] = {"prompt": prompt}
    _sampling(body, job)
    return job


def _embedding_job(body: dict[str, Any]) -> dict[str, Any]:
    _check_params(body, {"model", "input"})
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _Invalid("invalid_type", "input must be a string or a list of strings", "input")
    return {"texts": texts}


def _image_job(body: dict[str, Any]) -> dict[str, Any]:
    _check_params(body, {"model", "prompt", "n", "size", "seed", "negative_prompt", "steps"})
    job: dict[str, Any] = {"prompt": body.get("prompt"), "num_images": body.get("n") or 1}
    size = body.get("size")
    if size is not None:
        try:
            width, height = (int(v) for v in str(size).lower().split("x"))
        except ValueError:
            raise _Invalid(
                "invalid_value", f"size must be WIDTHxHEIGHT, got {size!r}", "size"
            ) from None
        job["width"], job["height"] = width, height
    if body.get("seed") is not None:
        job["seed"] = body["seed"]
    if body.get("negative_prompt") is not None:
        job["negative_prompt"] = body["negative_prompt"]
    if body.get("steps") is not None:
        job["num_inference_steps"] = body["steps"]
    return job


_BODY: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "/v1/chat/completions": _chat_job,
    "/v1/completions": _completion_job,
    "/v1/embeddings": _embedding_job,
    "/v1/images/generations": _image_job,
}


def parse_request(
    line: int,
    raw: str,
    batch_id: str,
    *,
    model: str | None = None,
    deadline: datetime | None = None,
) -> BatchRequest:
    """One input line as a job, or as the error that names what is wrong with it."""
    custom_id: str | None = None
    url = ""
    try:
        try:
            row = json.loads(raw)
        except ValueError as exc:
            raise _Invalid("invalid_json", f"line {line} is not valid JSON: {exc}") from None
        if not isinstance(row, dict):
            raise _Invalid("invalid_request", f"line {line} must be a JSON object")
        cid = row.get("custom_id")
        if not isinstance(cid, str) or not cid:
            raise _Invalid("missing_custom_id", "custom_id must be a non-empty string", "custom_id")
        custom_id = cid
        if row.get("method", "POST") != "POST":
            raise _Invalid(
                "invalid_method", f"method must be POST, got {row.get('method')!r}", "method"
            )
        url = str(row.get("url", ""))
        if url not in _BODY:
            raise _Invalid("invalid_url", f"url {url!r} is not one of {sorted(_BODY)}", "url")
        body = row.get("body")
        if not isinstance(body, dict):
            raise _Invalid("invalid_request", "body must be a JSON object", "body")
        fields = _BODY[url](body)
        fields["model"] = model or body.get("model")
        if not fields["model"]:
            raise _Invalid("missing_required_parameter", "body.model is required", "model")
        fields["job_id"] = f"{batch_id}-{line:06d}"
        fields["tags"] = {GROUP_TAG: batch_id, "custom_id": custom_id[:256]}
        if deadline is not None:
            fields["deadline"] = deadline
        try:
            job = validate_job(fields, ENDPOINTS[url])
        except InvalidJob as exc:
            first = exc.errors[0]["loc"] if exc.errors else None
            raise _Invalid("invalid_request", str(exc), str(first) if first else None) from None
        return BatchRequest(line, custom_id, url, job=job)
    except _Invalid as bad:
        return BatchRequest(line, custom_id, url, error=bad.error)


def parse_batch_lines(
    lines: Sequence[tuple[int, str]],
    batch_id: str,
    *,
    model: str | None = None,
    deadline: datetime | None = None,
) -> list[BatchRequest]:
    """Every non-blank line parsed; a repeated custom_id is an error on the later lines."""
    seen: set[str] = set()
    out = []
    for line, raw in lines:
        req = parse_request(line, raw, batch_id, model=model, deadline=deadline)
        cid = req.custom_id
        if cid is not None:
            if cid in seen and req.job is not None:
                msg = f"custom_id {cid!r} repeats an earlier line"
                err = RequestError("duplicate_custom_id", msg, "custom_id")
                req = BatchRequest(line, cid, req.url, error=err)
            seen.add(cid)
        out.append(req)
    return out


def read_batch_file(path: Path) -> list[tuple[int, str]]:
    """The non-blank lines of an input file with their numbers; ``ConfigError`` if unusable."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {size} bytes is over the {MAX_FILE_BYTES} byte limit")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read batch file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise ConfigError(f"{path}: the batch file has no requests")
    if len(lines) > MAX_REQUESTS:
        raise ConfigError(f"{path}: {len(lines)} requests is over the {MAX_REQUESTS} limit")
    return lines


# -- output lines ----------------------------------------------------------------------------
def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def response_body(url: str, doc: AnyResult, bucket: str) -> dict[str, Any]:
    """The body OpenAI's endpoint would have answered, built from a result document."""
    created = int(doc.created_at.timestamp())
    if isinstance(doc, LLMResult) and url == "/v1/completions":
        return {
            "id": f"cmpl-{doc.job_id}",
            "object": "text_completion",
            "created": created,
            "model": doc.model,
            "choices": [
                {
                    "index": 0,
                    "text": doc.text or "",
                    "logprobs": None,
                    "finish_reason": doc.finish_reason,
                }
            ],
            "usage": _usage(doc.usage.prompt_tokens, doc.usage.completion_tokens),
        }
    if isinstance(doc, LLMResult):
        return {
            "id": f"chatcmpl-{doc.job_id}",
            "object": "chat.completion",
            "created": created,
            "model": doc.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": doc.text or "", "refusal": None},
                    "logprobs": None,
                    "finish_reason": doc.finish_reason,
                }
            ],
            "usage": _usage(doc.usage.prompt_tokens, doc.usage.completion_tokens),
            "system_fingerprint": str(doc.provenance.get("weights", ""))[:16] or None,
        }
    if isinstance(doc, EmbedResult):
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v}
                for i, v in enumerate(doc.vectors)
            ],
            "model": doc.model,
            "usage": {
                "prompt_tokens": doc.usage.prompt_tokens,
                "total_tokens": doc.usage.prompt_tokens,
            },
        }
    assert isinstance(doc, DiffusionResult)
    return {
        "created": created,
        "data": [{"url": f"s3://{bucket}/{im.key}", "seed": im.seed} for im in doc.images],
    }


def success_line(
    out_id: str, custom_id: str | None, url: str, doc: AnyResult, bucket: str
) -> dict[str, Any]:
    """An output-file line for a request whose job succeeded."""
    body = response_body(url, doc, bucket)
    response = {"status_code": 200, "request_id": doc.job_id, "body": body}
    return {"id": out_id, "custom_id": custom_id, "response": response, "error": None}


def _error_line(
    out_id: str, custom_id: str | None, request_id: str | None, err: RequestError
) -> dict[str, Any]:
    body = {
        "error": {
            "message": err.message,
            "type": "invalid_request_error" if err.status_code < 500 else "server_error",
            "param": err.param,
            "code": err.code,
        }
    }
    response = None
    if err.code not in ("batch_cancelled", "batch_expired"):
        response = {"status_code": err.status_code, "request_id": request_id, "body": body}
    return {
        "id": out_id,
        "custom_id": custom_id,
        "response": response,
        "error": {"code": err.code, "message": err.message},
    }


def _job_error(st: JobStatus | None, doc: AnyResult | None, expired: bool) -> RequestError:
    """Why a job that did not succeed ended as it did."""
    reason = (doc.error if doc and doc.error else "") or (st.reason if st else "")
    state = st.state if st else None
    if (doc and doc.status == "cancelled") or state is JobState.CANCELLED:
        if expired:
            return RequestError(
                "batch_expired", "the request did not run before the completion window expired"
            )
        return RequestError("batch_cancelled", "the batch was cancelled before the request ran")
    if state is JobState.DEAD:
        if expired or reason.startswith("deadline"):
            return RequestError("batch_expired", f"not run before the window expired: {reason}")
        return RequestError("invalid_request", f"dead-lettered: {reason}")
    if doc is None and st is None:
        return RequestError("result_missing", "no status and no result for this request", None, 500)
    return RequestError("server_error", reason or "the request failed", None, 500)


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


class BatchService:
    """Submits, tracks, cancels and finalizes OpenAI-style batches through a ``Client``."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.settings = client.settings
        self.store = client.result_store
        self.status = client.status_store

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
            raise BlazeError(f"unknown batch {batch_id!r} in namespace {self.settings.namespace}")
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
        """Validate every line, store the batch files, publish the valid requests as jobs."""
        window = parse_duration(completion_window, "completion window")
        lines = read_batch_file(path)
        now = time.time()
        batch_id = new_batch_id()
        expires = datetime.fromtimestamp(now + window, UTC)
        requests = parse_batch_lines(lines, batch_id, model=model, deadline=expires)
        jobs = [r.job for r in requests if r.job is not None]
        invalid = len(requests) - len(jobs)
        urls = [r.url for r in requests if r.url]
        info = BatchInfo(
            id=batch_id,
            endpoint=max(set(urls), key=urls.count) if urls else "",
            input_file_id=self._key(batch_id, "input.jsonl"),
            completion_window=completion_window,
            status="validating",
            created_at=int(now),
            expires_at=int(now + window),
            request_counts=RequestCounts(total=len(requests), failed=invalid),
            metadata=metadata,
            blaze={"source_file": path.name, "invalid": invalid, "jobs": len(jobs)},
        )
        with path.open("rb") as fh:
            self.store.put_stream(info.input_file_id, fh, "application/jsonl")
        rows = b"".join(json.dumps(r.to_row()).encode() + b"\n" for r in requests)
        self.store.put_many([(self._key(batch_id, "requests.jsonl"), rows, "application/jsonl")])
        if not jobs:
            info.status, info.failed_at = "failed", int(time.time())
            info.errors = {
                "object": "list",
                "data": [
                    {
                        "code": r.error.code,
                        "message": r.error.message,
                        "param": r.error.param,
                        "line": r.line,
                    }
                    for r in requests[:100]
                    if r.error
                ],
            }
            self._write_outputs(info, requests_rows=[r.to_row() for r in requests])
            return self._save(info)
        self._save(info)
        self.status.open_group(batch_id, len(jobs))
        self.client.submit_many(jobs, progress=progress)
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
                from pipelines.errors import JobTimeout

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
                docs = self.store.get_many([self.settings.result_key(j) for j in ids])
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
            return _error_line(out_id, row.get("custom_id"), None, err), "errors"
        raw = docs.get(self.settings.result_key(job_id))
        doc = parse_result(raw) if raw is not None else None
        if doc is not None and doc.status == "succeeded":
            bucket = self.settings.s3.bucket
            return success_line(out_id, row["custom_id"], row["url"], doc, bucket), "output"
        err = _job_error(statuses.get(job_id), doc, expired)
        return _error_line(out_id, row["custom_id"], job_id, err), "errors"

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


def _spool() -> BinaryIO:
    return tempfile.SpooledTemporaryFile(max_size=32 << 20)  # type: ignore[return-value]


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def finalize_groups(client: Client) -> Callable[[set[str]], None]:
    """The worker's hook: finalize each batch whose last job it just settled."""

    def hook(groups: set[str]) -> None:
        service = BatchService(client)
        for group in groups:
            try:
                service.finalize(group)
            except BlazeError as exc:  # the next status call finalizes instead
                log.warning("could not finalize batch %s: %s", group, exc)

    return hook
