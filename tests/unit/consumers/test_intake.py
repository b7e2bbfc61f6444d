"""The intake loop with in-memory parts: what is dead-lettered, batched, dispatched, committed."""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from consumers.dispatch import MemoryDispatcher
from consumers.intake import Intake
from consumers.routing import Router
from pipelines.jobs import DiffusionJob, LLMJob
from pipelines.registry import ModelSpec, Registry
from pipelines.settings import BlazeSettings
from pipelines.stores.deadletters_memory import MemoryDeadLetters
from pipelines.stores.status import JobState
from pipelines.stores.status_memory import MemoryStatusStore


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: list[tuple[str, bytes | None]] | None = None


@dataclass
class FakeSource:
    """Hands out queued records once; records commits."""

    batches: list[dict[Any, list[Rec]]] = field(default_factory=list)
    commits: list[dict[Any, Any]] = field(default_factory=list)
    paused_parts: set[Any] = field(default_factory=set)
    timeouts: list[int] = field(default_factory=list)

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Rec]]:
        self.timeouts.append(timeout_ms)
        if self.paused_parts:
            return {}
        return self.batches.pop(0) if self.batches else {}

    def pause(self, *parts: Any) -> None:
        self.paused_parts.update(parts)

    def resume(self, *parts: Any) -> None:
        self.paused_parts.difference_update(parts)

    def paused(self) -> set[Any]:
        return set(self.paused_parts)

    def commit(self, offsets: dict[Any, Any] | None = None) -> None:
        self.commits.append(dict(offsets or {}))

    def assignment(self) -> set[Any]:
        return {"p0"}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


REGISTRY = Registry(
    {
        "tiny": ModelSpec(name="tiny", devices=["cpu", "cuda:0"]),
        "tiny2": ModelSpec(name="tiny2"),
        "big": ModelSpec(name="big", max_batch_size=2, max_wait_s=5.0),
        "sd": ModelSpec(name="sd", kind="diffusion"),
    }
)


def make(
    settings: BlazeSettings, source: FakeSource, clock: Clock, strategy: str = "round_robin"
) -> tuple[Intake, MemoryDispatcher, MemoryDeadLetters, MemoryStatusStore]:
    disp, dead, status = MemoryDispatcher(), MemoryDeadLetters(), MemoryStatusStore()
    router = Router(settings, REGISTRY, disp, strategy)  # type: ignore[arg-type]
    return Intake(settings, source, disp, dead, status, router, REGISTRY, clock), disp, dead, status


def job(jid: str, model: str = "tiny", **kw: Any) -> bytes:
    return LLMJob(job_id=jid, model=model, prompt="hi", **kw).model_dump_json().encode()


SETTINGS = BlazeSettings(
    batch={"max_size": 3, "max_wait_s": 0.5, "max_queued_batches": 2},
    fleet={"read_ahead_jobs": 3},  # pause as soon as a batch waits for room
)
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


def recs(values: list[bytes], topic: str = TOPIC) -> dict[Any, list[Rec]]:
    return {"p0": [Rec(topic, 0, i, v) for i, v in enumerate(values)]}


def test_unknown_models_are_dead_lettered() -> None:
    src = FakeSource([recs([job("u1", "nope"), job("k1")])])
    intake, _, dead, _ = make(SETTINGS, src, Clock())
    intake.step()
    assert [d.job_id for d in dead.letters] == ["u1"]
    assert "unknown llm model 'nope'" in dead.letters[0].reason and "tiny" in dead.letters[0].reason


def test_batch_limits_are_per_model() -> None:
    clock = Clock()
    src = FakeSource([recs([job("b1", "big"), job("b2", "big"), job("b3", "big")])])
    intake, disp, _, _ = make(SETTINGS, src, clock)
    intake.step()
    assert [len(p["jobs"]) for _, p in disp.sent] == [2]  # big batches at 2
    clock.now = 1.0  # past the default 0.5 s wait, not big's 5 s
    intake.step()
    assert len(disp.sent) == 1
    clock.now = 5.0
    intake.step()
    assert [len(p["jobs"]) for _, p in disp.sent] == [2, 1]


def test_full_queues_pause_intake_and_room_resumes_it() -> None:
    values = [job(f"j{i}", "tiny2") for i in range(12)]  # tiny2 runs on cpu only
    src = FakeSource([recs(values[:9]), recs(values[9:])])
    intake, disp, _, _ = make(SETTINGS, src, Clock())
    intake.step()
    queue = SETTINGS.queue("llm", "cpu")
    assert len(disp.sent) == 2 and intake.paused and src.paused_parts  # bound is 2 per queue
    assert len(intake.ready) == 1
    committed = src.commits[-1]["p0"].offset
    assert committed == 6  # jobs of the undispatched batch stay uncommitted
    intake.step()
    assert len(disp.sent) == 2  # still full: nothing polled, nothing sent
    disp.waiting[queue] = 0  # the worker took both batches
    intake.step()
    assert len(disp.sent) == 3 and not intake.paused and not src.paused_parts
    assert intake.stats.pauses == 1


def test_least_outstanding_prefers_the_emptier_queue() -> None:
    src = FakeSource([recs([job(f"j{i}") for i in range(3)])])
    intake, disp, _, _ = make(SETTINGS, src, Clock(), strategy="least_outstanding")
    disp.waiting[SETTINGS.queue("llm", "cpu")] = 1
    intake.step()
    assert [q for q, _ in disp.sent] == [SETTINGS.queue("llm", "cuda:0")]


def test_diffusion_jobs_batch_only_with_compatible_settings() -> None:
    topic = SETTINGS.jobs_topic("diffusion")

    def d(jid: str, **kw: Any) -> bytes:
        return DiffusionJob(job_id=jid, model="sd", prompt="cat", **kw).model_dump_json().encode()

    values = [d("a", width=512), d("b", width=256), d("c", width=512, seed=3), d("e", width=512)]
    src = FakeSource([recs(values, topic)])
    clock = Clock()
    intake, disp, _, _ = make(SETTINGS, src, clock)
    intake.step()
    assert [[j["job_id"] for j in p["jobs"]] for _, p in disp.sent] == [["a", "c", "e"]]
    assert disp.sent[0][0] == SETTINGS.queue("diffusion", "cpu")
    clock.now = 1.0
    intake.step()
    assert [j["job_id"] for j in disp.sent[1][1]["jobs"]] == ["b"]


def test_a_lone_job_leaves_after_the_quiet_time_when_its_queue_is_empty() -> None:
    settings = BlazeSettings(batch={"max_size": 3, "max_wait_s": 0.5, "quiet_s": 0.03})
    src = FakeSource([recs([job("a", "tiny2")]), {}, recs([job("b", "tiny2")]), {}])
    clock = Clock()
    intake, disp, _, _ = make(settings, src, clock)
    intake.step()
    assert disp.sent == []
    clock.now = 0.03  # nothing joined for 30 ms and the cpu queue is empty: no point waiting
    intake.step()
    assert [[j["job_id"] for j in p["jobs"]] for _, p in disp.sent] == [["a"]]
    clock.now = 0.1
    intake.step()  # "b" arrives while "a" still waits in the queue (no worker took it)
    clock.now = 0.2
    intake.step()
    assert len(disp.sent) == 1  # so "b" waits for mates for its whole window
    clock.now = 0.6
    intake.step()
    assert [[j["job_id"] for j in p["jobs"]] for _, p in disp.sent] == [["a"], ["b"]]


def test_while_batches_wait_for_room_intake_looks_less_often_until_one_goes() -> None:
    values = [job(f"j{i}", "tiny2") for i in range(9)]  # 3 batches; the queue takes 2
    src = FakeSource([recs(values)])
    intake, disp, _, _ = make(SETTINGS, src, Clock())
    for _ in range(5):
        intake.step()
    assert len(disp.sent) == 2 and len(intake.ready) == 1
    # the first poll waited the full idle time; then 50 ms, doubling to 250 ms while full
    assert src.timeouts == [500, 50, 100, 200, 250]
    disp.waiting[SETTINGS.queue("llm", "cpu")] = 1  # the worker took one batch
    intake.step()
    assert len(disp.sent) == 3 and not intake.ready
    values = [job(f"k{i}", "tiny2") for i in range(9)]
    src.batches.append(recs(values))
    disp.waiting[SETTINGS.queue("llm", "cpu")] = 0
    src.timeouts.clear()
    for _ in range(3):
        intake.step()
    assert len(intake.ready) == 1  # full again: back to looking after 50 ms, then doubling
    assert src.timeouts[1:] == [50, 100]


def test_a_partial_batch_keeps_filling_while_queues_are_full() -> None:
    # tiny2 runs on cpu only; batches of 3; the queue takes 2
    values = [job(f"j{i}", "tiny2") for i in range(14)]
    src = FakeSource([recs(values[:11]), recs(values[11:])])
    clock = Clock()
    intake, disp, _, _ = make(SETTINGS, src, clock)
    intake.step()  # 2 batches sent, 1 ready, j9 and j10 open in the batcher
    assert len(disp.sent) == 2 and intake.paused and len(intake.batcher) == 2
    clock.now = 2.0  # far past the window: still no partial batch while nothing can go
    intake.step()
    assert len(intake.ready) == 1 and len(intake.batcher) == 2
    disp.waiting[SETTINGS.queue("llm", "cpu")] = 0  # the worker took both
    intake.step()  # the ready batch goes, intake resumes; the open batch gets a fresh window
    assert not intake.paused and len(disp.sent) == 3 and len(intake.batcher) == 2
    intake.step()  # the records held back in the broker arrive and fill it
    assert [len(p["jobs"]) for _, p in disp.sent] == [3, 3, 3, 3]
    assert len(intake.batcher) == 2  # j12 and j13 wait for mates


def test_a_piece_of_a_larger_submission_waits_for_the_rest() -> None:
    settings = BlazeSettings(batch={"max_size": 4, "max_wait_s": 0.5, "quiet_s": 0.03})

    def sent(values: list[bytes], start: int, together: int) -> dict[Any, list[Rec]]:
        head = [("blaze-sent-with", str(together).encode())]
        return {"p0": [Rec(TOPIC, 0, start + i, v, head) for i, v in enumerate(values)]}

    burst = [job(f"b{i}", "tiny2") for i in range(6)]
    src = FakeSource([sent(burst[:2], 0, 6), {}, sent(burst[2:], 2, 6), {}, {}])
    clock = Clock()
    intake, disp, _, _ = make(settings, src, clock)
    intake.step()
    clock.now = 0.04  # quiet, queue empty, but 4 more of its submission are on their way
    intake.step()
    assert disp.sent == []
    intake.step()  # they come: one full batch, and b4, b5 (all that is left of it)
    clock.now = 0.08
    intake.step()
    assert [[j["job_id"] for j in p["jobs"]] for _, p in disp.sent] == [["b0", "b1", "b2", "b3"]]
    clock.now = 0.6  # b4 and b5 are fewer than a batch of their 6: one more window
    intake.step()
    assert len(disp.sent) == 1
    clock.now = 1.1
    intake.step()
    assert [len(p["jobs"]) for _, p in disp.sent] == [4, 2]
    # a small submission that arrived whole leaves after the quiet time
    src.batches = [sent([job("s0", "tiny2"), job("s1", "tiny2")], 10, 2), {}]
    disp.waiting.clear()
    intake.step()
    clock.now = 1.15
    intake.step()
    assert [len(p["jobs"]) for _, p in disp.sent] == [4, 2, 2]


def test_a_bad_sent_with_header_counts_as_one() -> None:
    from consumers.intake import sent_with

    for value in (b"x", b"-3", b"0", None):
        assert sent_with(Rec(TOPIC, 0, 0, b"", [("blaze-sent-with", value)])) == 1
    assert sent_with(Rec(TOPIC, 0, 0, b"", [("blaze-sent-with", b"12")])) == 12


def test_batched_events_are_published_before_the_batch_is_handed_to_a_worker() -> None:
    """A worker's "running" comes from another process: it may only follow a published
    "batched", else a subscriber sees one job's states out of order."""
    order: list[str] = []

    class Sink:
        def __init__(self) -> None:
            self.pending: list[str] = []

        def __call__(self, moved: Any) -> None:
            self.pending.extend(f"{up.state.value} {up.job_id}" for up in moved)

        def flush(self, timeout: float = 10) -> None:
            order.extend(self.pending)
            self.pending.clear()

    class Dispatcher(MemoryDispatcher):
        def dispatch(self, queue: str, payload: dict[str, Any]) -> None:
            order.extend(f"dispatched {j['job_id']}" for j in payload["jobs"])
            super().dispatch(queue, payload)

    disp, status = Dispatcher(), MemoryStatusStore(events=Sink())
    router = Router(SETTINGS, REGISTRY, disp, "round_robin")  # type: ignore[arg-type]
    src = FakeSource([{"p0": [Rec(TOPIC, 0, i, job(f"j{i}")) for i in range(3)]}])
    Intake(SETTINGS, src, disp, MemoryDeadLetters(), status, router, REGISTRY, Clock()).step()
    assert order == [f"batched j{i}" for i in range(3)] + [f"dispatched j{i}" for i in range(3)]


def test_urgent_batches_go_first_and_an_urgent_partial_one_does_not_wait_to_fill() -> None:
    # tiny2 runs on cpu only; batches of 3; the queue takes 2
    routine = [job(f"r{i}", "tiny2", priority=0) for i in range(9)]
    urgent = [job(f"u{i}", "tiny2", priority=9) for i in range(4)]
    later = {"p0": [Rec(TOPIC, 0, 9 + i, v) for i, v in enumerate(urgent)]}
    src = FakeSource([recs(routine), later])
    clock = Clock()
    intake, disp, _, _ = make(SETTINGS, src, clock)
    intake.step()  # two routine batches sent, the third waits (intake pauses: read-ahead 3)
    assert [p["jobs"][0]["job_id"] for _, p in disp.sent] == ["r0", "r3"]
    src.paused_parts.clear()  # as if the read-ahead were larger: the urgent jobs are read
    intake.step()
    assert [b[0].job.job_id for b in intake.ready] == ["u0", "r6"]  # the full urgent one first
    clock.now = 2.0  # far past the window: the urgent partial leaves, a routine one would not
    intake.step()
    assert [b[0].job.job_id for b in intake.ready] == ["u0", "u3", "r6"]
    disp.waiting[SETTINGS.queue("llm", "cpu")] = 0  # the worker took both
    intake.step()
    assert [p["jobs"][0]["job_id"] for _, p in disp.sent][2:] == ["u0", "u3"]
    assert disp.sent[2][1]["priority"] == 9
