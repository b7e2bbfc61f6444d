"""The ``StatusStore`` contract: every rule of the state machine, on memory and on Redis (where
the Lua scripts apply it)."""

from __future__ import annotations

from pipelines.stores.status import JobState, StatusStore, StatusUpdate
from tests.contract.conftest import Recorder

S = JobState


def test_states_only_move_forward_whatever_order_updates_arrive_in(
    status_store: StatusStore,
) -> None:
    ids = [f"s{i}" for i in range(50)]
    status_store.update([StatusUpdate(j, S.RUNNING, at=2.0) for j in ids])
    status_store.update([StatusUpdate(j, S.SUCCEEDED, at=3.0) for j in ids[:25]])
    status_store.update([StatusUpdate(j, S.QUEUED, at=1.0) for j in ids])  # a late producer ack
    got = status_store.get([*ids, "never"])
    assert got["never"] is None
    assert {got[j].state for j in ids[:25]} == {S.SUCCEEDED}  # type: ignore[union-attr]
    assert {got[j].state for j in ids[25:]} == {S.RUNNING}  # type: ignore[union-attr]
    s0 = got["s0"]
    assert s0 is not None and s0.updated_at == 3.0
    # each state's first time is kept, even of an update that did not move the job
    assert s0.times == {"running": 2.0, "succeeded": 3.0, "queued": 1.0}
    assert status_store.states(["s0", "s30", "never"]) == {
        "s0": S.SUCCEEDED,
        "s30": S.RUNNING,
        "never": None,
    }


def test_a_terminal_state_is_final_and_keeps_its_reason(status_store: StatusStore) -> None:
    status_store.update([StatusUpdate("a", S.RUNNING), StatusUpdate("a", S.FAILED, "boom")])
    for later in (S.SUCCEEDED, S.CANCELLED, S.DEAD, S.RUNNING, S.QUEUED):
        status_store.update([StatusUpdate("a", later, "later")])
    a = status_store.get(["a"])["a"]
    assert a is not None and a.state is S.FAILED and a.reason == "boom"


def test_a_same_rank_update_replaces_a_state_that_has_not_ended(status_store: StatusStore) -> None:
    status_store.update([StatusUpdate("a", S.RUNNING, "first", at=1.0)])
    status_store.update([StatusUpdate("a", S.RUNNING, "second", at=2.0)])
    a = status_store.get(["a"])["a"]
    assert a is not None and a.reason == "second" and a.updated_at == 2.0


def test_runs_and_dispatches_are_counted_even_when_they_do_not_move_the_job(
    status_store: StatusStore,
) -> None:
    status_store.update([StatusUpdate("a", S.BATCHED), StatusUpdate("a", S.BATCHED)])
    status_store.update([StatusUpdate("a", S.RUNNING), StatusUpdate("a", S.RUNNING)])
    status_store.update([StatusUpdate("a", S.SUCCEEDED), StatusUpdate("a", S.RUNNING)])
    a = status_store.get(["a"])["a"]
    assert a is not None and a.state is S.SUCCEEDED
    assert (a.attempts, a.dispatches) == (3, 2)


def test_group_and_kind_stick_from_the_first_update_that_names_them(
    status_store: StatusStore,
) -> None:
    status_store.update([StatusUpdate("a", S.QUEUED, group="g1", kind="llm")])
    status_store.update([StatusUpdate("a", S.BATCHED, group="g2", kind="embed")])
    a = status_store.get(["a"])["a"]
    assert a is not None and (a.group, a.kind) == ("g1", "llm")


def test_claim_and_cancel_exclude_each_other(status_store: StatusStore) -> None:
    status_store.update([StatusUpdate(j, S.QUEUED) for j in "abc"])
    status_store.update([StatusUpdate("c", S.BATCHED)])
    assert status_store.claim(["a"], 1.0)["a"].claimed
    states, applied = status_store.cancel(["a", "b", "c", "zz"], "user", 2.0)
    # running is too late, queued and batched are cancelled, an unknown job stays unknown
    assert states == {"a": S.RUNNING, "b": S.CANCELLED, "c": S.CANCELLED, "zz": None}
    assert sorted(u.job_id for u in applied.moved) == ["b", "c"]
    refused = status_store.claim(["b"], 3.0)["b"]
    assert not refused.claimed and refused.state is S.CANCELLED and refused.attempts == 0
    b = status_store.get(["b"])["b"]
    assert b is not None and b.reason == "user"


def test_a_claim_is_refused_once_a_job_ended_and_granted_again_to_a_rerun(
    status_store: StatusStore,
) -> None:
    first = status_store.claim(["a", "new"], 1.0)
    assert first["a"].claimed and first["a"].attempts == 1 and first["new"].claimed
    again = status_store.claim(["a"], 2.0)["a"]  # a redelivered batch: still running
    assert again.claimed and again.attempts == 2
    status_store.update([StatusUpdate("a", S.SUCCEEDED)])
    done = status_store.claim(["a"], 3.0)["a"]
    assert not done.claimed and done.state is S.SUCCEEDED and done.attempts == 2


def test_a_group_completes_once_when_its_last_job_settles(status_store: StatusStore) -> None:
    status_store.open_group("g", 3)
    status_store.open_group("g", 99)  # declaring again changes nothing
    status_store.update([StatusUpdate(j, S.QUEUED, group="g") for j in "xyz"])
    assert status_store.update([StatusUpdate("x", S.SUCCEEDED)]).groups_done == set()
    _, cancelled = status_store.cancel(["y"], "stop", 1.0)
    assert cancelled.groups_done == set()
    last = status_store.update([StatusUpdate("z", S.FAILED, "boom")])
    assert last.groups_done == {"g"}
    again = status_store.update([StatusUpdate("z", S.FAILED, "boom")])
    assert again.groups_done == set() and again.moved == []
    progress = status_store.group_progress("g")
    assert (progress.total, progress.done, progress.complete) == (3, 3, True)
    assert progress.counts == {"succeeded": 1, "cancelled": 1, "failed": 1}
    assert status_store.group_progress("unknown").total == -1


def test_marks_keep_the_first_time_and_reset_uncounts_a_replayed_job(
    status_store: StatusStore,
) -> None:
    status_store.open_group("g", 2)
    status_store.update([StatusUpdate(j, S.QUEUED, group="g") for j in "ab"])
    status_store.update([StatusUpdate("a", S.DEAD, "bad"), StatusUpdate("b", S.SUCCEEDED)])
    assert status_store.mark_group("g", "finalizing", 5.0) == 5.0
    assert status_store.mark_group("g", "finalizing", 9.0) == 5.0
    assert status_store.group_progress("g").marks == {"finalizing": 5.0}
    status_store.reset(["a", "never"])
    assert status_store.get(["a"])["a"] is None
    progress = status_store.group_progress("g")
    assert not progress.complete and progress.counts == {"succeeded": 1}
    # the replayed job starts again and counts once more when it ends
    status_store.update([StatusUpdate("a", S.QUEUED, group="g")])
    assert status_store.update([StatusUpdate("a", S.SUCCEEDED)]).groups_done == {"g"}


def test_every_applied_change_and_only_those_reach_the_event_sink(
    status_store: StatusStore, recorder: Recorder
) -> None:
    status_store.update([StatusUpdate("a", S.QUEUED), StatusUpdate("a", S.SUCCEEDED)])
    status_store.update([StatusUpdate("a", S.RUNNING)])  # too late: not an event
    status_store.claim(["b"], 1.0)
    status_store.cancel(["a", "b"], "user", 2.0)  # neither moves
    assert [(u.job_id, u.state) for u in recorder.moved] == [
        ("a", S.QUEUED),
        ("a", S.SUCCEEDED),
        ("b", S.RUNNING),
    ]


def test_the_first_settling_update_records_where_the_result_lives(
    status_store: StatusStore,
) -> None:
    status_store.update([StatusUpdate(j, S.RUNNING) for j in ("a", "b", "c")])
    first = status_store.update(
        [StatusUpdate("a", S.SUCCEEDED, loc="r1#0:10"), StatusUpdate("b", S.FAILED, "x", loc="")]
    )
    assert first.locs == {"a": "r1#0:10"}
    # a rerun of the same job (same state or another terminal one) keeps the first loc
    again = status_store.update(
        [
            StatusUpdate("a", S.SUCCEEDED, loc="r2#0:10"),
            StatusUpdate("b", S.SUCCEEDED, loc="r2#10:5"),
        ]
    )
    assert again.locs == {"a": "r1#0:10", "b": ""}  # b settled as failed without a loc
    # a cancelled job's stand-in records its loc; a loc on a non-terminal update is ignored
    status_store.cancel(["d"], "user", 1.0)  # unknown: nothing
    status_store.update([StatusUpdate("d", S.QUEUED)])
    status_store.cancel(["d"], "user", 1.0)
    late = status_store.update(
        [StatusUpdate("d", S.CANCELLED, loc="r3#0:4"), StatusUpdate("c", S.RUNNING, loc="r3#4:4")]
    )
    assert late.locs == {"d": "r3#0:4", "c": ""}
    got = status_store.get(["a", "b", "c", "d"])
    assert {j: st.loc for j, st in got.items() if st} == {
        "a": "r1#0:10",
        "b": "",
        "c": "",
        "d": "r3#0:4",
    }
