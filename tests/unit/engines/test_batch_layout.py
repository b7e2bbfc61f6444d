"""The batch result layout with in-memory stores: one object per batch, found by job id."""

import json
from typing import Any

from engines.batch_layout import settle_in_batch_object
from engines.cache import EngineCache
from engines.runner import BatchRunner
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
