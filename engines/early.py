"""Results written as jobs finish, before the engine call that runs them returns.

An engine that learns a job is done mid-call (continuous generation ends a row the step it
stops) calls ``report_finished(job_id, output)``. The batch runner listens with
``on_finished`` around its engine call: an ``EarlyWriter`` collects what finished and, on its
own thread every ``flush_s``, settles it (result documents and terminal states, the same
first-writer-wins writes as at the end of a batch). A short job of a long batch is then
readable well before the batch ends.

Nothing about delivery changes: the batch's task is acknowledged only after the whole batch is
settled, and a worker that dies mid-batch has its batch redelivered; the jobs settled early are
then refused at their claim (they are terminal) and only the rest run again. What was reported
but not yet flushed when the call returns is settled with the rest of the batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from engines.base import Output

log = logging.getLogger(__name__)

Listener = Callable[[str, Output], None]
_listener: ContextVar[Listener | None] = ContextVar("blaze_finished", default=None)


def report_finished(job_id: str, output: Output) -> None:
    """Tell whoever runs this engine call that ``job_id`` is done (no-op if nobody listens)."""
    listener = _listener.get()
    if listener is not None:
        listener(job_id, output)


@contextmanager
def on_finished(listener: Listener) -> Iterator[None]:
    """Hear ``report_finished`` calls made in this thread while the block runs."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


class EarlyWriter:
    """Collects finished jobs and hands them to ``settle`` in batches, on a thread.

    ``settle`` gets ``(job_id, output)`` pairs and returns the job ids it settled; a failing
    ``settle`` is logged and leaves those jobs to the end of the batch. The thread starts with
    the first report, so engines that never report cost nothing.
    """

    def __init__(
        self, settle: Callable[[list[tuple[str, Output]]], set[str]], flush_s: float = 0.2
    ) -> None:
        self.settle = settle
        self.flush_s = flush_s
        self.settled: set[str] = set()
        self._pending: list[tuple[str, Output]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, job_id: str, output: Output) -> None:
        if output.error:  # failures go the usual way (dead letters, bisection)
            return
        with self._lock:
            self._pending.append((job_id, output))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="early-results")
                self._thread.daemon = True
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            taken, self._pending = self._pending, []
        if not taken:
            return
        try:
            done = self.settle(taken)
        except Exception as exc:  # the end of the batch writes them instead
            log.warning("%d finished jobs not written early: %s", len(taken), exc)
            return
        with self._lock:
            self.settled |= done

    def close(self) -> set[str]:
        """Stop the thread (after a flush in progress ends); the job ids settled early.
        Reports not flushed yet are left to the caller."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            return set(self.settled)
