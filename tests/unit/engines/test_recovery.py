"""Retries, reloads and a lost device around one engine call; worker-side deadlines and
dead letters in the runner."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engines.base import Output
from engines.cache import EngineCache
from engines.isolate import error_kind
from engines.recovery import DeviceLost, run_with_retries
from engines.runner import BatchRunner
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.deadletters_memory import MemoryDeadLetters
from pipelines.stores.results_memory import MemoryResultStore
from pipelines.stores.status import JobState
from pipelines.stores.status_memory import MemoryStatusStore
from pipelines.tasks import batch_payload


class Script:
    """An engine whose run raises the next scripted error (None: answer) per call."""

    loads = 0

    def __init__(self, name: str, errors: list[BaseException | None], fail_load_after: int = 99):
        self.name = name
        self.errors = errors
        self.fail_load_after = fail_load_after
        self.runs: list[int] = []

    def load(self, device: str) -> None:
        Script.loads += 1
        if Script.loads > self.fail_load_after:
            raise RuntimeError("no device")

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        self.runs.append(len(batch))
        err = self.errors.pop(0) if self.errors else None
        if err is not None:
            raise err
        return [Output(text=j.prompt, finish_reason="stop") for j in batch]

    def describe(self) -> dict[str, Any]:
        return {"model": self.name}


def cache_of(engine: Script) -> EngineCache:
    Script.loads = 0
    return EngineCache(lambda _name: engine, "cpu")


def jobs(n: int) -> list[LLMJob]:
    return [LLMJob(model="m", prompt=f"p{i}") for i in range(n)]


def test_errors_are_classified_by_whose_fault_they_are() -> None:
    assert error_kind(ValueError("prompt too long")) == "input"
    assert error_kind(RuntimeError("CUDA error: an illegal memory access")) == "device"
    assert error_kind(MemoryError()) == "oom"
    assert error_kind(RuntimeError("probability tensor contains either `inf`, `nan`")) == "device"
    assert error_kind(RuntimeError("something else")) == "other"


def test_a_transient_error_is_retried_with_backoff_until_it_passes() -> None:
    engine = Script("m", [RuntimeError("flaky"), RuntimeError("flaky"), RuntimeError("flaky")])
    slept: list[float] = []
    # one batch call, then each half alone fails again, then the retry passes
    got = run_with_retries(
        cache_of(engine), "m", jobs(2), retries=2, backoff_s=0.5, sleep=slept.append
    )
    assert [o.text for o in got.outputs] == ["p0", "p1"] and not got.device_failed
    assert slept == [0.5] and got.retried == 2


def test_retries_are_bounded_and_a_job_s_own_error_is_not_retried() -> None:
    engine = Script("m", [RuntimeError("down")] * 20)
    slept: list[float] = []
    got = run_with_retries(
        cache_of(engine), "m", jobs(1), retries=2, backoff_s=1, sleep=slept.append
    )
    assert got.outputs[0].error and got.device_failed and slept == [1, 2]
    engine = Script("m", [ValueError("does not fit")])
    got = run_with_retries(
        cache_of(engine), "m", jobs(1), retries=2, backoff_s=1, sleep=slept.append
    )
    assert got.outputs[0].error_kind == "input" and not got.device_failed and engine.runs == [1]


def test_a_device_error_reloads_the_engine_and_a_failed_reload_loses_the_device() -> None:
    engine = Script("m", [RuntimeError("CUDA error: unspecified launch failure")])
    cache = cache_of(engine)
    got = run_with_retries(cache, "m", jobs(1), retries=1, backoff_s=0, sleep=lambda _s: None)
    assert got.outputs[0].text == "p0" and Script.loads == 2  # loaded, reloaded, rerun
    engine = Script("m", [RuntimeError("CUDA error: device lost")], fail_load_after=1)
    with pytest.raises(DeviceLost, match="reload failed"):
        run_with_retries(cache_of(engine), "m", jobs(1), retries=1, backoff_s=0)


def test_the_runner_dead_letters_failed_jobs_and_ends_late_ones_unrun() -> None:
    settings = BlazeSettings(namespace="unit", fleet={"engine_retries": 0})
    engine = Script("m", [ValueError("bad input")])
    status, dead = MemoryStatusStore(), MemoryDeadLetters()
    runner = BatchRunner(settings, MemoryResultStore(), status, cache_of(engine), dead_letters=dead)
    late = LLMJob(model="m", prompt="late", deadline=datetime.now(UTC) - timedelta(seconds=1))
    bad = LLMJob(model="m", prompt="bad")
    payload = batch_payload(
        [j.model_dump(mode="json") for j in (late, bad)], batch_id="b" * 32, queued_at=0
    )
    summary = runner.run(payload)
    assert summary["failed"] == 1 and summary["skipped"] == 1
    st = status.get([late.job_id, bad.job_id])
    assert st[late.job_id].state is JobState.DEAD  # type: ignore[union-attr]
    assert "passed while queued for a worker" in st[late.job_id].reason  # type: ignore[union-attr]
    assert st[bad.job_id].state is JobState.FAILED  # type: ignore[union-attr]
    assert engine.runs == [1]  # the late job never reached the engine
    letters = {d.job_id: d for d in dead.letters}
    assert set(letters) == {late.job_id, bad.job_id}
    assert {d.stage for d in letters.values()} == {"worker"}
    assert "bad input" in letters[bad.job_id].reason
