"""The in-memory ``StatusEvents``: a list of encoded events, for unit tests and docs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pipelines.stores.events import StatusEvent, decode, encode
from pipelines.stores.status import StatusUpdate


class MemoryStatusEvents:
    """Keeps every published event (as it would travel: one record per call) in ``records``."""

    def __init__(self) -> None:
        self.records: list[bytes] = []

    def __call__(self, moved: Sequence[StatusUpdate]) -> None:
        if moved:
            self.records.append(encode(moved))

    def flush(self, timeout: float = 10) -> None:
        pass

    def read(self, *, follow: bool = False, idle_s: float = 2.0) -> Iterator[StatusEvent]:
        # ``follow`` has nothing to wait for: nothing else can publish while the caller reads
        for r in list(self.records):
            yield from decode(r)

    def close(self) -> None:
        pass
