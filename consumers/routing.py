"""Routing: which worker queue (device) a batch goes to.

Candidates are the queues of the devices that serve the batch's model (``devices`` in the
registry, narrowed by ``blaze consume --device``), less those holding ``max_queued`` batches
(backpressure), those whose breaker is open (``pipelines.fleet``) and, when heartbeats name any
live worker for the model, those without one. An open breaker whose cooldown has passed takes
the next batch as its probe. With no candidate left the batch waits (intake pauses).

Six strategies, per model (``routing`` in the registry) or per consumer (``fleet.routing``):

- ``round_robin``: each candidate in turn;
- ``least_outstanding``: the fewest waiting batches;
- ``weighted``: in proportion to capacity weights (the registry's ``weights``, else what the
  queue's workers advertise, ``fleet.weight``), smooth weighted round robin;
- ``fastest``: the lowest expected wait, (waiting + 1) x the seconds per job its workers
  measured (an EWMA); an unmeasured queue counts as free, so it gets tried;
- ``power_of_two``: two random candidates, the one with fewer waiting batches;
- ``model_affinity`` (default): a queue whose worker has the model loaded; else the queue a
  rendezvous hash of the model picks among the live ones (so a model stays where it was and
  engine caches stop thrashing); when those are full, it spills to a queue with nothing
  waiting (its worker would idle), and otherwise waits while other models' batches go.
  Without any heartbeat it falls back to ``least_outstanding``.

Heartbeats and breakers are read at most once per ``refresh_s`` (one snapshot per second), so
routing adds no Redis round trip per batch beyond the queue depths it always read.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import get_args

import redis

from consumers.dispatch import QueueDepth
from pipelines.errors import ConfigError
from pipelines.fleet import Breaker, Breakers
from pipelines.observe.heartbeats import HeartbeatStore
from pipelines.registry import Registry
from pipelines.settings import BlazeSettings, RoutingStrategy

log = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = get_args(RoutingStrategy)


@dataclass(frozen=True)
class QueueInfo:
    """What the live workers of one queue say about themselves."""

    workers: int = 0
    loaded: frozenset[str] = frozenset()
    weight: float = 0.0
    sec_per_job: float | None = None


@dataclass
class FleetView:
    """Heartbeats and breakers, refreshed at most every ``refresh_s`` seconds.

    Either source may be None (unit tests, or a consumer without Redis heartbeats); a Redis
    error keeps the last snapshot.
    """

    heartbeats: HeartbeatStore | None = None
    breakers: Breakers | None = None
    refresh_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    on_refresh: Callable[[FleetView], None] | None = None
    queues: dict[str, QueueInfo] = field(default_factory=dict)
    states: dict[str, Breaker] = field(default_factory=dict)
    _at: float = -1e18

    def refresh(self, all_queues: Callable[[], Sequence[str]]) -> None:
        """Read heartbeats and the breakers of ``all_queues()`` unless read within
        ``refresh_s`` (the queue list is only built when they are read)."""
        now = self.clock()
        if now - self._at < self.refresh_s:
            return
        self._at = now
        try:
            if self.heartbeats is not None:
                self.queues = _queue_infos(self.heartbeats)
            if self.breakers is not None:
                self.states = self.breakers.states(all_queues())
        except (redis.RedisError, OSError) as exc:
            log.warning("routing: fleet state not refreshed (%s); using the last one", exc)
            return
        if self.on_refresh is not None:
            self.on_refresh(self)

    def breaker(self, queue: str) -> Breaker:
        return self.states.get(queue) or Breaker(queue)


def _queue_infos(heartbeats: HeartbeatStore) -> dict[str, QueueInfo]:
    acc: dict[str, list[dict[str, object]]] = {}
    for seen in heartbeats.seen("worker"):
        if seen.state != "alive":
            continue
        info = seen.beat.info
        for q in info.get("queues") or []:
            acc.setdefault(str(q), []).append(info)
    out: dict[str, QueueInfo] = {}
    for q, infos in acc.items():
        speeds = [v for i in infos if (v := _number(i.get("sec_per_job"), -1.0)) >= 0]
        models: set[str] = set()
        for i in infos:
            loaded = i.get("models")
            if isinstance(loaded, dict):
                models.update(str(m) for m in loaded)
        out[q] = QueueInfo(
            workers=len(infos),
            loaded=frozenset(models),
            weight=sum(
                float(w) if isinstance(w := i.get("weight"), int | float) else 1.0 for i in infos
            ),
            sec_per_job=sum(speeds) / len(speeds) if speeds else None,
        )
    return out


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) else default


def rendezvous(model: str, queues: Sequence[str]) -> list[str]:
    """``queues`` ranked for ``model`` by highest random weight (a consistent hash: removing a
    queue moves only the models it held)."""

    def score(q: str) -> bytes:
        return hashlib.blake2b(f"{model}\0{q}".encode(), digest_size=8).digest()

    return sorted(queues, key=score, reverse=True)


class Router:
    """Chooses the worker queue for a batch (see the module docstring).

    Args:
        settings: Blaze settings (queue names, ``fleet.routing``).
        registry: Which devices serve which model, per-model strategies and weights.
        depth: Reads how many batches wait per queue.
        strategy: The consumer's strategy (default ``settings.fleet.routing``); a model's
            own ``routing`` wins.
        max_queued: A queue holding this many batches takes no more (backpressure).
        only_devices: Route only to these devices (e.g. what ``blaze consume --device`` names).
        view: Heartbeats and breakers (None: route on depths alone).
        rng: Randomness for ``power_of_two``.
    """

    def __init__(
        self,
        settings: BlazeSettings,
        registry: Registry,
        depth: QueueDepth,
        strategy: str | None = None,
        max_queued: int | None = None,
        only_devices: Sequence[str] | None = None,
        view: FleetView | None = None,
        rng: random.Random | None = None,
    ) -> None:
        strategy = strategy or settings.fleet.routing
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"unknown routing strategy {strategy!r} (one of {', '.join(STRATEGIES)})"
            )
        self.settings = settings
        self.registry = registry
        self.depth = depth
        self.strategy = strategy
        self.max_queued = max_queued or settings.batch.max_queued_batches
        self.only = set(only_devices) if only_devices else None
        self.view = view or FleetView()
        self.rng = rng or random.Random()
        self._turn: dict[str, int] = {}
        self._credit: dict[str, dict[str, float]] = {}

    def queues_for(self, kind: str, model: str) -> list[str]:
        spec = self.registry.get(model)
        devices = spec.devices if spec else ["cpu"]
        if self.only is not None:
            devices = [d for d in devices if d in self.only]
        return [self.settings.queue(kind, d) for d in devices]

    def all_queues(self) -> list[str]:
        """Every queue this router may send to, for every model of the registry."""
        queues = {
            q
            for name in self.registry.names()
            for q in self.queues_for(self.registry.specs[name].kind, name)
        }
        return sorted(queues)

    def has_empty_queue(self, kind: str, model: str) -> bool:
        """Whether a queue for this model holds no waiting batch (a batch sent now starts as
        soon as a worker of that queue is free; at low load, at once)."""
        queues = self.queues_for(kind, model)
        return bool(queues) and min(self.depth.depth(queues).values()) == 0

    def choose(self, kind: str, model: str) -> str | None:
        """The queue for the next batch, or None when every candidate is full or open."""
        queues = self.queues_for(kind, model)
        if not queues:
            return None
        self.view.refresh(self.all_queues)
        live = [q for q in queues if self.view.queues.get(q, QueueInfo()).workers]
        eligible = live or queues  # no heartbeat at all: trust the registry
        depths = self.depth.depth(queues)
        room = [q for q in eligible if depths[q] < self.max_queued]
        probe = self._probe(room)
        if probe is not None:
            return probe
        open_ = [q for q in room if self.view.breaker(q).state == "closed"]
        if not open_:
            return None
        spec = self.registry.get(model)
        strategy = (spec.routing if spec else None) or self.strategy
        if strategy == "model_affinity" and self.view.queues:
            return self._affinity(model, open_, eligible, depths)
        return self._pick(strategy, kind, model, open_, depths)

    def _probe(self, room: list[str]) -> str | None:
        """A queue whose open breaker is due a probe batch, if this router wins the slot."""
        breakers = self.view.breakers
        if breakers is None:
            return None
        cooldown = self.settings.fleet.breaker_cooldown_s
        for q in room:
            b = self.view.breaker(q)
            if b.state != "closed" and b.probe_due(time.time(), cooldown):
                try:
                    if breakers.take_probe(q):
                        log.info("breaker of %s: sending a probe batch", q)
                        self.view.states[q] = Breaker(q, "half_open", b.failures, b.opened_at)
                        return q
                except redis.RedisError:
                    return None
        return None

    def _pick(
        self,
        strategy: str,
        kind: str,
        model: str,
        cands: list[str],
        depths: dict[str, int],
    ) -> str:
        def least() -> str:
            return min(cands, key=lambda q: (depths[q], cands.index(q)))

        key = f"{kind}/{model}"
        if strategy == "least_outstanding":
            return least()
        if strategy == "round_robin":
            turn = self._turn.get(key, 0)
            self._turn[key] = turn + 1
            return cands[turn % len(cands)]
        if strategy == "power_of_two":
            if len(cands) == 1:
                return cands[0]
            a, b = self.rng.sample(cands, 2)
            return a if depths[a] <= depths[b] else b
        if strategy == "fastest":
            infos = self.view.queues

            def wait(q: str) -> float:
                per_job = infos.get(q, QueueInfo()).sec_per_job or 0.0
                return (depths[q] + 1) * per_job

            return min(cands, key=lambda q: (wait(q), depths[q], cands.index(q)))
        if strategy == "weighted":
            return self._weighted(key, kind, model, cands)
        return least()  # least_outstanding, and model_affinity before any heartbeat

    def _weighted(self, key: str, kind: str, model: str, cands: list[str]) -> str:
        """Smooth weighted round robin (each pick: add every weight, take the largest credit,
        charge it the total): proportions hold exactly and picks interleave."""
        spec = self.registry.get(model)
        fixed = {self.settings.queue(kind, d): w for d, w in (spec.weights if spec else {}).items()}

        def weight(q: str) -> float:
            if q in fixed:
                return fixed[q]
            return self.view.queues.get(q, QueueInfo()).weight or 1.0

        credit = self._credit.setdefault(key, {})
        weights = {q: weight(q) for q in cands}
        for q, w in weights.items():
            credit[q] = credit.get(q, 0.0) + w
        best = max(cands, key=lambda q: (credit[q], -cands.index(q)))
        credit[best] -= sum(weights.values())
        return best

    def _affinity(
        self, model: str, cands: list[str], eligible: list[str], depths: dict[str, int]
    ) -> str | None:
        """A queue whose workers hold the model, else the model's hash home; when those are
        full, a queue about to run dry (nothing waiting) rather than one that would have to
        swap models for nothing; else None: the batch waits while other models' go."""
        infos = self.view.queues
        holding = [q for q in eligible if model in infos.get(q, QueueInfo()).loaded]
        preferred = holding or rendezvous(model, eligible)[:1]
        free = [q for q in preferred if q in cands]
        if free:
            return min(free, key=lambda q: (depths[q], preferred.index(q)))
        idle = [q for q in cands if depths[q] == 0]
        return rendezvous(model, idle)[0] if idle else None
