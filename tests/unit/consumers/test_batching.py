import pytest

from consumers.batching import Batcher
from consumers.offsets import OffsetTracker
from pipelines.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_batch_leaves_when_full() -> None:
    b: Batcher[str, int] = Batcher(3, 1.0, Clock())
    assert b.add("m", 1) is None and b.add("m", 2) is None
    assert b.add("m", 3) == [1, 2, 3]
    assert len(b) == 0


def test_partial_batch_leaves_at_deadline_of_its_oldest_item() -> None:
    clock = Clock()
    b: Batcher[str, int] = Batcher(10, 0.5, clock)
    b.add("m", 1)
    clock.now += 0.3
    b.add("m", 2)
    assert b.due() == [] and b.seconds_to_next() == pytest.approx(0.2)
    clock.now += 0.2
    assert b.due() == [("m", [1, 2])]
    assert b.seconds_to_next() is None


def test_keys_batch_separately() -> None:
    clock = Clock()
    b: Batcher[tuple[str, str], int] = Batcher(2, 1.0, clock)
    b.add(("llm", "a"), 1)
    b.add(("llm", "b"), 2)
    assert b.add(("llm", "a"), 3) == [1, 3]
    assert b.drain() == [(("llm", "b"), [2])]


def test_bad_limits_are_rejected() -> None:
    with pytest.raises(ConfigError, match="max_size"):
        Batcher(0, 1.0)
    with pytest.raises(ConfigError, match="max_wait_s"):
        Batcher(1, 0)


def test_offsets_commit_only_up_to_the_first_unsettled_message() -> None:
    t = OffsetTracker()
    for off in (5, 6, 7, 8):
        t.track("p0", off)
    t.settle("p0", 6)
    t.settle("p0", 8)
    assert t.commit_points() == {"p0": 5}
    t.committed({"p0": 5})
    assert t.commit_points() == {}  # nothing moved
    t.settle("p0", 5)
    assert t.commit_points() == {"p0": 7}
    t.settle("p0", 7)
    assert t.commit_points() == {"p0": 9}


def test_revoked_partitions_are_forgotten() -> None:
    t = OffsetTracker()
    t.track("p0", 1)
    t.track("p1", 1)
    t.forget(["p0"])
    assert t.pending() == 1 and "p0" not in t.commit_points()


def test_a_batch_still_filling_at_its_deadline_gets_one_more_window() -> None:
    clock = Clock()
    b: Batcher[str, int] = Batcher(16, 0.05, clock)
    for i in range(9):  # a burst read in pieces: 9 items in the first 45 ms
        b.add("m", i)
        clock.now += 0.005
    clock.now += 0.006  # the window ends while items still arrive every 5 ms
    assert b.due() == [] and b.seconds_to_next() == pytest.approx(0.049)
    for i in range(9, 15):
        b.add("m", i)
    assert b.add("m", 15) == list(range(16))  # left full, not as a partial batch of 9


def test_extension_happens_once_and_never_for_a_lone_or_stopped_stream() -> None:
    clock = Clock()
    b: Batcher[str, int] = Batcher(16, 0.05, clock)
    b.add("lone", 1)
    clock.now += 0.05
    assert b.due() == [("lone", [1])]  # low load: leaves at the end of its window
    for i in range(4):
        b.add("m", i)
        clock.now += 0.012
    assert b.due() == []  # extended: still streaming
    clock.now += 0.05
    assert b.due() == [("m", [0, 1, 2, 3])]  # the stream stopped; one extension at most


def test_a_quiet_batch_leaves_early_only_when_it_can_start_at_once() -> None:
    clock = Clock()
    b: Batcher[str, int] = Batcher(16, 0.5, clock, quiet_s=0.03)
    b.add("m", 1)
    assert b.seconds_to_next() == pytest.approx(0.03)
    clock.now += 0.02
    assert b.due(lambda items: True) == []  # not quiet yet
    clock.now += 0.01
    asked: list[int] = []
    assert b.due(lambda items: asked.extend(items) or False) == []  # busy: it stays
    assert asked == [1] and b.seconds_to_next() == pytest.approx(0.47)  # now only the window
    assert b.due(lambda items: True) == []  # asked once per quiet spell
    b.add("m", 2)  # a new arrival starts a new quiet spell
    clock.now += 0.03
    assert b.due(lambda items: True) == [("m", [1, 2])]


def test_items_arriving_faster_than_quiet_keep_the_batch_open() -> None:
    clock = Clock()
    b: Batcher[str, int] = Batcher(4, 0.5, clock, quiet_s=0.03)
    for i in range(3):
        b.add("m", i)
        clock.now += 0.025  # a burst read in pieces 25 ms apart
        assert b.due(lambda items: True) == []
    assert b.add("m", 3) == [0, 1, 2, 3]


def test_without_quiet_or_an_answer_a_batch_waits_its_window() -> None:
    clock = Clock()
    b: Batcher[str, int] = Batcher(16, 0.5, clock)  # quiet_s=0: off
    b.add("m", 1)
    clock.now += 0.1
    assert b.due(lambda items: True) == [] and b.seconds_to_next() == pytest.approx(0.4)
    q: Batcher[str, int] = Batcher(16, 0.5, clock, quiet_s=0.03)
    q.add("m", 1)
    clock.now += 0.1
    assert q.due() == []  # nobody to ask whether it can start
    with pytest.raises(ConfigError, match="quiet_s"):
        Batcher(1, 1.0, quiet_s=-1)


def test_items_sent_together_keep_their_batch_open_until_in() -> None:
    clock = Clock()
    b: Batcher[str, int] = Batcher(16, 0.05, clock, quiet_s=0.03)
    for i in range(9):  # the first piece of a burst of 40
        b.add("m", i, sent_with=40)
    clock.now += 0.05  # quiet and past the window, but 7 of its batch are still to come
    assert b.due(lambda items: True) == []
    assert b.seconds_to_next() == pytest.approx(0.05)  # no early check: only the extension
    for i in range(9, 15):
        b.add("m", i, sent_with=40)
    assert b.add("m", 15, sent_with=40) == list(range(16))
