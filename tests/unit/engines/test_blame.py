"""Whom a worker's death blames when it holds several batches: only a batch on its engine
is marked (``Leases.on_engine``), and a batch sent back to run alone runs with no other engine
call of the worker beside it (``EngineCache.turn``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from engines.base import Output
from engines.cache import EngineCache
from engines.runner import BatchRunner
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.results_memory import MemoryResultStore
from pipelines.stores.status_memory import MemoryStatusStore
from pipelines.tasks import batch_payload

SETTINGS = BlazeSettings(namespace="unit")


class Held:
    """A concurrent engine whose calls stay inside until their prompt's event is set."""

    concurrent = True

    def __init__(self) -> None:
        self.name = "m"
        self.inside: list[str] = []
        self.release: dict[str, threading.Event] = {}

    def load(self, device: str) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"model": "m"}

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        name = batch[0].prompt or ""
        self.inside.append(name)
        self.release.setdefault(name, threading.Event()).wait(10)
        self.inside.remove(name)
        return [Output(text="ok", finish_reason="stop") for _ in batch]


def test_an_alone_call_waits_for_the_running_ones_and_keeps_new_ones_out() -> None:
    engine = Held()
    cache = EngineCache(lambda model: engine, "cpu")
    entered = {n: threading.Event() for n in ("a", "alone", "c")}

    def call(name: str, alone: bool) -> None:
        with cache.turn("m", engine, alone):
            entered[name].set()
            engine.run([LLMJob(model="m", prompt=name)])

    for n in entered:
        engine.release[n] = threading.Event()
    a = threading.Thread(target=call, args=("a", False))
    a.start()
    assert entered["a"].wait(5)
    lone = threading.Thread(target=call, args=("alone", True))
    lone.start()
    while not cache._gate._waiting:  # the alone call waits for "a" to leave
        time.sleep(0.01)
    c = threading.Thread(target=call, args=("c", False))
    c.start()
    assert not entered["alone"].wait(0.3) and not entered["c"].is_set()
    engine.release["a"].set()
    assert entered["alone"].wait(5)
    assert not entered["c"].wait(0.3)  # nothing starts beside an alone call
    assert engine.inside == ["alone"]
    engine.release["alone"].set()
    assert entered["c"].wait(5)
    engine.release["c"].set()
    for t in (a, lone, c):
        t.join(5)
    assert engine.inside == []


class Marks:
    """Records which batches are marked on the engine, as ``Leases.on_engine`` would."""

    def __init__(self) -> None:
        self.now: set[str] = set()

    @contextmanager
    def on_engine(self, batch_id: str, holder: str) -> Iterator[None]:
        self.now.add(batch_id)
        try:
            yield
        finally:
            self.now.discard(batch_id)


def test_a_batch_is_marked_while_its_engine_runs_and_an_alone_one_runs_exclusively() -> None:
    seen: list[tuple[set[str], bool]] = []
    marks = Marks()

    class Echo:
        name = "m"

        def load(self, device: str) -> None: ...

        def describe(self) -> dict[str, Any]:
            return {"model": "m"}

        def run(self, batch: Sequence[LLMJob]) -> list[Output]:
            seen.append((set(marks.now), cache._gate._exclusive))
            return [Output(text="ok", finish_reason="stop") for _ in batch]

    cache = EngineCache(lambda model: Echo(), "cpu")
    runner = BatchRunner(
        SETTINGS,
        MemoryResultStore(),
        MemoryStatusStore(),
        cache,
        leases=marks,  # type: ignore[arg-type]
    )
    jobs = [LLMJob(model="m", prompt="x"), LLMJob(model="m", prompt="y")]
    runner.run(batch_payload([j.model_dump(mode="json") for j in jobs], batch_id="b1", queued_at=0))
    one = LLMJob(model="m", prompt="z")
    runner.run(batch_payload([one.model_dump(mode="json")], batch_id="b2", queued_at=0, alone=True))
    assert seen == [({"b1"}, False), ({"b2"}, True)]
    assert marks.now == set()  # unmarked once the engine returned
