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
