"""Model versions on the real stack: promote and rollback reach the consumer within seconds,
dispatched jobs finish on their version, a 30 % split, shadows kept apart."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.rollout import Rollout, compare
from pipelines.settings import BlazeSettings
from pipelines.stores.status import JobState
from pipelines.stores.versions_redis import RedisVersionStore
from tests.integration.conftest import running_intake, running_worker

pytestmark = pytest.mark.integration


def version_of(client: Client, job_id: str) -> str:
    doc = client.result(job_id)
    assert doc is not None and doc.status == "succeeded", doc
    return str(doc.provenance["model_version"])


def test_promote_and_rollback_change_new_jobs_within_seconds_not_dispatched_ones(
    settings: BlazeSettings, tiny_models: Path
) -> None:
    settings.registry_file.write_text(f"models:\n  m:\n    source: {tiny_models / 'tiny'}\n")
    rollout = Rollout(settings, RedisVersionStore(settings), publish=lambda entry: None)
    rollout.add_version("m", {"source": str(tiny_models / "tiny2")}, note="retrained")

    def ask(client: Client, tag: str) -> str:
        job = LLMJob(job_id=tag, model="m", prompt=f"which version? {tag}", max_new_tokens=2)
        client.submit_many([job])
        st = client.wait([tag], timeout=60)[tag]
        assert st.state is JobState.SUCCEEDED and st.version == version_of(client, tag)
        return version_of(client, tag)

    with running_intake(settings), Client(settings) as client:
        # dispatched before the promote, run after it: still on the version it was given
        early = LLMJob(job_id="early", model="m", prompt="slow start", max_new_tokens=2)
        client.submit_many([early])
        deadline = time.monotonic() + 30
        while (s := client.status(["early"])["early"]) is None or s.state is not JobState.BATCHED:
            assert time.monotonic() < deadline, s
            time.sleep(0.05)
        rollout.promote("m", 2)
        promoted_at = time.monotonic()
        with running_worker(settings):
            assert client.wait(["early"], timeout=60)["early"].state is JobState.SUCCEEDED
            assert version_of(client, "early") == "m@1"
            tags = iter(range(100))
            while ask(client, f"after-promote-{next(tags)}") != "m@2":
                assert time.monotonic() - promoted_at < 5, "promote not seen within 5 s"
            assert (
                ask(
                    client,
                    "pinned",
                )
                == "m@2"
            )
            assert client.result("pinned").model == "m"  # type: ignore[union-attr]
            rollout.rollback("m")
            rolled_at = time.monotonic()
            while ask(client, f"after-rollback-{next(tags)}") != "m@1":
                assert time.monotonic() - rolled_at < 5, "rollback not seen within 5 s"
            named = LLMJob(job_id="named", model="m@2", prompt="pick 2", max_new_tokens=2)
            client.submit_many([named])
            client.wait(["named"], timeout=60)
            assert version_of(client, "named") == "m@2"
    trail = rollout.store.trail("m")
    assert [e["action"] for e in trail[:3]] == ["rollback", "promote", "add-version"]
    record = rollout.record("m")
    assert record.aliases == {"stable": 1} and sorted(record.versions) == [1, 2]


def test_a_split_sends_its_share_and_shadows_stay_apart(settings: BlazeSettings) -> None:
    settings.registry_file.write_text(
        "models:\n  e:\n    engine: echo\n    max_batch_size: 64\n    max_wait_s: 0.2\n"
    )
    rollout = Rollout(settings, RedisVersionStore(settings), publish=lambda entry: None)
    rollout.add_version("e", {"max_batch_size": 32}, note="challenger")
    rollout.split("e", 2, 30)
    # fixed ids (the namespace is the test's own): the share is the same on every run (302)
    jobs = [
        LLMJob(job_id=f"job-{i}", model="e", prompt=f"split {i}", max_new_tokens=4)
        for i in range(1000)
    ]
    with running_worker(settings), running_intake(settings), Client(settings) as client:
        client.submit_many(jobs)
        final = client.wait([j.job_id for j in jobs], timeout=180)
        assert {s.state for s in final.values()} == {JobState.SUCCEEDED}
        landed = Counter(version_of(client, j.job_id) for j in jobs)
        assert 250 <= landed["e@2"] <= 350, landed
        assert Counter(s.version for s in final.values()) == landed

        rollout.split("e", None)
        rollout.shadow("e", 2, 1.0)
        time.sleep(1.5)  # the consumer's refresh
        shadowed = [LLMJob(model="e", prompt=f"shadow {i}", max_new_tokens=4) for i in range(40)]
        client.submit_many(shadowed)
        client.wait([j.job_id for j in shadowed], timeout=120)
        assert {version_of(client, j.job_id) for j in shadowed} == {"e@1"}
        root = f"{settings.namespace}/shadow/e@2/"
        deadline = time.monotonic() + 30
        while len(client.result_store.list_keys(root)) < len(shadowed):
            assert time.monotonic() < deadline, "shadow results did not arrive"
            time.sleep(0.2)
        user_keys = client.result_store.list_keys(f"{settings.namespace}/jobs/")
        assert len(user_keys) == len(jobs) + len(shadowed)  # one result each, no shadow among them
        assert not any("shadow" in k for k in user_keys)
        summary = compare(settings, client.result_store, client.status_store, "e").summary()
    assert summary["pairs"] == len(shadowed) and summary["agreement"] == 1.0
    assert summary["shadow_versions"] == {"e@2": len(shadowed)}
