"""Workers holding two batches hand a waiting one to an idle worker (``engines.handoff``)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.status import JobState
from tests.integration.conftest import running_intake, running_worker
from tests.integration.test_fleet import ENGINES, with_models

pytestmark = pytest.mark.integration


def test_a_batch_waiting_behind_a_long_one_goes_to_a_worker_that_becomes_idle(
    settings: BlazeSettings, tmp_path: Path
) -> None:
    """Worker A holds a long batch on its engine and takes a short one, which waits for the
    engine; worker B starts: the short batch is handed to it and ends while the long one
    still runs on A (without the hand-off it would end after it)."""
    settings = with_models(settings, sleepy={"engine": f"{ENGINES}:sleepy", "max_batch_size": 4})
    worker = settings.worker.model_copy(update={"batches_in_hand": 2})
    settings = settings.model_copy(update={"worker": worker})
    long = [LLMJob(model="sleepy", prompt="sleep:8") for _ in range(4)]  # 32 s on the engine
    short = [LLMJob(model="sleepy", prompt="sleep:0")]
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    with (
        running_intake(settings),
        Client(settings) as client,
        running_worker(settings, a_log) as a,
    ):
        client.submit_many(long)
        ids = [j.job_id for j in long]
        deadline = time.monotonic() + 30
        while not all(s and s.state is JobState.RUNNING for s in client.status(ids).values()):
            assert time.monotonic() < deadline, a_log.read_text()[-3000:]
            time.sleep(0.1)
        client.submit_many(short)
        deadline = time.monotonic() + 30
        while a_log.read_text().count("Task blaze.run_batch[") < 2:  # A took it
            assert time.monotonic() < deadline, a_log.read_text()[-3000:]
            time.sleep(0.1)
        with running_worker(settings, b_log):
            done = client.wait([short[0].job_id], timeout=60)
            assert done[short[0].job_id].state is JobState.SUCCEEDED  # type: ignore[union-attr]
            states = client.status(ids)
            assert not any(s and s.state.terminal for s in states.values())  # A still on it
        a.kill()
    handed = re.findall(r"batch (\w+): handed back", a_log.read_text())
    assert handed, a_log.read_text()[-3000:]
    assert f"batch {handed[-1]}: {{'jobs': 1, 'succeeded': 1" in b_log.read_text()
