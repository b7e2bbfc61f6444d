"""Each routing strategy, with queue depths, heartbeats and breakers given by hand."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from consumers.dispatch import MemoryDispatcher
from consumers.routing import STRATEGIES, FleetView, QueueInfo, Router, rendezvous
from pipelines.errors import ConfigError
from pipelines.fleet import Breaker
from pipelines.registry import ModelSpec, Registry
from pipelines.settings import BlazeSettings

SETTINGS = BlazeSettings(batch={"max_queued_batches": 3})
DEVICES = ["cpu:0", "cpu:1", "cpu:2"]
Q = [SETTINGS.queue("llm", d) for d in DEVICES]
REGISTRY = Registry(
    {
        **{f"m{i}": ModelSpec(name=f"m{i}", devices=DEVICES) for i in range(4)},
        "heavy": ModelSpec(name="heavy", devices=DEVICES, weights={"cpu:0": 3, "cpu:1": 1}),
        "pinned": ModelSpec(name="pinned", devices=DEVICES, routing="round_robin"),
    }
)


def router(
    strategy: str | None,
    infos: dict[str, QueueInfo] | None = None,
    depths: dict[str, int] | None = None,
) -> tuple[Router, MemoryDispatcher]:
    disp = MemoryDispatcher(waiting=dict(depths or {}))
    view = FleetView(queues=dict(infos or {}), refresh_s=1e9)
    return Router(SETTINGS, REGISTRY, disp, strategy, view=view, rng=random.Random(7)), disp


def picks(r: Router, model: str, n: int) -> list[str]:
    return [r.choose("llm", model) or "-" for _ in range(n)]


def test_the_default_is_model_affinity_and_unknown_strategies_are_refused() -> None:
    assert router(None)[0].strategy == "model_affinity"
    assert set(STRATEGIES) == {
        "model_affinity",
        "least_outstanding",
        "round_robin",
        "weighted",
        "fastest",
        "power_of_two",
    }
    with pytest.raises(ConfigError, match="unknown routing strategy 'fast'"):
        router("fast")


def test_round_robin_takes_each_queue_in_turn() -> None:
    r, _ = router("round_robin")
    assert picks(r, "m0", 4) == [Q[0], Q[1], Q[2], Q[0]]


def test_least_outstanding_takes_the_emptiest_and_full_queues_take_nothing() -> None:
    r, disp = router("least_outstanding", depths={Q[0]: 2, Q[1]: 1, Q[2]: 3})
    assert r.choose("llm", "m0") == Q[1]
    disp.waiting = {q: 3 for q in Q}
    assert r.choose("llm", "m0") is None  # backpressure


def test_weighted_follows_the_registry_weights_or_what_workers_advertise() -> None:
    r, _ = router("weighted")
    # the registry gives cpu:0 3, cpu:1 1 and cpu:2 (unset, no heartbeat) 1
    assert Counter(picks(r, "heavy", 50)) == {Q[0]: 30, Q[1]: 10, Q[2]: 10}
    infos = {Q[0]: QueueInfo(1, weight=1), Q[1]: QueueInfo(1, weight=4), Q[2]: QueueInfo(0)}
    r, _ = router("weighted", infos)
    assert Counter(picks(r, "m1", 50)) == {Q[0]: 10, Q[1]: 40}  # cpu:2 has no live worker


def test_fastest_weighs_waiting_batches_by_measured_seconds_per_job() -> None:
    infos = {
        Q[0]: QueueInfo(1, sec_per_job=0.5),
        Q[1]: QueueInfo(1, sec_per_job=0.1),
        Q[2]: QueueInfo(1, sec_per_job=0.2),
    }
    r, disp = router("fastest", infos)
    assert r.choose("llm", "m0") == Q[1]
    disp.waiting = {Q[1]: 2}  # 3 x 0.1 > 1 x 0.2
    assert r.choose("llm", "m0") == Q[2]
    infos[Q[0]] = QueueInfo(1)  # never measured: tried first
    r, _ = router("fastest", infos)
    assert r.choose("llm", "m0") == Q[0]


def test_power_of_two_never_picks_the_fuller_of_its_two_samples() -> None:
    r, _ = router("power_of_two", depths={Q[0]: 2, Q[1]: 0, Q[2]: 1})
    got = Counter(picks(r, "m0", 300))
    assert got[Q[0]] == 0  # it is the fuller of any pair it is in
    assert got[Q[1]] > got[Q[2]] > 0


def test_model_affinity_prefers_a_loaded_model_then_a_stable_hash_then_spills() -> None:
    infos = {
        Q[0]: QueueInfo(1, loaded=frozenset({"m1"})),
        Q[1]: QueueInfo(1, loaded=frozenset({"m2"})),
        Q[2]: QueueInfo(1),
    }
    r, disp = router("model_affinity", infos)
    assert picks(r, "m2", 3) == [Q[1]] * 3  # where it is loaded
    home = rendezvous("m3", Q)[0]
    assert picks(r, "m3", 3) == [home] * 3  # loaded nowhere: the hash's choice, every time
    disp.waiting = {Q[1]: 3}  # m2's queue is full: spill to one about to run dry
    assert r.choose("llm", "m2") == rendezvous("m2", [Q[0], Q[2]])[0]
    disp.waiting = {Q[0]: 1, Q[1]: 3, Q[2]: 2}  # and none is: wait, loading nothing
    assert r.choose("llm", "m2") is None
    # a queue that goes away moves only the models it held
    assert rendezvous("m3", [q for q in Q if q != home])[0] in Q


def test_model_affinity_without_heartbeats_is_least_outstanding() -> None:
    r, _ = router("model_affinity", depths={Q[0]: 1, Q[1]: 0, Q[2]: 1})
    assert r.choose("llm", "m0") == Q[1]


def test_a_model_may_set_its_own_strategy() -> None:
    r, _ = router("least_outstanding")
    assert picks(r, "pinned", 3) == Q


def test_queues_without_a_live_worker_are_skipped_while_some_have_one() -> None:
    infos = {Q[1]: QueueInfo(1)}
    r, _ = router("round_robin", infos)
    assert picks(r, "m0", 3) == [Q[1]] * 3


def test_an_open_breaker_takes_no_batch_and_all_open_means_wait() -> None:
    r, _ = router("round_robin")
    r.view.states = {Q[0]: Breaker(Q[0], "open", 3, opened_at=1e18)}
    assert set(picks(r, "m0", 4)) == {Q[1], Q[2]}
    r.view.states = {q: Breaker(q, "open", 3, opened_at=1e18) for q in Q}
    assert r.choose("llm", "m0") is None
