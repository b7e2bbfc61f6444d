"""Settling results with in-memory stores: the batch layout, and jobs written mid-call."""

import json
import time
from collections.abc import Sequence
from typing import Any

import pytest

from engines.base import Output
from engines.cache import EngineCache
from engines.early import EarlyWriter, report_finished
from engines.runner import BatchRunner
from engines.settle import settle_in_batch_object
from pipelines.errors import ServiceUnavailable
from pipelines.jobs import LLMJob
from pipelines.results import LLMResult, parse_result
from pipelines.settings import BlazeSettings
from pipelines.stores.batch_results import pack, parse_loc, read_results
from pipelines.stores.results_memory import MemoryResultStore
from pipelines.stores.status import JobState, StatusUpdate
from pipelines.stores.status_memory import MemoryStatusStore
from tests.unit.engines.test_worker import EchoEngine, payload

SETTINGS = BlazeSettings(namespace="unit", s3={"layout": "batch"})


def runner(
    layout_of: Any = None,
) -> tuple[BatchRunner, MemoryResultStore, MemoryStatusStore]:
    results, status = MemoryResultStore(), MemoryStatusStore()
    run = BatchRunner(
        SETTINGS, results, status, EngineCache(EchoEngine, "cpu"), layout_of=layout_of
    )
    return run, results, status


def test_pack_puts_one_document_per_line_and_knows_where_each_is() -> None:
    body, spans = pack([("a", b'{"x": 1}'), ("b", b'{"y":\n 2}')])
    assert body.count(b"\n") == 2
    assert json.loads(body[slice(spans["b"][0], sum(spans["b"]))]) == {"y": 2}
    assert parse_loc("k/x.jsonl#10:5") == ("k/x.jsonl", 10, 5)
    assert parse_loc("no-span") is None


def test_a_batch_writes_one_object_and_every_job_is_found_by_its_id() -> None:
    run, results, status = runner()
    jobs = [LLMJob(model="m", prompt=f"p{i}") for i in range(3)] + [
        LLMJob(model="m", prompt="poison")
    ]
    got = run.run(payload(*jobs))
    assert got["succeeded"] == 3 and got["failed"] == 1
    keys = set(results.objects)
    objects = [k for k in keys if k.endswith(".jsonl")]
    assert len(objects) == 1 and objects[0].startswith("unit/batches/b1/results-")
    assert not any(k.endswith("result.json") for k in keys)  # no object per job
    docs = read_results(SETTINGS, results, status, [j.job_id for j in jobs] + ["unknown"])
    assert docs["unknown"] is None
    for j in jobs[:3]:
        doc = parse_result(docs[j.job_id] or b"")
        assert isinstance(doc, LLMResult) and doc.text == j.prompt.upper()  # type: ignore[union-attr]
    assert parse_result(docs[jobs[3].job_id] or b"").status == "failed"
    # the manifest (written last) is the plain reader's index: key and byte range per job
    manifest = json.loads(results.get(SETTINGS.manifest_key("b1")) or b"")
    body = results.get(objects[0]) or b""
    for row in manifest["jobs"]:
        line = body[row["offset"] : row["offset"] + row["length"]]
        assert row["key"] == objects[0] and json.loads(line)["job_id"] == row["job_id"]
    st = status.get([jobs[0].job_id])[jobs[0].job_id]
    assert st is not None and st.state is JobState.SUCCEEDED and st.loc.startswith(objects[0])


def test_of_two_attempts_the_first_to_settle_a_job_wins() -> None:
    results, status = MemoryResultStore(), MemoryStatusStore()
    job = LLMJob(model="m", prompt="p")
    status.update([StatusUpdate(job.job_id, JobState.RUNNING)])

    def doc(text: str) -> LLMResult:
        return LLMResult(job_id=job.job_id, status="succeeded", model="m", text=text)

    first = settle_in_batch_object(SETTINGS, results, status, "b1", [doc("first")])
    second = settle_in_batch_object(SETTINGS, results, status, "b1", [doc("second")])
    assert first.taken == set() and second.taken == {job.job_id}
    assert second.final[job.job_id].text == "first"  # type: ignore[union-attr]
    assert second.where[job.job_id] == first.where[job.job_id]
    got = read_results(SETTINGS, results, status, [job.job_id])[job.job_id]
    assert json.loads(got or b"")["text"] == "first"
    assert len([k for k in results.objects if k.endswith(".jsonl")]) == 2  # nothing overwritten


def test_a_cancelled_job_gets_its_stand_in_in_the_batch_object() -> None:
    run, results, status = runner()
    a, b = LLMJob(model="m", prompt="a"), LLMJob(model="m", prompt="b")
    status.update([StatusUpdate(j.job_id, JobState.QUEUED) for j in (a, b)])
    status.cancel([b.job_id], "by user", 1.0)
    got = run.run(payload(a, b))
    assert got["succeeded"] == 1 and got["cancelled"] == 1
    docs = read_results(SETTINGS, results, status, [b.job_id])
    assert parse_result(docs[b.job_id] or b"").status == "cancelled"


def test_the_layout_is_chosen_per_model() -> None:
    run, results, status = runner(lambda model: "job" if model == "per-job" else "batch")
    a, b = LLMJob(model="per-job", prompt="a"), LLMJob(model="m", prompt="b")
    run.run(payload(a))
    run.run(payload(b))
    assert results.get(SETTINGS.result_key(a.job_id)) is not None
    assert results.get(SETTINGS.result_key(b.job_id)) is None
    docs = read_results(SETTINGS, results, status, [a.job_id, b.job_id])
    assert all(docs.values())


def test_a_rerun_of_a_settled_batch_keeps_the_manifest_index() -> None:
    run, results, _ = runner()
    jobs = [LLMJob(model="m", prompt=f"p{i}") for i in range(3)]
    run.run(payload(*jobs))
    first = json.loads(results.get(SETTINGS.manifest_key("b1")) or b"")
    again = run.run(payload(*jobs))  # redelivered: every job already settled
    assert again["skipped"] == 3
    second = json.loads(results.get(SETTINGS.manifest_key("b1")) or b"")
    assert second["jobs"] == first["jobs"]  # still says where each line is


class Reporting:
    """Finishes its first job mid-call (as continuous generation does) and, before it returns,
    waits until that job's result can be read: only an early write lets it through."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.read_early: bool | None = None
        self.reader: Any = None

    def load(self, device: str) -> None:
        pass

    def run(self, batch: Sequence[LLMJob]) -> list[Output]:
        outs = [Output(text=(j.prompt or "").upper(), finish_reason="stop") for j in batch]
        report_finished(batch[0].job_id, outs[0])
        report_finished(batch[1].job_id, Output(error="failures are not written early"))
        deadline = time.monotonic() + 5
        while self.reader(batch[0].job_id) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        self.read_early = self.reader(batch[0].job_id) is not None
        self.reader_saw_second = self.reader(batch[1].job_id) is not None
        return outs

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "device": "cpu"}


@pytest.mark.parametrize("layout", ["job", "batch"])
def test_a_job_the_engine_finishes_mid_call_is_readable_before_the_call_returns(
    layout: str,
) -> None:
    settings = SETTINGS.model_copy(update={"s3": SETTINGS.s3.model_copy(update={"layout": layout})})
    results, status = MemoryResultStore(), MemoryStatusStore()
    engine = Reporting("m")
    engine.reader = lambda jid: read_results(settings, results, status, [jid])[jid]
    run = BatchRunner(settings, results, status, EngineCache(lambda _m: engine, "cpu"))
    jobs = [LLMJob(model="m", prompt=f"p{i}") for i in range(3)]
    got = run.run(payload(*jobs))
    assert engine.read_early is True and engine.reader_saw_second is False
    assert (got["succeeded"], got["failed"], got["skipped"], got["engine_calls"]) == (3, 0, 0, 1)
    docs = read_results(settings, results, status, [j.job_id for j in jobs])
    assert [json.loads(d or b"")["text"] for d in docs.values()] == ["P0", "P1", "P2"]
    manifest = json.loads(results.get(settings.manifest_key("b1")) or b"")
    assert [r["status"] for r in manifest["jobs"]] == ["succeeded"] * 3
    # written once: the early job is not written again at the end of the batch
    events = [u.job_id for u in status.events if u.state is JobState.SUCCEEDED]
    assert sorted(events) == sorted(j.job_id for j in jobs)
    if layout == "batch":  # one object for the early job, one for the rest
        assert len([k for k in results.objects if k.endswith(".jsonl")]) == 2
    again = run.run(payload(*jobs))  # redelivered: everything was settled
    assert again["skipped"] == 3


def test_a_failed_early_write_leaves_the_jobs_to_the_end_of_the_batch() -> None:
    calls: list[int] = []

    def settle(done: list[tuple[str, Output]]) -> set[str]:
        calls.append(len(done))
        raise ConnectionError("S3 is away")

    writer = EarlyWriter(settle, flush_s=0.01)
    writer.add("a", Output(text="x"))
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.close() == set() and calls == [1]


class CountingReads(MemoryResultStore):
    """Remembers every key it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes | None]:
        self.asked += keys
        return super().get_many(keys)


class DownStatus(MemoryStatusStore):
    def get(self, job_ids: Any) -> Any:
        raise ServiceUnavailable("Redis", "127.0.0.1:1", "Connection refused")


def test_reading_a_batch_layout_back_asks_for_no_per_job_object() -> None:
    results, status = CountingReads(), MemoryStatusStore()
    run = BatchRunner(SETTINGS, results, status, EngineCache(EchoEngine, "cpu"))
    jobs = [LLMJob(model="m", prompt=f"p{i}") for i in range(5)]
    run.run(payload(*jobs))
    results.asked.clear()
    docs = read_results(SETTINGS, results, status, [j.job_id for j in jobs])
    assert [json.loads(d or b"")["text"] for d in docs.values()] == ["P0", "P1", "P2", "P3", "P4"]
    assert len(results.asked) == 1 and results.asked[0].endswith(".jsonl")  # one GET in all


def test_the_recorded_loc_wins_over_a_later_per_job_object() -> None:
    # a job settled in a batch object, then run again after its model moved to the per-job
    # layout: the status says the first attempt is its result, so a reader gets that one
    results, status = MemoryResultStore(), MemoryStatusStore()
    job = LLMJob(model="m", prompt="p")
    first = LLMResult(job_id=job.job_id, status="succeeded", model="m", text="first")
    settle_in_batch_object(SETTINGS, results, status, "b1", [first])
    later = LLMResult(job_id=job.job_id, status="succeeded", model="m", text="later")
    results.put_many([(SETTINGS.result_key(job.job_id), later.to_json(), "application/json")])
    got = read_results(SETTINGS, results, status, [job.job_id])[job.job_id]
    assert json.loads(got or b"")["text"] == "first"


def test_with_the_status_store_down_per_job_objects_are_still_read() -> None:
    results = MemoryResultStore()
    there = LLMResult(job_id="j-there", status="succeeded", model="m", text="x")
    results.put_many([(SETTINGS.result_key("j-there"), there.to_json(), "application/json")])
    docs = read_results(SETTINGS, results, DownStatus(), ["j-there"])
    assert json.loads(docs["j-there"] or b"")["text"] == "x"
    # a job with no per-job object may have a line in a batch object: say why it is not known
    with pytest.raises(ServiceUnavailable, match="Redis"):
        read_results(SETTINGS, results, DownStatus(), ["j-there", "j-elsewhere"])
