"""The reaper on the real Redis, with batches laid out as kombu leaves them in ``unacked``."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from consumers.dispatch import MemoryDispatcher
from consumers.reaper import UNACKED, UNACKED_INDEX, Reaper
from pipelines.fleet import Breakers, Leases
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.deadletters_memory import MemoryDeadLetters
from pipelines.stores.redis_client import redis_client
from pipelines.stores.status import JobState
from pipelines.stores.status_memory import MemoryStatusStore
from pipelines.tasks import batch_payload


def taken(settings: BlazeSettings, tag: str, payload: dict[str, Any], age_s: float) -> None:
    """A batch a worker took ``age_s`` ago and never acknowledged, in kombu's layout."""
    queue = settings.queue("llm", "cpu")
    body = base64.b64encode(json.dumps([[payload], {}, {}]).encode()).decode()
    message = {
        "body": body,
        "headers": {"task": "blaze.run_batch", "id": tag},
        "properties": {"body_encoding": "base64", "delivery_tag": tag, "priority": 4},
    }
    client = redis_client(settings)
    client.hset(UNACKED, tag, json.dumps([message, queue, queue]))
    client.zadd(UNACKED_INDEX, {tag: time.time() - age_s})
    client.close()


def batch(n: int, batch_id: str) -> tuple[list[LLMJob], dict[str, Any]]:
    jobs = [LLMJob(model="m", prompt=f"p{i}") for i in range(n)]
    return jobs, batch_payload(
        [j.model_dump(mode="json") for j in jobs], batch_id=batch_id, queued_at=0
    )


def reaper(
    settings: BlazeSettings,
) -> tuple[Reaper, MemoryDispatcher, MemoryStatusStore, MemoryDeadLetters]:
    disp, status, dead = MemoryDispatcher(), MemoryStatusStore(), MemoryDeadLetters()
    return Reaper(settings, disp, status, dead), disp, status, dead


def test_a_dead_workers_batch_goes_back_whole_and_a_live_ones_stays(
    settings: BlazeSettings,
) -> None:
    r, disp, status, _ = reaper(settings)
    jobs, dead_one = batch(3, "a" * 32)
    _, live_one = batch(2, "b" * 32)
    _, new_one = batch(2, "c" * 32)
    taken(settings, "tag-dead", dead_one, age_s=30)
    taken(settings, "tag-live", live_one, age_s=30)
    taken(settings, "tag-new", new_one, age_s=1)  # its worker may not have leased it yet
    leases = Leases(settings)
    leases.hold("b" * 32, "worker-1")
    with leases.on_engine("a" * 32, "worker-0"):  # it was on its engine when the worker died
        assert r.reap() == 1
    assert [(q, p["batch_id"], len(p["jobs"])) for q, p in disp.sent] == [
        (settings.queue("llm", "cpu"), "a" * 32, 3)
    ]
    client = redis_client(settings)
    left = {t.decode() for t in client.hkeys(UNACKED)}
    assert "tag-dead" not in left and {"tag-live", "tag-new"} <= left
    assert status.deaths == {j.job_id: 1 for j in jobs}
    queue = settings.queue("llm", "cpu")
    assert Breakers(settings).states([queue])[queue].failures == 1
    client.hdel(UNACKED, "tag-live", "tag-new")
    client.close()


def test_poison_jobs_go_back_alone_then_are_dead_lettered(settings: BlazeSettings) -> None:
    r, disp, status, dead = reaper(settings)
    jobs, payload = batch(3, "d" * 32)
    status.deaths = {jobs[0].job_id: 1, jobs[1].job_id: 2}
    taken(settings, "tag-poison", payload, age_s=30)
    with Leases(settings).on_engine("d" * 32, "worker-0"):
        r.reap()
    # job 0: 2 deaths now, alone; job 1: 3, dead; job 2: 1, with the rest
    sent = [[j["job_id"] for j in p["jobs"]] for _, p in disp.sent]
    assert sent == [[jobs[0].job_id], [jobs[2].job_id]]
    assert all(p["batch_id"] != "d" * 32 for _, p in disp.sent)  # split: new batch ids
    assert [p.get("alone", False) for _, p in disp.sent] == [True, False]
    (letter,) = dead.letters
    assert letter.job_id == jobs[1].job_id and letter.stage == "worker"
    assert letter.reason == "worker died while running this job (3 times)"
    st = status.get([jobs[1].job_id])[jobs[1].job_id]
    assert st is not None and st.state is JobState.DEAD


def test_a_batch_past_its_timeout_counts_once_against_its_breaker(
    settings: BlazeSettings,
) -> None:
    fleet = settings.fleet.model_copy(update={"batch_timeout_s": 60})
    settings = settings.model_copy(update={"fleet": fleet})
    r, disp, _, _ = reaper(settings)
    _, payload = batch(1, "e" * 32)
    taken(settings, "tag-slow", payload, age_s=120)
    Leases(settings).hold("e" * 32, "worker-1")
    r.reap()
    r._next = 0  # look again at once
    r.client.delete(r.lock)
    r.reap()
    queue = settings.queue("llm", "cpu")
    assert disp.sent == []  # it keeps running
    assert Breakers(settings).states([queue])[queue].failures == 1
    r.client.hdel(UNACKED, "tag-slow")


def test_a_batch_held_beside_the_one_on_the_engine_goes_back_as_it_was(
    settings: BlazeSettings,
) -> None:
    """A worker holding two batches dies: the one on its engine counts the death, the one
    waiting for its turn goes back unchanged (same id, same payload) and counts nothing."""
    r, disp, status, _ = reaper(settings)
    culprit_jobs, culprit = batch(2, "f" * 32)
    waiting_jobs, waiting = batch(2, "9" * 32)
    waiting["versions"] = {waiting_jobs[0].job_id: "m@2"}
    waiting["priority"] = 7
    taken(settings, "tag-engine", culprit, age_s=30)
    taken(settings, "tag-waiting", waiting, age_s=30)
    leases = Leases(settings)
    client = redis_client(settings)
    with leases.on_engine("f" * 32, "worker-0"):
        assert r.reap() == 2
        # the reaper drops the mark with the taken copy: a later death is read afresh
        assert client.exists(leases.engine_prefix + "f" * 32) == 0
    assert status.deaths == {j.job_id: 1 for j in culprit_jobs}
    back = {p["batch_id"]: p for _, p in disp.sent}
    assert back["9" * 32]["jobs"] == waiting["jobs"]
    assert back["9" * 32]["versions"] == {waiting_jobs[0].job_id: "m@2"}
    assert back["9" * 32]["priority"] == 7
    queue = settings.queue("llm", "cpu")
    assert Breakers(settings).states([queue])[queue].failures == 1  # one death, one failure
    assert not {t.decode() for t in client.hkeys(UNACKED)} & {"tag-engine", "tag-waiting"}
    client.close()


def test_a_split_batch_keeps_what_it_said_of_each_job(settings: BlazeSettings) -> None:
    """Parts sent back keep their jobs' versions, traces and cache keys and the batch's
    priority; a job at ``alone_after_deaths`` goes back marked alone, even from a batch of
    one."""
    r, disp, status, _ = reaper(settings)
    jobs, payload = batch(2, "7" * 32)
    a, b = (j.job_id for j in jobs)
    payload.update(
        versions={a: "m@3", b: "m@2"},
        traces={a: "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
        cache_keys={b: "k-b"},
        priority=8,
    )
    status.deaths = {a: 1}
    single_jobs, single = batch(1, "8" * 32)
    status.deaths[single_jobs[0].job_id] = 1
    taken(settings, "tag-split", payload, age_s=30)
    taken(settings, "tag-single", single, age_s=30)
    leases = Leases(settings)
    with leases.on_engine("7" * 32, "w"), leases.on_engine("8" * 32, "w"):
        r.reap()
    parts = {tuple(j["job_id"] for j in p["jobs"]): p for _, p in disp.sent}
    alone, rest = parts[(a,)], parts[(b,)]
    assert alone["alone"] is True and "alone" not in rest
    assert alone["versions"] == {a: "m@3"} and rest["versions"] == {b: "m@2"}
    assert set(alone["traces"]) == {a} and "traces" not in rest
    assert rest["cache_keys"] == {b: "k-b"} and "cache_keys" not in alone
    assert alone["priority"] == rest["priority"] == 8
    assert "shadow" not in alone and "shadow" not in rest
    one = parts[(single_jobs[0].job_id,)]
    assert one["alone"] is True and one["batch_id"] == "8" * 32  # nothing split off: same id


def test_a_dead_workers_shadow_batch_is_dropped_and_counts_nothing(
    settings: BlazeSettings,
) -> None:
    r, disp, status, dead = reaper(settings)
    _, payload = batch(2, "6" * 32)
    payload["shadow"] = "m@2"
    taken(settings, "tag-shadow", payload, age_s=30)
    with Leases(settings).on_engine("6" * 32, "w"):
        assert r.reap() == 1
    assert disp.sent == [] and status.deaths == {} and dead.letters == []
    queue = settings.queue("llm", "cpu")
    assert Breakers(settings).states([queue])[queue].failures == 0
    client = redis_client(settings)
    assert "tag-shadow" not in {t.decode() for t in client.hkeys(UNACKED)}
    client.close()
