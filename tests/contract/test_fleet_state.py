"""Breakers and leases on the real Redis, with an injectable clock."""

from __future__ import annotations

import time

from pipelines.fleet import Breakers, Leases
from pipelines.settings import BlazeSettings
from pipelines.stores.status_redis import RedisStatusStore


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def breakers(settings: BlazeSettings, clock: Clock) -> Breakers:
    fleet = settings.fleet.model_copy(update={"breaker_failures": 3, "breaker_cooldown_s": 30})
    return Breakers(settings.model_copy(update={"fleet": fleet}), clock=clock)


def test_a_breaker_opens_after_n_failures_in_a_row_probes_once_and_closes_on_success(
    settings: BlazeSettings,
) -> None:
    clock = Clock()
    b = breakers(settings, clock)
    q = "q.cpu"
    assert b.record(q, False, "boom") == "closed"
    assert b.record(q, True) == "closed"  # a success resets the count
    assert [b.record(q, False, "boom") for _ in range(3)] == ["closed", "closed", "open"]
    state = b.states([q])[q]
    assert state.state == "open" and state.failures == 3 and state.reason == "boom"
    assert not b.take_probe(q)  # cooling down
    clock.now += 30
    assert b.take_probe(q)  # one router wins the probe ...
    assert not b.take_probe(q)  # ... and nobody else
    assert b.states([q])[q].state == "half_open"
    assert b.record(q, True) == "closed"
    assert b.states([q])[q].failures == 0


def test_a_failed_probe_opens_again_and_a_lost_probe_frees_its_slot(
    settings: BlazeSettings,
) -> None:
    clock = Clock()
    b = breakers(settings, clock)
    q = "q.cuda0"
    for _ in range(3):
        b.record(q, False, "boom")
    clock.now += 30
    assert b.take_probe(q)
    assert b.record(q, False, "still broken") == "open"  # one failure in half-open reopens
    assert b.states([q])[q].opened_at == clock.now
    clock.now += 30
    assert b.take_probe(q)  # this probe's worker dies and never reports
    clock.now += 29
    assert not b.take_probe(q)
    clock.now += 1
    assert b.take_probe(q)
    assert set(b.all()) == {q}


def test_a_lease_lives_while_renewed_and_expires_after(settings: BlazeSettings) -> None:
    fleet = settings.fleet.model_copy(update={"lease_s": 1})
    leases = Leases(settings.model_copy(update={"fleet": fleet}))
    with leases.kept("b1", "worker-a"):
        time.sleep(1.5)  # renewed every 0.25 s
        assert leases.holders(["b1", "b2"]) == {"b1": "worker-a", "b2": None}
    assert leases.holders(["b1"]) == {"b1": "worker-a"}  # until the batch's ack follows
    time.sleep(1.1)
    assert leases.holders(["b1"]) == {"b1": None}


def test_deaths_are_counted_per_job_and_forgotten_on_reset(settings: BlazeSettings) -> None:
    store = RedisStatusStore(settings)
    assert store.count_deaths(["a", "b"]) == {"a": 1, "b": 1}
    assert store.count_deaths(["a"]) == {"a": 2}
    store.reset(["a"])
    assert store.count_deaths(["a"]) == {"a": 1}
    store.close()
