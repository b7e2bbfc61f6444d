"""W3C trace context (``traceparent``) for one job's path: producer → Kafka → Celery → result.

Format ``00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>``; every hop keeps the trace
id and names itself with a new span id, so grepping the trace id finds the job in every log.
"""

from __future__ import annotations

import re
import secrets

HEADER = "traceparent"
_PATTERN = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def parse(value: str | bytes | None) -> tuple[str, str, str] | None:
    """(trace id, span id, flags) of a valid header value, else None (all-zero ids are invalid)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    match = _PATTERN.match((value or "").strip().lower())
    if not match or set(match[1]) == {"0"} or set(match[2]) == {"0"}:
        return None
    return match[1], match[2], match[3]


def child(value: str | bytes | None) -> str:
    """A traceparent for the next hop: same trace and flags, new span; a fresh one if invalid."""
    parsed = parse(value)
    if parsed is None:
        return new_traceparent()
    return f"00-{parsed[0]}-{secrets.token_hex(8)}-{parsed[2]}"


def trace_id(value: str | bytes | None) -> str | None:
    parsed = parse(value)
    return None if parsed is None else parsed[0]
