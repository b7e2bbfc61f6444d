"""Dead letters: jobs Blaze could not run, with why and where they came from.

The contract (``DeadLetterStore``) has both sides: ``send`` (intake records a message it
cannot run; returns once the record is durable) and ``read`` (``blaze dlq`` lists and replays
them). Backends: ``deadletters_memory`` and ``deadletters_kafka`` (the ``{namespace}.dead-letter``
topic). A record names the job (when known), the stage and the reason; ``payload`` keeps the
first 4 KiB of the message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Source:
    """Where a message came from on Kafka."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class DeadLetter:
    """A message Blaze could not run, with why and where it came from (the write side)."""

    stage: str
    reason: str
    job_id: str | None = None
    source: Source | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    payload: str = ""
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_json(self) -> bytes:
        src = None if self.source is None else self.source.__dict__
        body = {
            "job_id": self.job_id,
            "stage": self.stage,
            "reason": self.reason,
            "errors": self.errors,
            "source": src,
            "at": self.at,
            "payload": self.payload,
        }
        return json.dumps(body, default=str).encode()


@dataclass(frozen=True)
class Letter:
    """One stored dead letter as read back, with its place (``partition:offset``)."""

    partition: int
    offset: int
    body: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"


def letter_body(raw: bytes) -> dict[str, Any]:
    """A stored record's body; one that is not a JSON object still reads, with that reason."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return {"reason": "unreadable dead letter", "payload": raw[:200].decode(errors="replace")}
    return body


def in_order(letters: list[Letter], limit: int | None) -> list[Letter]:
    """Oldest first (by when they were written), at most ``limit``."""
    letters.sort(key=lambda x: (x.body.get("at") or "", x.partition, x.offset))
    return letters[:limit] if limit is not None else letters


class DeadLetterStore(Protocol):
    def send(self, letters: Sequence[DeadLetter]) -> None:
        """Record letters; returns once they are durably stored."""
        ...

    def read(self, idle_s: float = 2.0, limit: int | None = None) -> list[Letter]:
        """Every stored letter, oldest first; with ``limit``, reading stops after that many
        (in storage order, so on a large store they need not be the very oldest)."""
        ...

    def close(self) -> None: ...
