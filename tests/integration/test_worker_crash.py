"""A worker killed mid-batch loses nothing: within seconds its batch is back in its queue (the
reaper sees its lease lapse; Celery's visibility timeout stays at its default hour) and runs on
another worker."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from pipelines.client import Client
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.stores.status import JobState
from tests.integration.conftest import running_intake, running_worker

pytestmark = pytest.mark.integration


def test_batch_of_a_killed_worker_is_back_within_30_s_and_completed(
    settings: BlazeSettings, tmp_path: Path
) -> None:
    assert settings.worker.visibility_timeout_s == 3600 and settings.fleet.lease_s == 10
    # long generations so the kill lands while the batch runs
    jobs = [LLMJob(model="tiny", prompt=f"slow {i}", max_new_tokens=480) for i in range(8)]
    ids = [j.job_id for j in jobs]
    with running_intake(settings), Client(settings) as client:
        with running_worker(settings, tmp_path / "worker-1.log") as proc:
            client.submit_many(jobs)
            deadline = time.monotonic() + 60
            while not any(
                s is not None and s.state is JobState.RUNNING for s in client.status(ids).values()
            ):
                assert time.monotonic() < deadline, "the batch never started"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = time.monotonic()
        states = client.status(ids)
        assert not all(s is not None and s.state.terminal for s in states.values())
        with running_worker(settings, tmp_path / "worker-2.log"):
            while not any(s is not None and s.attempts >= 2 for s in client.status(ids).values()):
                assert time.monotonic() - killed_at < 30, "the batch did not come back in 30 s"
                time.sleep(0.1)
            back_s = time.monotonic() - killed_at
            final = client.wait(ids, timeout=120)
    print(f"\n[worker crash] batch running again {back_s:.1f} s after kill -9")
    assert {s.state for s in final.values()} == {JobState.SUCCEEDED}
    attempts = {s.attempts for s in final.values()}
    assert max(attempts) == 2  # ran once on the killed worker, once after redelivery
