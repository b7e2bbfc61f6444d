"""A worker holding several batches hands one that would wait to a worker that has none.

Celery's threads pool takes ``batches_in_hand`` batches from the queue at once, so a batch can
sit in one worker waiting for its engine while another worker of the same queue is idle: the
run then ends when the busy worker's last batch does (measured on the mixed-length comparison:
two in hand cost static batches 18 %, with 16 long batches over two workers). Here a batch
that arrives while another batch of this worker holds its (static) engine waits for that turn
before it claims its jobs, and while it waits, if another worker of its queue holds no batch,
it goes back to the queue (``Reject(requeue=True)``): that worker, blocked on the queue, takes
it first. A continuous engine's batches share its running batch, so such a batch is handed
over only if an idle worker is there when it arrives.

Which workers are idle: ``{ns}:idle:{queue}``, a sorted set of process ids scored by when each
last said so. A worker adds itself when its last batch in hand ends, says so again every
``lease_s / 4`` while it stays idle, and removes itself when it takes a batch; a mark older
than ``lease_s`` is not read (a worker killed while idle drops out within that). A batch goes
back at most ``MAX_HANDOFFS`` times (``{ns}:handoffs:{batch_id}``): one that nobody takes comes
straight back, a few milliseconds later, and does not go round again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from engines.cache import EngineCache
from pipelines.settings import BlazeSettings

log = logging.getLogger(__name__)

MAX_HANDOFFS = 2
POLL_S = 0.2  # how often a waiting batch looks for an idle worker (the turn wakes it at once)


class Handoff:
    """Idle marks and hand-offs of one worker process (see the module docstring)."""

    def __init__(
        self,
        settings: BlazeSettings,
        client: redis.Redis,
        cache: EngineCache,
        me: str,
        queues: Sequence[str],
    ) -> None:
        self.client = client
        self.cache = cache
        self.me = me
        self.queues = list(queues)
        self.ns = settings.namespace
        self.several = settings.worker.batches_in_hand > 1
        self.fresh_s = settings.fleet.lease_s
        self._lock = threading.Lock()
        self._in_hand = 0
        self._stop = threading.Event()

    def _key(self, queue: str) -> str:
        return f"{self.ns}:idle:{queue}"

    def _mark(self, idle: bool, at: float = 0.0) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for q in self.queues:
                if idle:
                    pipe.zadd(self._key(q), {self.me: at})
                else:
                    pipe.zrem(self._key(q), self.me)
            pipe.execute()
        except redis.RedisError as exc:  # only hand-offs are lost: batches still run
            log.warning("idle mark not written: %s", exc)

    def start(self, now: float) -> None:
        """Listed idle from now on while no batch is in hand, said again every lease_s / 4."""
        self._mark(True, now)

        def keep() -> None:
            while not self._stop.wait(self.fresh_s / 4):
                with self._lock:
                    if self._in_hand == 0:
                        self._mark(True, time.time())

        threading.Thread(target=keep, name="idle-mark", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._mark(False)

    def took(self) -> None:
        """A batch came in hand."""
        with self._lock:  # marks in the order the counts change
            self._in_hand += 1
            if self._in_hand == 1:
                self._mark(False)

    def ended(self, now: float) -> None:
        """A batch left the hand (settled, retried, handed back or given up)."""
        with self._lock:
            self._in_hand -= 1
            if self._in_hand == 0:
                self._mark(True, now)

    def idle_peers(self, queue: str) -> bool:
        """Whether another worker of ``queue`` said it was idle in the last ``lease_s``."""
        since = time.time() - self.fresh_s
        members = self.client.zrangebyscore(self._key(queue), since, "+inf")
        return any((m.decode() if isinstance(m, bytes) else m) != self.me for m in members)

    def _may(self, batch_id: str) -> bool:
        key = f"{self.ns}:handoffs:{batch_id}"
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 3600)
        count, _ = pipe.execute()
        return int(count) <= MAX_HANDOFFS

    def give_back(self, payload: dict[str, Any], queue: str) -> bool:
        """Wait while another batch of this worker holds the engine this batch needs; True
        if it should go back to the queue for an idle worker instead."""
        with self._lock:
            only_this = self._in_hand <= 1
        if not self.several or only_this or payload.get("alone") or payload.get("shadow"):
            return False
        models = _models(payload)
        engines = {m: self.cache.loaded(m) for m in models}
        if any(e is None for e in engines.values()):
            return False  # this batch loads a model: no batch of this worker holds it
        static = [m for m, e in engines.items() if not getattr(e, "concurrent", False)]
        batch_id = str(payload.get("batch_id") or "")
        try:
            while True:
                if static and all(self.cache.wait_turn(m, 0) for m in static):
                    return False  # the engine is free: run here
                if self.idle_peers(queue):
                    return bool(batch_id) and self._may(batch_id)
                if not static:
                    return False  # a continuous engine takes its rows in now
                self.cache.wait_turn(static[0], POLL_S)
        except redis.RedisError as exc:
            log.warning("hand-off check failed (%s): the batch runs here", exc)
            return False


def _models(payload: dict[str, Any]) -> set[str]:
    """The engines a batch runs on (a job's version where the consumer chose one)."""
    versions = payload.get("versions")
    refs = versions if isinstance(versions, dict) else {}
    out = set()
    for j in payload.get("jobs") or []:
        if isinstance(j, dict):
            out.add(str(refs.get(j.get("job_id"), j.get("model"))))
    return out
