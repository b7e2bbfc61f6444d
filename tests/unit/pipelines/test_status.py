from pipelines.status import JobState, MemoryStatusStore, StatusUpdate


def test_states_only_move_forward() -> None:
    store = MemoryStatusStore()
    store.update([StatusUpdate("a", JobState.RUNNING, at=2.0)])
    store.update([StatusUpdate("a", JobState.SUCCEEDED, at=3.0)])
    store.update([StatusUpdate("a", JobState.QUEUED, at=1.0)])  # late producer ack
    st = store.get(["a"])["a"]
    assert st is not None and st.state is JobState.SUCCEEDED
    assert st.times == {"running": 2.0, "succeeded": 3.0, "queued": 1.0}


def test_terminal_state_is_final_and_attempts_count_runs() -> None:
    store = MemoryStatusStore()
    store.update([StatusUpdate("a", JobState.RUNNING), StatusUpdate("a", JobState.RUNNING)])
    store.update([StatusUpdate("a", JobState.FAILED, "boom")])
    store.update([StatusUpdate("a", JobState.SUCCEEDED)])
    st = store.get(["a", "b"])
    assert st["b"] is None
    a = st["a"]
    assert a is not None and a.state is JobState.FAILED and a.reason == "boom" and a.attempts == 2


def test_claim_and_cancel_exclude_each_other() -> None:
    store = MemoryStatusStore()
    store.update([StatusUpdate(j, JobState.QUEUED) for j in "abc"])
    assert store.claim(["a"], 1.0)["a"].claimed
    states, applied = store.cancel(["a", "b", "zz"], "user", 2.0)
    assert states == {"a": JobState.RUNNING, "b": JobState.CANCELLED, "zz": None}
    assert [u.job_id for u in applied.moved] == ["b"]
    refused = store.claim(["b"], 3.0)["b"]
    assert not refused.claimed and refused.state is JobState.CANCELLED and refused.attempts == 0


def test_a_group_completes_once_when_its_last_job_settles() -> None:
    store = MemoryStatusStore()
    store.open_group("g", 3)
    store.update([StatusUpdate(j, JobState.QUEUED, group="g") for j in "xyz"])
    assert store.update([StatusUpdate("x", JobState.SUCCEEDED)]).groups_done == set()
    store.cancel(["y"], "stop", 1.0)
    last = store.update([StatusUpdate("z", JobState.FAILED, "boom")])
    assert last.groups_done == {"g"}
    again = store.update([StatusUpdate("z", JobState.FAILED, "boom")])
    assert again.groups_done == set() and again.moved == []
    progress = store.group_progress("g")
    assert progress.complete and progress.counts == {
        "succeeded": 1,
        "cancelled": 1,
        "failed": 1,
    }
    assert store.mark_group("g", "finalizing", 5.0) == 5.0
    assert store.mark_group("g", "finalizing", 9.0) == 5.0  # the first mark stays
    store.reset(["z"])  # a replayed job no longer counts
    assert not store.group_progress("g").complete
