"""OpenAI Batch input lines: each line validated into a Blaze job, or the error naming why not.

An input line is ``{"custom_id", "method": "POST", "url", "body"}`` for ``/v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings`` or ``/v1/images/generations``. Parameters Blaze cannot
honour are an error on their line (never silently ignored); a few that change nothing are
ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError, InvalidJob
from pipelines.jobs import GROUP_TAG, AnyJob, validate_job

ENDPOINTS = {
    "/v1/chat/completions": "llm",
    "/v1/completions": "llm",
    "/v1/embeddings": "embed",
    "/v1/images/generations": "diffusion",
}
MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 200 << 20


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


ENCODING_TAG = "encoding_format"
"""The job tag that carries an embeddings request's ``encoding_format`` to its response."""


def _embedding_job(body: dict[str, Any]) -> dict[str, Any]:
    _check_params(body, {"model", "input", "encoding_format"})
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise _Invalid("invalid_type", "input must be a string or a list of strings", "input")
    job: dict[str, Any] = {"texts": texts}
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        msg = f"encoding_format must be 'float' or 'base64', got {json.dumps(encoding)[:60]}"
        raise _Invalid("invalid_value", msg, "encoding_format")
    if encoding == "base64":  # what OpenAI's Python client asks for unless told otherwise
        job["tags"] = {ENCODING_TAG: "base64"}
    return job


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


class RequestInvalid(Exception):
    """A request body Blaze cannot run; ``error`` says why in OpenAI's terms."""

    def __init__(self, error: RequestError) -> None:
        super().__init__(error.message)
        self.error = error


def request_job(
    url: str,
    body: object,
    *,
    job_id: str,
    model: str | None = None,
    tags: dict[str, str] | None = None,
    deadline: datetime | None = None,
    priority: int | None = None,
) -> AnyJob:
    """The job an OpenAI request body (for ``url``) asks for; ``RequestInvalid`` naming the
    parameter if it cannot run. Used for batch lines and for the gateway's interactive routes."""
    try:
        if url not in _BODY:
            raise _Invalid("invalid_url", f"url {url!r} is not one of {sorted(_BODY)}", "url")
        if not isinstance(body, dict):
            raise _Invalid("invalid_request", "body must be a JSON object", "body")
        fields = _BODY[url](body)
        fields["model"] = model or body.get("model")
        if not fields["model"]:
            raise _Invalid("missing_required_parameter", "model is required", "model")
        fields["job_id"] = job_id
        if tags:
            fields["tags"] = {**fields.get("tags", {}), **tags}
        if deadline is not None:
            fields["deadline"] = deadline
        if priority is not None:
            fields["priority"] = priority
        try:
            return validate_job(fields, ENDPOINTS[url])
        except InvalidJob as exc:
            first = exc.errors[0]["loc"] if exc.errors else None
            raise _Invalid("invalid_request", str(exc), str(first) if first else None) from None
    except _Invalid as bad:
        raise RequestInvalid(bad.error) from None


def parse_request(
    line: int,
    raw: str,
    batch_id: str,
    *,
    model: str | None = None,
    deadline: datetime | None = None,
    endpoint: str | None = None,
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
        if endpoint is not None and url != endpoint:
            msg = f"url {url!r} is not the batch's endpoint {endpoint!r}"
            raise _Invalid("invalid_url", msg, "url")
        job = request_job(
            url,
            row.get("body"),
            job_id=f"{batch_id}-{line:06d}",
            model=model,
            tags={GROUP_TAG: batch_id, "custom_id": custom_id[:256]},
            deadline=deadline,
        )
        return BatchRequest(line, custom_id, url, job=job)
    except _Invalid as bad:
        return BatchRequest(line, custom_id, url, error=bad.error)
    except RequestInvalid as bad:
        return BatchRequest(line, custom_id, url, error=bad.error)


def parse_batch_lines(
    lines: Sequence[tuple[int, str]],
    batch_id: str,
    *,
    model: str | None = None,
    deadline: datetime | None = None,
    endpoint: str | None = None,
) -> list[BatchRequest]:
    """Every non-blank line parsed; a repeated custom_id is an error on the later lines."""
    seen: set[str] = set()
    out = []
    for line, raw in lines:
        req = parse_request(line, raw, batch_id, model=model, deadline=deadline, endpoint=endpoint)
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
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read batch file {path}: {exc.strerror}") from None
    return batch_lines(data, str(path))


def batch_lines(data: bytes, name: str) -> list[tuple[int, str]]:
    """The non-blank lines of a batch file's content with their numbers; ``ConfigError``
    naming ``name`` if it is not UTF-8, empty or over the request limit."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise ConfigError(f"{name}: the batch file has no requests")
    if len(lines) > MAX_REQUESTS:
        raise ConfigError(f"{name}: {len(lines)} requests is over the {MAX_REQUESTS} limit")
    return lines
