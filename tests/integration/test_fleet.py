"""The fleet heals itself on the real stack: poison jobs, dead workers, breakers, deadlines."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.client import Client
from pipelines.fleet import Breakers
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores import connect
from pipelines.stores.status import JobState
from tests.conftest import settings_env
from tests.integration.conftest import Supervisor, running_intake, running_worker
from tests.integration.fleet_engines import MARKER

pytestmark = pytest.mark.integration
ENGINES = "tests.integration.fleet_engines"


def with_models(settings: BlazeSettings, **models: dict[str, Any]) -> BlazeSettings:
    settings.registry_file.write_text(yaml.safe_dump({"models": models}))
    return settings


def fleet(settings: BlazeSettings, **changes: Any) -> BlazeSettings:
    return settings.model_copy(update={"fleet": settings.fleet.model_copy(update=changes)})


def until(check: Callable[[], bool], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


@pytest.mark.parametrize("in_hand", [1, 2])
def test_a_poison_job_is_dead_lettered_and_the_rest_of_its_batch_succeeds(
    settings: BlazeSettings, tmp_path: Path, in_hand: int
) -> None:
    """A job that kills its worker (os._exit) is tried alone after 2 deaths and dead-lettered
    after 3; the other jobs of its batch succeed and the restarted worker serves new batches.
    Celery's visibility timeout stays at its default (an hour): the leases bring it back.
    With two batches in hand, the batch held beside the poison one counts no death, and the
    poison job's run alone has nothing beside it."""
    settings = with_models(
        fleet(settings, lease_s=3, reap_every_s=0.5), poison={"engine": f"{ENGINES}:poison"}
    )
    worker = settings.worker.model_copy(update={"batches_in_hand": in_hand})
    settings = settings.model_copy(update={"worker": worker})
    assert settings.worker.visibility_timeout_s == 3600
    jobs = [LLMJob(model="poison", prompt=f"job {i}") for i in range(7)]
    jobs.insert(3, LLMJob(model="poison", prompt=MARKER))
    ids = [j.job_id for j in jobs]
    with (
        running_intake(settings),
        Client(settings) as client,
        Supervisor(settings, tmp_path) as sup,
    ):
        client.submit_many(jobs)
        final = client.wait(ids, timeout=150)
        states = {jid: st.state for jid, st in final.items() if st is not None}
        bad = jobs[3].job_id
        assert states.pop(bad) is JobState.DEAD, sup.log_tail()
        assert set(states.values()) == {JobState.SUCCEEDED}
        poisoned = final[bad]
        assert poisoned is not None and "worker died while running this job" in poisoned.reason
        assert sup.exits.count(17) == 3  # twice in its batch, once alone
        # the restarted worker serves other batches
        more = [LLMJob(model="poison", prompt=f"after {i}") for i in range(4)]
        client.submit_many(more)
        after = client.wait([j.job_id for j in more], timeout=60)
        assert {s.state for s in after.values() if s} == {JobState.SUCCEEDED}
    letters = [
        letter.body
        for letter in connect.dead_letters(settings).read(idle_s=2)
        if letter.body.get("job_id") == bad
    ]
    assert len(letters) == 1 and letters[0]["stage"] == "worker"
    assert "worker died while running this job" in letters[0]["reason"]


def test_an_engine_that_fails_every_batch_opens_its_breaker_and_closes_once_fixed(
    settings: BlazeSettings, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.touch()
    settings = with_models(
        fleet(
            settings,
            breaker_failures=2,
            breaker_cooldown_s=10,
            engine_retries=1,
            retry_backoff_s=0.1,
        ),
        faulty={"engine": f"{ENGINES}:faulty", "source": str(broken), "max_batch_size": 1},
    )
    queue = settings.queue("llm", "cpu")
    breakers = Breakers(settings)
    log = tmp_path / "worker.log"
    with running_intake(settings), Client(settings) as client, running_worker(settings, log):
        first = [LLMJob(model="faulty", prompt=f"a{i}") for i in range(2)]
        client.submit_many(first)
        done = client.wait([j.job_id for j in first], timeout=60)
        assert {s.state for s in done.values() if s} == {JobState.FAILED}
        until(lambda: breakers.states([queue])[queue].state == "open", log)
        time.sleep(1.2)  # consumers read breakers once a second
        # while it is open, new jobs wait instead of failing
        waiting = [LLMJob(model="faulty", prompt=f"b{i}") for i in range(3)]
        client.submit_many(waiting)
        time.sleep(1.5)
        assert {s.state for s in client.status([j.job_id for j in waiting]).values() if s} <= {
            JobState.QUEUED
        }
        shown = subprocess.run(
            [sys.executable, "-m", "blaze", "workers", "--json"],
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        (worker,) = json.loads(shown.stdout)
        assert worker["breakers"][queue]["state"] == "open"
        assert "engine failed the whole batch" in worker["breakers"][queue]["reason"]
        broken.unlink()  # fixed: the probe after the cooldown succeeds and closes it
        done = client.wait([j.job_id for j in waiting], timeout=60)
        assert {s.state for s in done.values() if s} == {JobState.SUCCEEDED}
        until(lambda: breakers.states([queue])[queue].state == "closed", log)
    failed = {
        letter.body.get("job_id")
        for letter in connect.dead_letters(settings).read(idle_s=2)
        if letter.body.get("stage") == "worker"
    }
    assert failed == {j.job_id for j in first}


def test_a_job_whose_deadline_passes_in_a_worker_queue_is_not_run(
    settings: BlazeSettings, tmp_path: Path
) -> None:
    settings = with_models(settings, fast={"engine": "echo"})
    soon = datetime.now(UTC) + timedelta(seconds=10)
    late = LLMJob(model="fast", prompt="late", deadline=soon)
    fine = LLMJob(model="fast", prompt="fine")
    with running_intake(settings), Client(settings) as client:
        client.submit_many([late, fine])
        deadline = time.monotonic() + 30
        while client.status([late.job_id])[late.job_id].state is not JobState.BATCHED:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.5)
        with running_worker(settings):
            final = client.wait([late.job_id, fine.job_id], timeout=60)
    st = final[late.job_id]
    assert st is not None and st.state is JobState.DEAD
    assert "passed while queued for a worker" in st.reason
    assert final[fine.job_id].state is JobState.SUCCEEDED  # type: ignore[union-attr]


def test_urgent_jobs_overtake_a_backlog(settings: BlazeSettings, tmp_path: Path) -> None:
    """2,000 jobs of priority 0 wait; 20 of priority 9 are submitted after them. The urgent
    ones finish before 10 % of the backlog has."""
    settings = with_models(settings, fast={"engine": "echo", "max_batch_size": 16})
    backlog = [LLMJob(model="fast", prompt=f"b{i}", priority=0) for i in range(2000)]
    urgent = [LLMJob(model="fast", prompt=f"u{i}", priority=9) for i in range(20)]
    with running_intake(settings), Client(settings) as client:
        client.submit_many(backlog)
        client.submit_many(urgent)
        with running_worker(settings, tmp_path / "worker.log"):
            final = client.wait([j.job_id for j in backlog + urgent], timeout=300)
    assert {s.state for s in final.values() if s} == {JobState.SUCCEEDED}
    ended = {jid: s.times["succeeded"] for jid, s in final.items() if s}
    last_urgent = max(ended[j.job_id] for j in urgent)
    before = sum(ended[j.job_id] < last_urgent for j in backlog)
    print(f"\n[priorities] backlog done when the last urgent job ended: {before / 20:.1f} %")
    assert before < 200


def test_a_worker_whose_device_will_not_reload_stops_and_its_batch_waits_for_another(
    settings: BlazeSettings, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.touch()
    settings = with_models(
        fleet(settings, engine_retries=1, retry_backoff_s=0.1),
        gpu={"engine": f"{ENGINES}:lost", "source": str(broken)},
    )
    log = tmp_path / "worker-1.log"
    jobs = [LLMJob(model="gpu", prompt=f"g{i}") for i in range(3)]
    ids = [j.job_id for j in jobs]
    with running_intake(settings), Client(settings) as client:
        with running_worker(settings, log) as proc:
            client.submit_many(jobs)
            assert proc.wait(60) == 3, log.read_text()[-3000:]
        text = log.read_text()
        assert "device lost" in text and "reload failed" in text
        assert not any(s and s.state.terminal for s in client.status(ids).values())
        broken.unlink()  # a new worker (or the same after a supervisor restart) on a good device
        with running_worker(settings, tmp_path / "worker-2.log"):
            final = client.wait(ids, timeout=60)
    assert {s.state for s in final.values() if s} == {JobState.SUCCEEDED}
