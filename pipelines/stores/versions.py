"""Where model records live: the ``VersionStore`` contract and its in-memory backend.

Every node reads the same records (Redis in production: ``versions_redis``); a change is one
atomic read-modify-write of one model's record and moves the store's *revision* on, which
processes poll to pick changes up within seconds. Changes are also kept in an audit trail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from pipelines.versions import ModelRecord

Change = Callable[[ModelRecord | None], ModelRecord]


class VersionStore(Protocol):
    """Model records by name, a revision number and an audit trail."""

    def revision(self) -> int: ...

    def load(self) -> dict[str, ModelRecord]: ...

    def change(self, name: str, fn: Change) -> ModelRecord:
        """Apply ``fn`` to the model's record (None: none yet) atomically; returns the result.
        The revision moves on only when the record changed."""
        ...

    def audit(self, entry: dict[str, Any]) -> None:
        """Keep one audit entry (``at`` is added)."""
        ...

    def trail(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest audit entries (of one model), newest first."""
        ...

    def close(self) -> None: ...


class MemoryVersionStore:
    """A dict-backed store for unit tests and docs."""

    def __init__(self) -> None:
        self.records: dict[str, ModelRecord] = {}
        self.rev = 0
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def revision(self) -> int:
        return self.rev

    def load(self) -> dict[str, ModelRecord]:
        with self._lock:
            return dict(self.records)

    def change(self, name: str, fn: Change) -> ModelRecord:
        with self._lock:
            before = self.records.get(name)
            after = fn(before)
            if after != before:
                self.records[name] = after
                self.rev += 1
            return after

    def audit(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.entries.append({"at": time.time(), **entry})

    def trail(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            found = [e for e in reversed(self.entries) if name is None or e.get("model") == name]
        return found[:limit]

    def close(self) -> None:
        pass
