"""The intake loop with in-memory parts: what is dead-lettered, batched, dispatched, committed."""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from consumers.dispatch import MemoryDispatcher, RoundRobinRouter
from consumers.intake import Intake, MemoryDeadLetters
from pipelines.jobs import LLMJob
from pipelines.settings import BlazeSettings
from pipelines.status import JobState, MemoryStatusStore


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class FakeSource:
    """Hands out queued records once; records commits."""

    batches: list[dict[Any, list[Rec]]] = field(default_factory=list)
    commits: list[dict[Any, Any]] = field(default_factory=list)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Rec]]:
        return self.batches.pop(0) if self.batches else {}

    def commit(self, offsets: dict[Any, Any] | None = None) -> None:
        self.commits.append(dict(offsets or {}))

    def assignment(self) -> set[Any]:
        return {"p0"}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def make(
    settings: BlazeSettings, source: FakeSource, clock: Clock
) -> tuple[Intake, MemoryDispatcher, MemoryDeadLetters, MemoryStatusStore]:
    disp, dead, status = MemoryDispatcher(), MemoryDeadLetters(), MemoryStatusStore()
    router = RoundRobinRouter(settings, ["cpu", "cuda:0"])
    return Intake(settings, source, disp, dead, status, router, clock), disp, dead, status


def job(jid: str, model: str = "tiny", **kw: Any) -> bytes:
    return LLMJob(job_id=jid, model=model, prompt="hi", **kw).model_dump_json().encode()


SETTINGS = BlazeSettings(batch={"max_size": 3, "max_wait_s": 0.5})
TOPIC = SETTINGS.jobs_topic("llm")


def test_bad_messages_are_dead_lettered_and_good_ones_batched_by_model() -> None:
    values = [
        job("a1"),
        b"garbage",
        job("b1", "tiny2"),
        job("a2"),
        b'{"job_id": "x1", "model": "tiny"}',
        job("a3"),
    ]
    src = FakeSource([{"p0": [Rec(TOPIC, 0, i, v) for i, v in enumerate(values)]}])
    clock = Clock()
    intake, disp, dead, status = make(SETTINGS, src, clock)
    intake.step()
    # a1, a2, a3 filled a batch; b1 waits for its deadline
    assert [[j["job_id"] for j in p["jobs"]] for _, p in disp.sent] == [["a1", "a2", "a3"]]
    assert sorted(d.reason.split(":")[0] for d in dead.letters) == ["invalid JSON", "invalid job"]
    x1 = status.get(["x1"])["x1"]
    assert x1 is not None and x1.state is JobState.DEAD
    # b1 (offset 2) is unsettled, so nothing past offset 2 may be committed yet
    assert src.commits[-1]["p0"].offset == 2
    clock.now = 0.6
    intake.step()
    assert [p["jobs"][0]["job_id"] for _, p in disp.sent][-1] == "b1"
    assert src.commits[-1]["p0"].offset == 6
    b1 = status.get(["b1"])["b1"]
    assert b1 is not None and b1.state is JobState.BATCHED


def test_round_robin_across_devices() -> None:
    values = [job(f"j{i}") for i in range(6)]
    src = FakeSource([{"p0": [Rec(TOPIC, 0, i, v) for i, v in enumerate(values)]}])
    intake, disp, _, _ = make(SETTINGS, src, Clock())
    intake.step()
    assert [q for q, _ in disp.sent] == [
        SETTINGS.queue("llm", "cpu"),
        SETTINGS.queue("llm", "cuda:0"),
    ]


def test_jobs_past_their_deadline_are_dead_lettered() -> None:
    past = datetime.now(UTC) - timedelta(minutes=1)
    src = FakeSource([{"p0": [Rec(TOPIC, 0, 0, job("late", deadline=past))]}])
    intake, disp, dead, _ = make(SETTINGS, src, Clock())
    intake.step()
    assert disp.sent == [] and dead.letters[0].job_id == "late"
    assert "deadline" in dead.letters[0].reason


def test_shutdown_flushes_partial_batches_and_commits() -> None:
    src = FakeSource([{"p0": [Rec(TOPIC, 0, 7, job("only"))]}])
    intake, disp, _, _ = make(SETTINGS, src, Clock())
    intake.step()
    assert disp.sent == []
    intake.flush_all()
    assert len(disp.sent) == 1 and src.commits[-1]["p0"].offset == 8


def test_dead_letter_payload_is_json_with_source() -> None:
    src = FakeSource([{"p0": [Rec(TOPIC, 3, 11, b"\x00\x01")]}])
    intake, _, dead, _ = make(SETTINGS, src, Clock())
    intake.step()
    body = json.loads(dead.letters[0].to_json())
    assert body["source"] == {"topic": TOPIC, "partition": 3, "offset": 11}
    assert body["stage"] == "intake" and body["reason"].startswith("invalid JSON")
