"""Which offsets may be committed: only up to the first message whose fate is not settled."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


@dataclass
class _Partition:
    pending: set[int] = field(default_factory=set)
    high: int = -1  # highest offset seen
    committed: int = -1  # last offset handed to commit (exclusive bound)


class OffsetTracker:
    """Tracks in-flight offsets per partition.

    A message is ``track``-ed when read and ``settle``-d when its result is written, it is
    dead-lettered, or it was durably handed to a stage with the same guarantee. The commit
    point of a partition is its lowest unsettled offset, so a crash can only redeliver, never
    skip.
    """

    def __init__(self) -> None:
        self._parts: dict[Hashable, _Partition] = {}

    def track(self, tp: Hashable, offset: int) -> None:
        part = self._parts.setdefault(tp, _Partition())
        part.pending.add(offset)
        part.high = max(part.high, offset)

    def settle(self, tp: Hashable, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None:
            part.pending.discard(offset)

    def partitions(self) -> list[Hashable]:
        return list(self._parts)

    def pending(self) -> int:
        return sum(len(p.pending) for p in self._parts.values())

    def point(self, tp: Hashable) -> int | None:
        """The offset this partition may be committed up to now (None if nothing was read)."""
        part = self._parts.get(tp)
        if part is None:
            return None
        return min(part.pending) if part.pending else part.high + 1

    def commit_points(self) -> dict[Hashable, int]:
        """Next offset to commit for each partition that moved since the last call."""
        out: dict[Hashable, int] = {}
        for tp, part in self._parts.items():
            point = min(part.pending) if part.pending else part.high + 1
            if point > part.committed:
                out[tp] = point
        return out

    def committed(self, points: dict[Hashable, int]) -> None:
        """Record that ``points`` were committed."""
        for tp, point in points.items():
            if tp in self._parts:
                self._parts[tp].committed = point

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Drop partitions that were revoked; their pending messages will be redelivered."""
        for tp in tps:
            self._parts.pop(tp, None)
