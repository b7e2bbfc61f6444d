"""Result storage: the ``ResultStore`` contract (backends: ``results_memory``, ``results_s3``).

Each result is one object written with a single PUT, so a reader sees either nothing or the
whole document. Writes of a batch run concurrently because one PUT costs a round trip. Writes
that must never replace what is there (result documents, images) are conditional: S3's
``If-None-Match: *`` makes the first writer win, and the store reports the keys it found taken.
Objects above ``multipart_threshold_mb`` (and streamed files of unknown size) go up in parts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

Item = tuple[str, bytes, str]
"""``(key, data, content_type)`` of one object to write."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, size and last-modified time."""

    key: str
    size: int
    modified: datetime


class ResultStore(Protocol):
    """Objects by key, for results, images, manifests and batch files."""

    def put_many(self, items: Sequence[Item], *, if_absent: bool = False) -> set[str]:
        """Write items; raises if any write failed.

        With ``if_absent`` an existing object is left as it is; returns the keys that were
        already taken (always empty without ``if_absent``).
        """
        ...

    def put_stream(self, key: str, data: BinaryIO, content_type: str) -> None:
        """Write a file of any size from a readable stream, in parts."""
        ...

    def copy_many(self, pairs: Sequence[tuple[str, str]]) -> set[str]:
        """Copy objects ``(source, destination)`` inside the store (server-side where the
        backend can); returns the sources that were missing (their copies were not made)."""
        ...

    def get(self, key: str) -> bytes | None: ...

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        """Several objects at once (concurrently where the backend allows)."""
        ...

    def existing(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` that already exist."""
        ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def scan(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` with its size and time."""
        ...

    def delete_many(self, keys: Sequence[str]) -> int:
        """Delete objects (missing ones are fine); returns how many were asked for."""
        ...

    def presign(self, key: str, expires_s: int) -> str:
        """A URL that reads ``key`` without credentials until it expires."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...
