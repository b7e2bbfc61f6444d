"""What the Redis status store adds to the contract: jobs spread over every slot of a Redis
Cluster (and of one Redis) in one call, a group counted in a second, idempotent step that a
repeat makes whole, and scripts given again to a server that lost them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from pipelines.errors import ServiceUnavailable
from pipelines.stores.status import JobState, StatusUpdate
from pipelines.stores.status_redis import RedisStatusStore, group_key, job_key
from tests.contract.conftest import Recorder, redis_status

S = JobState


@pytest.fixture(params=["redis", "redis-cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[RedisStatusStore]:
    made = redis_status(request, Recorder())
    yield made
    made.close()


def test_a_call_over_every_node_settles_each_job_once_and_completes_its_group_once(
    store: RedisStatusStore,
) -> None:
    ids = [f"job-{i}" for i in range(600)]  # past one script chunk (500)
    store.open_group("big", len(ids))
    store.update([StatusUpdate(j, S.QUEUED, group="big", kind="llm") for j in ids])
    claims = store.claim(ids, 1.0)
    assert all(c.claimed and c.attempts == 1 for c in claims.values())
    ends = [StatusUpdate(j, S.SUCCEEDED if i % 3 else S.FAILED, "x") for i, j in enumerate(ids)]
    applied = store.update(ends)
    assert applied.groups_done == {"big"} and len(applied.moved) == len(ids)
    assert store.update(ends).groups_done == set()  # a repeat counts nothing twice
    progress = store.group_progress("big")
    assert (progress.done, progress.counts) == (600, {"succeeded": 400, "failed": 200})
    assert set(store.states(ids).values()) == {S.SUCCEEDED, S.FAILED}
    if isinstance(store.client, redis.RedisCluster):  # the jobs did spread over every node
        nodes = {store.client.get_node_from_key(job_key(store.ns, j)).name for j in ids}
        assert len(nodes) == 3
    # a job's keys and its group's keys each sit in one slot
    assert group_key(store.ns, "big").endswith("{big}") and job_key("n", "a").endswith("{a}")


def test_a_group_count_lost_between_round_trips_is_made_whole_by_a_repeat(
    store: RedisStatusStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.open_group("g", 2)
    store.update([StatusUpdate(j, S.QUEUED, group="g") for j in "ab"])
    assert store.update([StatusUpdate("a", S.SUCCEEDED)]).groups_done == set()
    real = store._count

    def lost(*args: object) -> set[str]:
        raise redis.ConnectionError("connection reset after the job's script ran")

    monkeypatch.setattr(store, "_count", lost)
    with pytest.raises(ServiceUnavailable):  # the worker hears of it and does not ack
        store.update([StatusUpdate("b", S.SUCCEEDED)])
    monkeypatch.setattr(store, "_count", real)
    assert store.states(["b"])["b"] is S.SUCCEEDED
    assert store.group_progress("g").done == 1  # b ended, its group has not heard yet
    # the redelivered batch: the claim is refused (b ended) and the group hears of b
    claim = store.claim(["b"], 2.0)
    assert not claim["b"].claimed and claim["b"].state is S.SUCCEEDED
    progress = store.group_progress("g")
    assert progress.complete and progress.counts == {"succeeded": 2}
    assert store.update([StatusUpdate("b", S.SUCCEEDED)]).groups_done == set()


def test_a_server_that_lost_its_scripts_is_given_them_again(store: RedisStatusStore) -> None:
    store.open_group("g", 1)
    store.update([StatusUpdate("a", S.QUEUED, group="g")])
    store.client.script_flush()  # as after a restart (every primary, on a cluster)
    applied = store.update([StatusUpdate("a", S.SUCCEEDED)])
    assert applied.groups_done == {"g"} and [u.job_id for u in applied.moved] == ["a"]
