"""Client.wait on many jobs: each poll reads the oldest pending jobs, not all of them."""

from collections.abc import Callable, Iterable

import pytest

from pipelines.client import WAIT_FIRST, WAIT_WINDOW, Client
from pipelines.errors import JobTimeout
from pipelines.settings import BlazeSettings
from pipelines.stores.results_memory import MemoryResultStore
from pipelines.stores.status import JobState, JobStatus, StatusUpdate
from pipelines.stores.status_memory import MemoryStatusStore

IDS = [f"job-{i:05d}" for i in range(2_000)]


class CountingStore(MemoryStatusStore):
    """Counts the states each poll reads."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[int] = [0]

    def states(self, job_ids: Iterable[str]) -> dict[str, JobState | None]:
        ids = list(job_ids)
        self.read[-1] += len(ids)
        return super().states(ids)


Hook = Callable[[int, int], None]


def world(order: list[str], per_poll: int) -> tuple[Client, CountingStore, Hook]:
    """A client over a store where ``per_poll`` more jobs of ``order`` end between polls
    (the hook, given to ``wait`` as its progress callback, runs once per poll)."""
    store = CountingStore()
    store.update([StatusUpdate(j, JobState.QUEUED) for j in IDS])
    settings = BlazeSettings(namespace="unit")
    client = Client(settings, status_store=store, result_store=MemoryResultStore())
    ended = [0]

    def between_polls(done: int, total: int) -> None:
        assert total == len(IDS)
        batch = order[ended[0] : ended[0] + per_poll]
        store.update([StatusUpdate(j, JobState.SUCCEEDED) for j in batch])
        ended[0] += len(batch)
        store.read.append(0)

    return client, store, between_polls


def test_jobs_ending_in_order_cost_a_window_plus_what_ended_per_poll() -> None:
    client, store, hook = world(IDS, per_poll=100)
    done: dict[str, JobStatus] = client.wait(IDS, poll_s=0, progress=hook)
    assert sorted(done) == IDS and all(st.state is JobState.SUCCEEDED for st in done.values())
    polls = [n for n in store.read if n]
    # the poll after the last 100 ended returns: 20 polls that ended jobs and the first one
    assert len(polls) == 21
    assert max(polls) <= WAIT_WINDOW + 2 * 100
    assert sum(polls) < 21 * len(IDS) / 4  # reading every pending job each poll: ~21,000


def test_jobs_ending_newest_first_still_return_the_poll_after_the_last_ends() -> None:
    client, store, hook = world(IDS[::-1], per_poll=100)
    done = client.wait(IDS, poll_s=0, progress=hook)
    assert sorted(done) == IDS
    polls = [n for n in store.read if n]
    assert len(polls) == 21  # returns the poll after the oldest, last, job ends
    # the oldest jobs are the last to end: each poll reads the first 32 and stops there; the
    # poll after the last ends reads on through every job, in windows of 32 doubling to 256
    assert polls == [WAIT_FIRST] * 20 + [len(IDS)]


def test_a_timeout_names_exactly_the_jobs_that_have_not_ended() -> None:
    client, _, hook = world(IDS[1:], per_poll=len(IDS))  # all but the oldest end at once
    with pytest.raises(JobTimeout) as err:
        client.wait(IDS, timeout=0, poll_s=0, progress=hook)
    assert err.value.pending == [IDS[0]]


def test_a_single_poll_over_ended_jobs_returns_them_all() -> None:
    client, store, _ = world([], per_poll=0)
    store.update([StatusUpdate(j, JobState.FAILED, reason="boom") for j in IDS])
    done = client.wait(IDS, poll_s=0)
    assert len(done) == len(IDS) and {st.reason for st in done.values()} == {"boom"}
