"""The in-memory ``ResultStore``: a dict, for unit tests and docs; inspect ``objects``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import BinaryIO

from pipelines.stores.results import Item, ObjectInfo


class MemoryResultStore:
    """A dict-backed store for unit tests and docs; inspect ``objects`` directly."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.objects: dict[str, bytes] = {}
        self.modified: dict[str, float] = {}
        self.clock = clock
        self._lock = threading.Lock()

    def put_many(self, items: Sequence[Item], *, if_absent: bool = False) -> set[str]:
        taken: set[str] = set()
        with self._lock:
            for key, data, _ in items:
                if if_absent and key in self.objects:
                    taken.add(key)
                    continue
                self.objects[key] = data
                self.modified[key] = self.clock()
        return taken

    def put_stream(self, key: str, data: BinaryIO, content_type: str) -> None:
        self.put_many([(key, data.read(), content_type)])

    def copy_many(self, pairs: Sequence[tuple[str, str]]) -> set[str]:
        missing: set[str] = set()
        with self._lock:
            for source, dest in pairs:
                if source not in self.objects:
                    missing.add(source)
                    continue
                self.objects[dest] = self.objects[source]
                self.modified[dest] = self.clock()
        return missing

    def get(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        return {k: self.objects.get(k) for k in keys}

    def existing(self, keys: Iterable[str]) -> set[str]:
        return {k for k in keys if k in self.objects}

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def scan(self, prefix: str) -> list[ObjectInfo]:
        return [
            ObjectInfo(k, len(self.objects[k]), datetime.fromtimestamp(self.modified[k], UTC))
            for k in self.list_keys(prefix)
        ]

    def delete_many(self, keys: Sequence[str]) -> int:
        with self._lock:
            for k in keys:
                self.objects.pop(k, None)
                self.modified.pop(k, None)
        return len(keys)

    def presign(self, key: str, expires_s: int) -> str:
        return f"memory://{key}?expires={expires_s}"

    def close(self) -> None:
        pass
