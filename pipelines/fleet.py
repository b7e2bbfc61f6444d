"""What consumers and workers share about the fleet, in Redis: batch leases, circuit breakers
and the measured seconds per batch size of each model.

**Leases.** A worker holds a lease ``{ns}:lease:{batch_id}`` on the batch in hand and renews it
every ``lease_s / 4``; the key expires ``lease_s`` after the last renewal. A batch taken from
its queue whose lease is gone had its worker die (``consumers.reaper`` returns it within
seconds, instead of at Celery's visibility timeout); a long batch whose worker is alive keeps
its lease and is never redelivered.

**In-engine marks.** While a batch's jobs run on the engine the worker also sets
``{ns}:in-engine:{batch_id}`` (deleted when the call returns; it outlives the lease, so the
reaper still reads it after a death). A worker holding several batches dies with all of them;
only those marked were on the engine when it died, so only their jobs count a death (the
others could not have killed it: they were waiting for their turn or writing results).

**Breakers.** One per worker queue (a device of a kind), ``{ns}:breaker:{queue}``: ``closed``
until ``breaker_failures`` batches in a row fail (the engine failed the whole batch, the
worker died in it), then ``open``: routing sends nothing there. After ``breaker_cooldown_s``
one router takes the single probe slot (``half_open``) and sends one batch; the worker's
outcome closes the breaker or opens it again. A probe that never reports (its worker died
too) frees the slot again after another cooldown.

**Batch times.** ``{ns}:batch-seconds:{model}`` maps a batch size to the seconds a batch
of that size took on a worker, from claiming its jobs to writing their results (one clean engine
call), as a moving average kept by each worker (the last worker to report a
size wins). Consumers size the batches of models with a latency target from it
(``consumers.slo``).

The breaker is written here rather than taken from a library (pybreaker, aiobreaker) because
its three sides live in different processes: the worker records outcomes, the reaper records
deaths and every consumer's router decides. Those libraries wrap a call in the process that
makes it; here the "call" is a Celery task in another process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Literal

import redis

from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import redis_client

Clock = Callable[[], float]
MARK_MIN_S = 86400.0  # an in-engine mark's life at least (a dead worker's is read by then)
BreakerState = Literal["closed", "open", "half_open"]


class Leases:
    """Leases on running batches (see the module docstring)."""

    def __init__(self, settings: BlazeSettings, client: redis.Redis | None = None) -> None:
        self.client = client or redis_client(settings, connect_timeout_s=2, timeout_s=5)
        self.prefix = f"{settings.namespace}:lease:"
        self.engine_prefix = f"{settings.namespace}:in-engine:"
        self.lease_s = settings.fleet.lease_s
        # a mark lives past any engine call and past the reaper's next look after a death
        self.mark_ms = int(1000 * max(MARK_MIN_S, 2 * settings.fleet.batch_timeout_s))

    def hold(self, batch_id: str, holder: str, for_s: float | None = None) -> None:
        """Take or renew the lease for ``for_s`` seconds (default ``lease_s``)."""
        ms = int(1000 * (for_s if for_s is not None else self.lease_s))
        self.client.set(self.prefix + batch_id, holder, px=max(1, ms))

    def holders(self, batch_ids: Sequence[str]) -> dict[str, str | None]:
        """Who holds each batch's lease (None: nobody, i.e. its worker is gone)."""
        if not batch_ids:
            return {}
        raw = self.client.mget([self.prefix + b for b in batch_ids])
        return {
            b: (v.decode() if isinstance(v, bytes) else v)
            for b, v in zip(batch_ids, raw, strict=True)
        }

    @contextmanager
    def on_engine(self, batch_id: str, holder: str) -> Iterator[None]:
        """Mark the batch as running on its engine while the block runs (see the module
        docstring). A Redis error leaves it unmarked: a death then counts against nobody."""
        with suppress(redis.RedisError):
            self.client.set(self.engine_prefix + batch_id, holder, px=self.mark_ms)
        try:
            yield
        finally:
            with suppress(redis.RedisError):
                self.client.delete(self.engine_prefix + batch_id)

    def on_engine_when_gone(self, batch_ids: Sequence[str]) -> set[str]:
        """Which of these batches were on their engine when their worker stopped."""
        if not batch_ids:
            return set()
        raw = self.client.mget([self.engine_prefix + b for b in batch_ids])
        return {b for b, v in zip(batch_ids, raw, strict=True) if v is not None}

    @contextmanager
    def kept(self, batch_id: str, holder: str) -> Iterator[None]:
        """Hold the lease while the block runs, renewed from a thread; after the block it
        lapses ``lease_s`` later rather than at once, since the batch is acknowledged only
        after the block and a batch still unacknowledged without a lease reads as dead.

        A Redis outage only skips renewals (the reaper cannot run without Redis either)."""
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_s / 4):
                with suppress(redis.RedisError):
                    self.hold(batch_id, holder)

        self.hold(batch_id, holder)
        thread = threading.Thread(target=renew, name=f"lease-{batch_id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


@dataclass(frozen=True)
class Breaker:
    """One queue's breaker as read back."""

    queue: str
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probe_until: float = 0.0
    reason: str = ""

    def probe_due(self, now: float, cooldown_s: float) -> bool:
        """Whether a router may take the probe slot now."""
        if self.state == "open":
            return now - self.opened_at >= cooldown_s
        return self.state == "half_open" and now >= self.probe_until


# KEYS[1] breaker hash; ARGV: ok (1/0), now, threshold, reason
_RECORD = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'reason', '')
  return 'closed'
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'reason', ARGV[4])
if state == 'half_open' or (state == 'closed' and failures >= tonumber(ARGV[3])) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[2])
  return 'open'
end
return state
"""

# KEYS[1] breaker hash; ARGV: now, cooldown. Takes the probe slot if it is due.
_PROBE = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local now = tonumber(ARGV[1])
if state == 'open' then
  if now - tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0') < tonumber(ARGV[2]) then
    return 0
  end
elseif state == 'half_open' then
  if now < tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0') then return 0 end
else
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe_until', now + tonumber(ARGV[2]))
return 1
"""


class Breakers:
    """Circuit breakers per worker queue (see the module docstring); ``clock`` is injectable."""

    def __init__(
        self,
        settings: BlazeSettings,
        client: redis.Redis | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.client = client or redis_client(settings, connect_timeout_s=2, timeout_s=5)
        self.prefix = f"{settings.namespace}:breaker:"
        self.threshold = settings.fleet.breaker_failures
        self.cooldown_s = settings.fleet.breaker_cooldown_s
        self.clock = clock
        self._record = self.client.register_script(_RECORD)
        self._probe = self.client.register_script(_PROBE)

    def record(self, queue: str, ok: bool, reason: str = "") -> BreakerState:
        """A batch on ``queue`` ended (``ok``) or failed; returns the breaker's new state."""
        got = self._record(
            keys=[self.prefix + queue],
            args=[1 if ok else 0, repr(self.clock()), self.threshold, reason[:300]],
        )
        state = got.decode() if isinstance(got, bytes) else str(got)
        return "open" if state == "open" else "half_open" if state == "half_open" else "closed"

    def take_probe(self, queue: str) -> bool:
        """Take the one probe slot of an open breaker whose cooldown has passed."""
        return bool(
            self._probe(keys=[self.prefix + queue], args=[repr(self.clock()), self.cooldown_s])
        )

    def states(self, queues: Iterable[str]) -> dict[str, Breaker]:
        names = list(queues)
        pipe = self.client.pipeline(transaction=False)
        for q in names:
            pipe.hgetall(self.prefix + q)
        out: dict[str, Breaker] = {}
        for q, raw in zip(names, pipe.execute(), strict=True):
            f = {
                (k.decode() if isinstance(k, bytes) else k): (
                    v.decode() if isinstance(v, bytes) else v
                )
                for k, v in raw.items()
            }
            out[q] = Breaker(
                queue=q,
                state=f.get("state", "closed"),  # type: ignore[arg-type]
                failures=int(f.get("failures", 0)),
                opened_at=float(f.get("opened_at", 0)),
                probe_until=float(f.get("probe_until", 0)),
                reason=f.get("reason", ""),
            )
        return out

    def all(self) -> dict[str, Breaker]:
        """Every breaker of this namespace (``blaze workers``)."""
        queues = [
            (k.decode() if isinstance(k, bytes) else k)[len(self.prefix) :]
            for k in self.client.scan_iter(self.prefix + "*", count=500)
        ]
        return self.states(sorted(queues))

    def reset(self, queue: str) -> None:
        self.client.delete(self.prefix + queue)


class BatchTimes:
    """Seconds per batch by batch size, per model (see the module docstring)."""

    def __init__(self, settings: BlazeSettings, client: redis.Redis | None = None) -> None:
        self.client = client or redis_client(settings, connect_timeout_s=2, timeout_s=5)
        self.prefix = f"{settings.namespace}:batch-seconds:"

    def record(self, model: str, size: int, seconds: float) -> None:
        self.client.hset(self.prefix + model, str(size), f"{seconds:.6f}")

    def read(self, models: Sequence[str]) -> dict[str, dict[int, float]]:
        """Every reported size and its seconds, per model (models never run: empty)."""
        pipe = self.client.pipeline(transaction=False)
        for m in models:
            pipe.hgetall(self.prefix + m)
        out: dict[str, dict[int, float]] = {}
        for m, raw in zip(models, pipe.execute(), strict=True):
            out[m] = {int(k): float(v) for k, v in raw.items()}
        return out
