"""Hand-offs on the real Redis: idle marks, and a batch that would wait for its engine going
to an idle worker (``engines.handoff``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from engines.base import Output
from engines.cache import EngineCache
from engines.handoff import MAX_HANDOFFS, Handoff
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.redis_client import redis_client
from pipelines.tasks import batch_payload


class Echo:
    concurrent = False

    def __init__(self, name: str) -> None:
        self.name = name

    def load(self, device: str) -> None: ...

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        return [Output(text="ok") for _ in batch]


class Flowing(Echo):
    concurrent = True


def several(settings: BlazeSettings, n: int = 2) -> BlazeSettings:
    return settings.model_copy(
        update={"worker": settings.worker.model_copy(update={"batches_in_hand": n})}
    )


def payload(batch_id: str, model: str = "m") -> dict[str, Any]:
    job = LLMJob(model=model, prompt="x").model_dump(mode="json")
    return batch_payload([job], batch_id=batch_id, queued_at=0)


def handoffs(settings: BlazeSettings, cache: EngineCache) -> tuple[Handoff, Handoff, str]:
    queue = settings.queue("llm", "cpu")
    client = redis_client(settings)
    return (
        Handoff(settings, client, cache, "host:1:cpu", [queue]),
        Handoff(settings, client, EngineCache(Echo, "cpu"), "host:2:cpu", [queue]),
        queue,
    )


def test_a_worker_is_listed_idle_only_while_it_holds_no_batch(settings: BlazeSettings) -> None:
    settings = several(settings)
    me, peer, queue = handoffs(settings, EngineCache(Echo, "cpu"))
    assert not me.idle_peers(queue)
    peer.start(time.time())
    assert me.idle_peers(queue) and not peer.idle_peers(queue)  # never itself
    peer.took()
    peer.took()
    peer.ended(time.time())  # one of two ended: still busy
    assert not me.idle_peers(queue)
    peer.ended(time.time())
    assert me.idle_peers(queue)
    peer._mark(True, time.time() - settings.fleet.lease_s - 1)  # a worker gone while idle
    assert not me.idle_peers(queue)
    peer.stop()
    assert not me.idle_peers(queue)


def test_a_batch_waiting_for_a_busy_engine_goes_to_an_idle_worker(
    settings: BlazeSettings,
) -> None:
    settings = several(settings)
    cache = EngineCache(Echo, "cpu")
    engine = cache.get("m")
    me, peer, queue = handoffs(settings, cache)
    me.took()  # the batch on the engine
    me.took()  # the one that arrives
    held, release, done = threading.Event(), threading.Event(), threading.Event()

    def on_engine() -> None:
        with cache.turn("m", engine):
            held.set()
            release.wait(10)

    runner = threading.Thread(target=on_engine)
    runner.start()
    assert held.wait(5)
    answer: list[bool] = []
    waiter = threading.Thread(
        target=lambda: (answer.append(me.give_back(payload("a" * 32), queue)), done.set())
    )
    waiter.start()
    assert not done.wait(0.5)  # no idle worker: it waits for the engine
    peer.start(time.time())
    assert done.wait(5) and answer == [True]  # an idle worker appeared: handed over
    # a batch handed back this often runs here even with a worker listed idle (it may be gone)
    for _ in range(MAX_HANDOFFS):
        assert me.give_back(payload("b" * 32), queue)
    assert me.give_back(payload("b" * 32), queue) is False
    release.set()
    runner.join(5)
    waiter.join(5)
    # the engine is free: nothing to wait for, even with a worker idle
    assert me.give_back(payload("c" * 32), queue) is False
    peer.stop()


def test_a_continuous_engine_takes_its_rows_in_unless_a_worker_is_idle(
    settings: BlazeSettings,
) -> None:
    settings = several(settings)
    cache = EngineCache(Flowing, "cpu")
    cache.get("m")
    me, peer, queue = handoffs(settings, cache)
    me.took()
    me.took()
    assert me.give_back(payload("d" * 32), queue) is False  # at once: it joins the running batch
    peer.start(time.time())
    assert me.give_back(payload("e" * 32), queue) is True
    peer.stop()


def test_one_batch_in_hand_or_an_alone_batch_never_goes_back(settings: BlazeSettings) -> None:
    cache = EngineCache(Flowing, "cpu")
    cache.get("m")
    one, peer, queue = handoffs(several(settings, 1), cache)
    peer.start(time.time())
    one.took()
    one.took()
    assert one.give_back(payload("f" * 32), queue) is False  # batches_in_hand 1
    two, _, _ = handoffs(several(settings), cache)
    two.took()
    two.took()
    alone = {**payload("7" * 32), "alone": True}
    assert two.give_back(alone, queue) is False
    assert two.give_back(payload("8" * 32, model="not-loaded"), queue) is False
    peer.stop()
