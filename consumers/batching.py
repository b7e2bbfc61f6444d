"""Micro-batching: per-key groups that leave on max size or once the oldest waited max wait.

Three adaptations to the arrival rate:

- A partial batch whose items are still streaming in when its window ends gets up to one more
  window to fill, if at the rate they arrive it would be full by then. A burst (a file of jobs
  submitted at once, read by the consumer in pieces) then leaves as full batches instead of a
  partial one per poll.
- A partial batch nothing has joined for ``quiet_s`` may leave before its window ends, if the
  caller says it can start at once (a worker queue for it is empty). At low load a lone job
  then waits ``quiet_s`` instead of the whole window; under load queues are not empty and
  batches fill as before.
- Items announced as sent together (``sent_with``; the ``blaze-sent-with`` header of jobs
  from the SDK) keep their batch open until they are all in or it is full: it neither leaves
  early nor at its first deadline (one extension), since the consumer reads a burst in pieces
  that can be more than a window apart on a busy machine.
- An eager batch (``add(..., eager=True)``; models with a latency target) is asked whether it
  can start every ``quiet_s`` whether or not items keep joining it: it leaves the moment a
  worker queue for it is empty, so while the worker is busy it grows with the arrival rate,
  and when the worker frees up it goes, full or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pipelines.errors import ConfigError

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


@dataclass
class _Open(Generic[T]):
    opened_at: float
    max_size: int
    max_wait_s: float
    items: list[T] = field(default_factory=list)
    last_at: float = 0.0
    deadline: float = 0.0
    extended: bool = False
    refused_early: bool = False  # asked once whether it may leave early; the answer was no
    expected: int = 1  # items announced as sent together with ones in this batch
    eager: bool = False  # asked every quiet spell, joined or not (see the module docstring)
    asked_at: float = 0.0

    def waiting_for_more(self) -> bool:
        """Items sent together with these (see ``Batcher.add``) have not all arrived."""
        return len(self.items) < min(self.expected, self.max_size)

    def still_filling(self, now: float) -> bool:
        """Items announced or arriving fast enough to fill the batch within one more window."""
        if self.extended:
            return False
        if self.waiting_for_more():
            return True
        if len(self.items) < 2 or self.eager:  # an eager batch keeps its deadline
            return False
        quiet = now - self.last_at
        if quiet > self.max_wait_s / 4:  # the stream has stopped
            return False
        rate = (len(self.items) - 1) / max(self.last_at - self.opened_at, 1e-6)
        return (self.max_size - len(self.items)) / rate <= self.max_wait_s


class Batcher(Generic[K, T]):
    """Collects items into per-key batches.

    Args:
        max_size: A batch leaves as soon as it holds this many items.
        max_wait_s: A partial batch leaves once its oldest item has waited this long.
        clock: Monotonic time source; tests inject a fake one so they never sleep.
        quiet_s: A partial batch nothing joined for this long may leave early (see ``due``);
            0 turns early leaving off.
    """

    def __init__(
        self,
        max_size: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        quiet_s: float = 0.0,
    ) -> None:
        if max_size < 1:
            raise ConfigError(f"batch max_size must be >= 1, got {max_size}")
        if max_wait_s <= 0:
            raise ConfigError(f"batch max_wait_s must be > 0, got {max_wait_s}")
        if quiet_s < 0:
            raise ConfigError(f"batch quiet_s must be >= 0, got {quiet_s}")
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.quiet_s = quiet_s
        self._open: dict[K, _Open[T]] = {}

    def __len__(self) -> int:
        return sum(len(b.items) for b in self._open.values())

    @property
    def open_batches(self) -> int:
        return len(self._open)

    def add(
        self,
        key: K,
        item: T,
        max_size: int | None = None,
        max_wait_s: float | None = None,
        sent_with: int = 1,
        eager: bool = False,
    ) -> list[T] | None:
        """Add an item; returns the key's batch if this item filled it.

        ``max_size`` and ``max_wait_s`` override the defaults for the batch this item opens
        (limits are per model). ``sent_with`` says how many items were sent together with
        this one: until that many (or a full batch) are in, the batch neither leaves early
        when quiet nor at its first deadline. ``eager`` marks the batch this item opens as
        eager (see the module docstring).
        """
        batch = self._open.get(key)
        now = self.clock()
        if batch is None:
            size, wait = max_size or self.max_size, max_wait_s or self.max_wait_s
            batch = self._open[key] = _Open(
                now, size, wait, deadline=now + wait, eager=eager, asked_at=now
            )
        batch.items.append(item)
        batch.last_at, batch.refused_early = now, False
        batch.expected = max(batch.expected, sent_with)
        if len(batch.items) >= batch.max_size:
            del self._open[key]
            return batch.items
        return None

    def due(
        self,
        can_start: Callable[[list[T]], bool] | None = None,
        only: Callable[[list[T]], bool] | None = None,
    ) -> list[tuple[K, list[T]]]:
        """Remove and return every batch whose window has ended (see the module docstring
        for the one extension a still-filling batch gets).

        With ``can_start``, a batch nothing joined for ``quiet_s`` also leaves if
        ``can_start(items)`` says so; it is asked once per quiet spell, so a busy pipeline is
        not asked again on every poll. With ``only``, batches it refuses are not looked at.
        """
        now = self.clock()
        keys = []
        for k, b in self._open.items():
            if only is not None and not only(b.items):
                continue
            if now < b.deadline:
                early = self._early_at(b)
                if early is not None and now >= early and can_start is not None:
                    if can_start(b.items):
                        keys.append(k)
                    else:
                        b.refused_early, b.asked_at = True, now
                continue
            if b.still_filling(now):
                b.extended, b.deadline = True, b.deadline + b.max_wait_s
                continue
            keys.append(k)
        return [(k, self._open.pop(k).items) for k in keys]

    def _early_at(self, b: _Open[T]) -> float | None:
        """When ``b`` may be asked whether it can leave early; None if it may not be."""
        if not self.quiet_s or b.waiting_for_more():
            return None
        if b.eager:
            return b.asked_at + self.quiet_s
        return None if b.refused_early else b.last_at + self.quiet_s

    def seconds_to_next(self) -> float | None:
        """How long until the next partial batch is due, or may leave early; None when
        nothing is open."""
        if not self._open:
            return None
        times = [b.deadline for b in self._open.values()]
        times += [t for b in self._open.values() if (t := self._early_at(b)) is not None]
        return max(0.0, min(times) - self.clock())

    def restart(self) -> None:
        """Give every open batch a fresh window and quiet spell.

        For when intake resumes after a pause: the records held back in the broker arrive at
        once and fill the open batches, instead of those leaving partial the moment the
        consumer looks again.
        """
        now = self.clock()
        for b in self._open.values():
            b.deadline = max(b.deadline, now + b.max_wait_s)
            b.last_at, b.refused_early = now, False

    def drain(self) -> list[tuple[K, list[T]]]:
        """Remove and return every open batch (on shutdown or partition revocation)."""
        out = [(k, b.items) for k, b in self._open.items()]
        self._open.clear()
        return out
