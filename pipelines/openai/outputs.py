"""OpenAI Batch output lines: what OpenAI's endpoint would have answered, from result documents."""

from __future__ import annotations

import base64
import struct
from typing import Any

from pipelines.openai.requests import ENCODING_TAG, RequestError
from pipelines.results import AnyResult, DiffusionResult, EmbedResult, LLMResult
from pipelines.stores.status import JobState, JobStatus


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _embedding(vector: list[float], encoding: str | None) -> list[float] | str:
    """A vector as OpenAI answers it: floats, or with ``encoding_format: base64`` its
    little-endian float32 bytes in base64 (what OpenAI's clients decode)."""
    if encoding != "base64":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


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
        encoding = doc.tags.get(ENCODING_TAG)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _embedding(v, encoding)}
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


def error_line(
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


def job_error(st: JobStatus | None, doc: AnyResult | None, expired: bool) -> RequestError:
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
