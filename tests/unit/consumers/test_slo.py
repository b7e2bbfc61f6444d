"""Batch limits from a latency target, with a fake clock and a fake engine profile."""

from collections.abc import Sequence

import pytest
import redis

from consumers.dispatch import MemoryDispatcher
from consumers.intake import Intake
from consumers.routing import Router
from consumers.slo import Fit, SloSizer, slo_limits
from pipelines.errors import ConfigError
from pipelines.registry import ModelSpec, Registry, parse_registry
from pipelines.settings import BlazeSettings
from pipelines.stores.deadletters_memory import MemoryDeadLetters
from pipelines.stores.status_memory import MemoryStatusStore
from tests.unit.consumers.test_intake import TOPIC, Clock, FakeSource, Rec, job


class Profile:
    """A fake engine: a call of b jobs takes ``fixed + per_job * b`` seconds; the worker
    reports only the sizes it ran."""

    def __init__(self, fixed: float, per_job: float, sizes: Sequence[int]) -> None:
        self.points = {b: fixed + per_job * b for b in sizes}
        self.reads = 0
        self.down = False

    def read(self, models: Sequence[str]) -> dict[str, dict[int, float]]:
        self.reads += 1
        if self.down:
            raise redis.ConnectionError("redis is down")
        return {m: dict(self.points) for m in models}


def test_the_fit_recovers_the_engines_cost_per_call_and_per_job() -> None:
    fit = Fit.of({1: 0.11, 8: 0.18, 32: 0.42})
    assert fit is not None
    assert fit.fixed == pytest.approx(0.1) and fit.per_job == pytest.approx(0.01)
    # one measured size: read as all per job, which over-estimates larger batches (cautious)
    one = Fit.of({10: 0.5})
    assert one is not None and one.seconds(20) == pytest.approx(1.0)
    assert Fit.of({}) is None


def test_a_third_of_the_target_to_wait_and_the_largest_batch_that_fits_the_rest() -> None:
    fit = Fit(0.1, 0.01)  # 1/3 + 2 * (0.1 + 0.01 b) <= 1.0  ->  b <= 23
    size, wait = slo_limits(fit, 1.0, ceiling=64)
    assert size == 23 and wait == pytest.approx(1 / 3)
    # the memory ceiling caps it
    assert slo_limits(fit, 1.0, ceiling=16) == (16, pytest.approx(1 / 3))
    # a target the engine cannot meet even for one job: batches of one, at once
    assert slo_limits(fit, 0.1, ceiling=64) == (1, pytest.approx(0.001))
    # too slow for a third of the target: batches of one and what two calls leave
    assert slo_limits(Fit(0.3, 0.05), 1.0, ceiling=64) == (1, pytest.approx(0.3))
    # nothing measured yet: the ceiling and half the target
    assert slo_limits(None, 1.0, ceiling=64) == (64, 0.5)


def test_the_sizer_reads_the_profile_at_most_every_refresh_and_keeps_it_when_redis_fails() -> None:
    profile, clock = Profile(0.1, 0.01, [4, 16]), Clock()
    sizer = SloSizer(profile, refresh_s=2.0, clock=clock)
    assert sizer.limits("m", 1.0, 64)[0] == 23
    clock.now = 1.0
    sizer.limits("m", 1.0, 64)
    assert profile.reads == 1
    profile.down, clock.now = True, 3.0
    assert sizer.limits("m", 1.0, 64)[0] == 23  # the last fit stands
    assert profile.reads == 2


REGISTRY = Registry(
    {
        "slo": ModelSpec(name="slo", max_batch_size=64, max_latency_s=1.0),
        "fixed": ModelSpec(name="fixed", max_batch_size=64, max_wait_s=0.5),
    }
)
SETTINGS = BlazeSettings(batch={"quiet_s": 0.03, "max_queued_batches": 1})


def make(clock: Clock, source: FakeSource, profile: Profile) -> tuple[Intake, MemoryDispatcher]:
    disp = MemoryDispatcher()
    router = Router(SETTINGS, REGISTRY, disp, "round_robin")  # type: ignore[arg-type]
    intake = Intake(
        SETTINGS,
        source,
        disp,
        MemoryDeadLetters(),
        MemoryStatusStore(),
        router,
        REGISTRY,
        clock,
        sizer=SloSizer(profile, clock=clock),
    )
    return intake, disp


def recs(values: list[bytes], first: int = 0) -> dict[object, list[Rec]]:
    return {"p0": [Rec(TOPIC, 0, first + i, v) for i, v in enumerate(values)]}


def sizes(disp: MemoryDispatcher) -> list[int]:
    return [len(p["jobs"]) for _, p in disp.sent]


def test_under_light_load_a_job_leaves_at_once() -> None:
    clock = Clock()
    src = FakeSource([recs([job("a", "slo")]), {}])
    intake, disp = make(clock, src, Profile(0.1, 0.01, [1, 8]))
    intake.step()
    clock.now = 0.03  # the worker queue is empty: no reason to wait for mates
    intake.step()
    assert sizes(disp) == [1]


def test_under_a_backlog_batches_grow_to_the_largest_size_that_meets_the_target() -> None:
    clock = Clock()
    backlog = [job(f"j{i}", "slo") for i in range(100)] + [job(f"f{i}", "fixed") for i in range(3)]
    src = FakeSource([recs(backlog[:50]), recs(backlog[50:], 50)])
    intake, disp = make(clock, src, Profile(0.095, 0.01, [1, 8, 16]))
    for _ in range(4):  # the worker takes each batch as it comes
        intake.step()
        disp.waiting.clear()
    # 100 jobs: batches of 23 (1/3 + 2 x 0.325 s <= 1 s); the rest waits for its window
    assert sizes(disp) == [23, 23, 23, 23]
    disp.waiting[SETTINGS.queue("llm", "cpu")] = 1  # busy: nothing leaves early
    clock.now = 0.05
    intake.step()
    assert len(intake.batcher) == 8 + 3
    clock.now = 0.34  # the window: a third of the target
    intake.step()
    assert len(intake.batcher) == 3  # the fixed model's 3 wait for its own window (0.5 s)
    assert [len(b) for b in intake.ready] == [8]  # the rest left, and waits for room


def test_a_batch_leaves_when_the_worker_frees_up_though_jobs_keep_joining_it() -> None:
    clock = Clock()
    queue = SETTINGS.queue("llm", "cpu")
    polls = [recs([job(f"j{i}", "slo")], i) for i in range(13)]
    src = FakeSource(polls)
    intake, disp = make(clock, src, Profile(0.1, 0.01, [1, 8, 16]))
    disp.waiting[queue] = 1  # the worker is busy
    for i in range(10):  # a job every 10 ms, quicker than quiet_s: never quiet
        clock.now = i * 0.01
        intake.step()
    assert sizes(disp) == []
    disp.waiting.clear()  # the worker took the batch ahead
    for i in range(10, 13):  # asked every quiet_s: at 0.09 (busy), then 0.12
        clock.now = i * 0.01
        intake.step()
    assert sizes(disp) == [13]  # left at the first ask after the queue emptied, not at 1/3 s


def test_a_slower_engine_gets_smaller_batches() -> None:
    clock = Clock()
    src = FakeSource([recs([job(f"j{i}", "slo") for i in range(64)])])
    intake, disp = make(clock, src, Profile(0.2, 0.05, [1, 4]))  # 1/3 + 2 (0.2 + 0.05 b) <= 1
    intake.step()
    assert sizes(disp)[0] == 2


def test_a_target_and_a_window_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="max_latency_s replaces max_wait_s"):
        parse_registry({"models": {"m": {"max_latency_s": 1, "max_wait_s": 0.5}}}, "reg.yaml")
