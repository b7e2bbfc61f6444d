"""Heartbeats: every long-running process says every few seconds who it is and what it does.

One JSON document per process under ``{ns}:hb:{role}:{id}`` (expiring after ``gone_after_s``)
and an index ``{ns}:hb`` (a sorted set by last beat), so ``blaze workers``, ``blaze health``,
the dashboard and the consumer's routing read process state from Redis, never by asking the
processes. A process is alive while its last beat is younger than ``stale_after_s``, stale
after that, and gone once it said goodbye or its document expired.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from typing import Any, Literal

import redis

from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import redis_client

log = logging.getLogger(__name__)

Role = Literal["worker", "consumer", "gateway"]
State = Literal["alive", "stale", "gone"]
FORGET_AFTER_S = 86_400.0


def blaze_version() -> str:
    try:
        return metadata.version("blaze")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Beat:
    """What one process says about itself; ``info`` holds what its role adds (device, queues,
    loaded models with their bytes, the batch in hand, the last batch's time and outcome)."""

    role: str
    id: str
    url: str = ""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    version: str = field(default_factory=blaze_version)
    started_at: float = field(default_factory=time.time)
    at: float = 0.0
    stopped: bool = False
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    """A beat as read back, with the state its age gives it."""

    beat: Beat
    state: State
    age_s: float


class HeartbeatStore:
    """Heartbeats in Redis (see the module docstring for the keys)."""

    def __init__(self, settings: BlazeSettings, client: redis.Redis | None = None) -> None:
        self.client = client or redis_client(settings, connect_timeout_s=2, timeout_s=5)
        self.ns = settings.namespace
        self.index = f"{self.ns}:hb"
        self.stale_after_s = settings.observe.stale_after_s
        self.gone_after_s = settings.observe.gone_after_s

    def _key(self, member: str) -> str:
        return f"{self.ns}:hb:{member}"

    def beat(self, beat: Beat) -> None:
        member = f"{beat.role}:{beat.id}"
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self._key(member), json.dumps(asdict(beat)), ex=int(self.gone_after_s) + 1)
        pipe.zadd(self.index, {member: beat.at})
        pipe.execute()

    def seen(self, role: str | None = None, now: float | None = None) -> list[Seen]:
        """Every process heard from in the last day (``role`` limits it), newest first."""
        now = time.time() if now is None else now
        self.client.zremrangebyscore(self.index, "-inf", now - FORGET_AFTER_S)
        raw_members: list[tuple[bytes | str, float]] = self.client.zrevrange(  # type: ignore[assignment]
            self.index, 0, -1, withscores=True
        )
        members = [
            (m.decode() if isinstance(m, bytes) else m, float(score)) for m, score in raw_members
        ]
        if role is not None:
            members = [(m, s) for m, s in members if m.startswith(role + ":")]
        if not members:
            return []
        docs = self.client.mget([self._key(m) for m, _ in members])
        out: list[Seen] = []
        for (member, score), raw in zip(members, docs, strict=True):
            if raw is None:
                r, _, pid = member.partition(":")
                beat = Beat(role=r, id=pid, host="", pid=0, version="", at=score)
            else:
                beat = Beat(**json.loads(raw))
            age = max(0.0, now - beat.at)
            if raw is None or beat.stopped or age > self.gone_after_s:
                state: State = "gone"
            elif age > self.stale_after_s:
                state = "stale"
            else:
                state = "alive"
            out.append(Seen(beat, state, age))
        return out

    def close(self) -> None:
        self.client.close()


class Heartbeater:
    """Beats every ``interval_s`` from a thread, with what ``snapshot`` says at that moment.

    A Redis outage is logged once and the beats resume when Redis is back; ``stop`` sends a
    last beat marked stopped, so a clean exit reads as gone at once instead of stale.
    """

    def __init__(
        self, store: HeartbeatStore, snapshot: Callable[[], Beat], interval_s: float
    ) -> None:
        self.store = store
        self.snapshot = snapshot
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._failing = False

    def start(self) -> Heartbeater:
        self._thread.start()
        return self

    def beat_now(self, stopped: bool = False) -> None:
        try:
            self.store.beat(replace(self.snapshot(), at=time.time(), stopped=stopped))
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("heartbeat: Redis unreachable (%s); retrying", type(exc).__name__)
            self._failing = True
            return
        if self._failing:
            log.info("heartbeat: Redis reachable again")
        self._failing = False

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.beat_now()
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.beat_now(stopped=True)
