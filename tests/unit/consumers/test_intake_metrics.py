"""The intake consumer's metrics agree with what it did; trace context rides with each job."""

from dataclasses import dataclass
from typing import Any

from consumers.dispatch import MemoryDispatcher
from consumers.intake import Intake
from consumers.metrics import IntakeMetrics, MeteredDepth, reason_label
from consumers.routing import Router
from pipelines.observe import trace
from pipelines.stores.deadletters_memory import MemoryDeadLetters
from pipelines.stores.status_memory import MemoryStatusStore
from tests.unit.consumers.test_intake import REGISTRY, SETTINGS, TOPIC, Clock, FakeSource, Rec, job


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


class LaggingSource(FakeSource):
    """A source that also reports the log end seen in fetches (as KafkaConsumer.highwater)."""

    end = 0

    def assignment(self) -> set[Any]:
        return {TP(TOPIC, 0)}

    def highwater(self, tp: Any) -> int:
        return self.end

    def position(self, tp: Any) -> int:
        return 0


def value(metrics: IntakeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_counts_match_what_intake_did_and_lag_returns_to_zero() -> None:
    tp = TP(TOPIC, 0)
    parent = trace.new_traceparent()
    values = [job("a1"), b"garbage", job("a2"), job("u1", "nope"), job("a3"), job("b1", "big")]
    recs = [Rec(TOPIC, 0, i, v) for i, v in enumerate(values)]
    recs[0].headers = [(trace.HEADER, parent.encode())]
    src = LaggingSource([{tp: recs}])
    src.end = 6
    clock = Clock()
    metrics = IntakeMetrics()
    disp = MemoryDispatcher()
    router = Router(SETTINGS, REGISTRY, MeteredDepth(disp, metrics), "round_robin")  # type: ignore[arg-type]
    intake = Intake(
        SETTINGS,
        src,
        disp,
        MemoryDeadLetters(),
        MemoryStatusStore(),
        router,
        REGISTRY,
        clock,
        metrics,
    )
    intake.step()
    assert value(metrics, "blaze_jobs_received_total", kind="llm") == 6
    assert (
        value(metrics, "blaze_jobs_dead_lettered_total", stage="intake", reason="invalid_json") == 1
    )
    assert (
        value(metrics, "blaze_jobs_dead_lettered_total", stage="intake", reason="unknown_model")
        == 1
    )
    assert value(metrics, "blaze_open_batches") == 1  # b1 of "big" waits for its window
    assert value(metrics, "blaze_consumer_lag_messages", topic=TOPIC, partition="0") == 1
    queue = SETTINGS.queue("llm", "cpu")
    sent = value(metrics, "blaze_batches_dispatched_total", kind="llm", model="tiny", queue=queue)
    sent += value(
        metrics, "blaze_batches_dispatched_total", kind="llm", model="tiny", queue="blaze.llm.cuda0"
    )
    assert sent == 1
    assert value(metrics, "blaze_batch_fill_ratio_sum", kind="llm", model="tiny") == 1.0
    # the job that came with a traceparent goes on with a hop of the same trace
    payload = disp.sent[0][1]
    hop = payload["traces"]["a1"]
    assert trace.trace_id(hop) == trace.trace_id(parent) and hop != parent
    assert set(payload["traces"]) == {"a1"}
    clock.now = 10.0
    intake.step()
    batches = sum(
        value(metrics, "blaze_batches_dispatched_total", kind="llm", model=m, queue=q)
        for m in ("tiny", "big")
        for q in (queue, "blaze.llm.cuda0")
    )
    sizes = sum(
        value(metrics, "blaze_batch_size_count", kind="llm", model=m) for m in ("tiny", "big")
    )
    assert batches == sizes == 2
    assert value(metrics, "blaze_consumer_lag_messages", topic=TOPIC, partition="0") == 0
    assert value(metrics, "blaze_queue_depth_batches", queue=queue) >= 1


def test_dead_letter_reasons_map_to_a_few_labels() -> None:
    assert reason_label("invalid JSON: Expecting value") == "invalid_json"
    assert reason_label("invalid job: 2 errors") == "invalid_job"
    assert reason_label("unknown llm model 'x' (known: tiny)") == "unknown_model"
    assert reason_label("unknown job kind 'audio'") == "unknown_kind"
    assert reason_label("deadline 2026-01-01 passed") == "deadline"
    assert reason_label("something new") == "other"
