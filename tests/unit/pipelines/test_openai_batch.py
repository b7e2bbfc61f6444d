"""OpenAI batch files: line validation, job mapping, output lines, the whole flow in memory."""

import json
from pathlib import Path
from typing import ClassVar

import pytest

from blaze.sdk import Client
from engines.base import Output
from engines.cache import EngineCache
from engines.runner import BatchRunner
from pipelines.errors import BlazeError, ConfigError
from pipelines.jobs import DiffusionJob, EmbedJob, LLMJob
from pipelines.openai.requests import parse_batch_lines, parse_request, read_batch_file
from pipelines.openai.service import BatchService, finalize_groups
from pipelines.settings import BlazeSettings, parse_duration
from pipelines.stores.results_memory import MemoryResultStore
from pipelines.stores.status import JobState
from pipelines.stores.status_memory import MemoryStatusStore
from pipelines.tasks import batch_payload

SETTINGS = BlazeSettings(namespace="unit")


def line(custom_id: str, body: dict, url: str = "/v1/chat/completions") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def chat(text: str = "hi", **extra: object) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], **extra}


def test_a_chat_line_becomes_an_llm_job_tagged_with_its_batch() -> None:
    body = chat(max_tokens=7, temperature=0.5, stop="\n", seed=3, user="u1", n=1)
    body["messages"].insert(0, {"role": "developer", "content": [{"type": "text", "text": "be"}]})
    req = parse_request(4, line("a", body), "batch_x")
    assert req.error is None and isinstance(req.job, LLMJob)
    job = req.job
    assert job.job_id == "batch_x-000004" and job.tags == {"batch_id": "batch_x", "custom_id": "a"}
    assert job.max_new_tokens == 7 and job.stop == ["\n"] and job.seed == 3
    assert job.messages is not None and job.messages[0].role == "system"


def test_other_endpoints_map_to_their_job_kinds() -> None:
    emb = parse_request(1, line("e", {"model": "m", "input": ["a", "b"]}, "/v1/embeddings"), "b")
    img = parse_request(
        2,
        line(
            "i",
            {"model": "sd", "prompt": "fox", "n": 2, "size": "64x128"},
            "/v1/images/generations",
        ),
        "b",
    )
    txt = parse_request(3, line("t", {"model": "m", "prompt": "once"}, "/v1/completions"), "b")
    assert isinstance(emb.job, EmbedJob) and emb.job.texts == ["a", "b"]
    assert isinstance(img.job, DiffusionJob) and (img.job.width, img.job.height) == (64, 128)
    assert img.job.num_images == 2
    assert isinstance(txt.job, LLMJob) and txt.job.prompt == "once"


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        ("{not json", "invalid_json", None),
        ('"a string"', "invalid_request", None),
        (
            json.dumps({"url": "/v1/chat/completions", "body": chat()}),
            "missing_custom_id",
            "custom_id",
        ),
        (line("x", chat(), url="/v1/responses"), "invalid_url", "url"),
        (line("x", chat(max_tokens=-1)), "invalid_request", "max_new_tokens"),
        (line("x", chat(n=3)), "unsupported_parameter", "n"),
        (line("x", chat(tools=[{"type": "function"}])), "unsupported_parameter", "tools"),
        (line("x", chat(frobnicate=True)), "unsupported_parameter", "frobnicate"),
        (
            line("x", {"model": "tiny", "messages": [{"role": "tool", "content": "r"}]}),
            "invalid_value",
            "messages[0].role",
        ),
        (
            line("x", {"messages": [{"role": "user", "content": "hi"}]}),
            "missing_required_parameter",
            "model",
        ),
        (
            line("x", {"model": "sd", "prompt": "p", "size": "big"}, "/v1/images/generations"),
            "invalid_value",
            "size",
        ),
    ],
)
def test_bad_lines_name_what_is_wrong(raw: str, code: str, param: str | None) -> None:
    req = parse_request(9, raw, "batch_x")
    assert req.job is None and req.error is not None
    assert (req.error.code, req.error.param) == (code, param), req.error


def test_a_repeated_custom_id_is_an_error_on_the_later_line() -> None:
    reqs = parse_batch_lines([(1, line("a", chat())), (2, line("a", chat()))], "b")
    assert reqs[0].job is not None and reqs[1].error is not None
    assert reqs[1].error.code == "duplicate_custom_id"


def test_model_override_and_unusable_files(tmp_path: Path) -> None:
    req = parse_request(1, line("a", chat()), "b", model="smollm2")
    assert req.job is not None and req.job.model == "smollm2"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match="no requests"):
        read_batch_file(empty)
    with pytest.raises(ConfigError, match="cannot read"):
        read_batch_file(tmp_path / "missing.jsonl")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="UTF-8"):
        read_batch_file(binary)


def test_durations() -> None:
    assert parse_duration("24h") == 86400 and parse_duration("90") == 90
    assert parse_duration("1.5m") == 90 and parse_duration("2w") == 14 * 86400
    for bad in ("soon", "-1h", "0", "h"):
        with pytest.raises(ConfigError, match="window"):
            parse_duration(bad, "completion window")


class Upper:
    def __init__(self, name: str) -> None:
        self.name = name

    def load(self, device: str) -> None:
        pass

    def run(self, batch: list[LLMJob]) -> list[Output]:
        outs = []
        for j in batch:
            text = j.prompt or (j.messages[-1].content if j.messages else "")
            if "boom" in text:
                outs.append(Output(error="engine said boom"))
            else:
                outs.append(
                    Output(
                        text=text.upper(),
                        finish_reason="stop",
                        prompt_tokens=2,
                        completion_tokens=3,
                    )
                )
        return outs

    def describe(self) -> dict[str, str]:
        return {"model": self.name, "weights": "0123456789abcdef0123"}


def flow(
    tmp_path: Path, lines: list[str], layout: str = "job"
) -> tuple[BatchService, BatchRunner, Client]:
    store, status = MemoryResultStore(), MemoryStatusStore()
    settings = SETTINGS.model_copy(update={"s3": SETTINGS.s3.model_copy(update={"layout": layout})})
    client = Client(settings, status_store=status, result_store=store)
    client._get_producer = lambda: _NullProducer()  # type: ignore[method-assign]
    client._topic = lambda kind: "topic"  # type: ignore[method-assign]
    service = client.batches()
    runner = BatchRunner(
        settings, store, status, EngineCache(Upper, "cpu"), on_groups_done=finalize_groups(service)
    )
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    return service, runner, client


class _NullProducer:
    """Stands in for the Kafka producer in this unit test; the jobs are run directly."""

    sent: ClassVar[list[bytes]] = []

    def send(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
    ) -> "_Done":
        assert dict(headers)["blaze-sent-with"].isdigit()
        self.sent.append(value)
        return _Done()

    def flush(self, timeout: float) -> None:
        pass


class _Done:
    def get(self, timeout: float) -> None:
        pass


@pytest.mark.parametrize("layout", ["job", "batch"])
def test_the_whole_batch_flow_in_memory(tmp_path: Path, layout: str) -> None:
    lines = [line(f"c{i}", chat(f"hello {i}")) for i in range(5)]
    lines.append(line("boom", chat("boom")))
    lines.append(line("bad", chat(max_tokens=0)))
    lines.append(line("gone", chat("never")))
    service, runner, client = flow(tmp_path, lines, layout)
    info = service.submit(tmp_path / "in.jsonl")
    assert info.status == "in_progress" and info.request_counts.total == 8
    assert info.request_counts.failed == 1  # the invalid line, known at once
    jobs = [json.loads(v) for v in _NullProducer.sent[-7:]]
    assert len(jobs) == 7
    assert client.cancel([jobs[-1]["job_id"]])[jobs[-1]["job_id"]] is JobState.CANCELLED
    assert service.refresh(info.id).status == "in_progress"
    with pytest.raises(BlazeError, match="in_progress"):
        service.download(info.id, tmp_path / "early")
    runner.run(batch_payload(jobs, batch_id="x1", queued_at=0.0))  # the last job finalizes
    done = service.load(info.id)
    assert done.status == "completed" and done.completed_at is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 3)
    files = service.download(info.id, tmp_path / "out")
    output = [json.loads(x) for x in (tmp_path / "out" / "output.jsonl").read_text().splitlines()]
    errors = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert len(files) == 3
    assert [o["custom_id"] for o in output] == [f"c{i}" for i in range(5)]
    first = output[0]["response"]
    assert first["status_code"] == 200 and first["body"]["object"] == "chat.completion"
    assert first["body"]["choices"][0]["message"]["content"] == "HELLO 0"
    assert first["body"]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    by_id = {e["custom_id"]: e for e in errors}
    assert set(by_id) == {"boom", "bad", "gone"}
    assert by_id["boom"]["response"]["status_code"] == 500
    assert by_id["boom"]["error"]["message"] == "engine said boom"
    assert by_id["bad"]["response"]["body"]["error"]["param"] == "max_new_tokens"
    assert by_id["gone"]["response"] is None and by_id["gone"]["error"]["code"] == "batch_cancelled"
    per_job = [k for k in client.result_store.objects if k.endswith("/result.json")]  # type: ignore[attr-defined]
    assert len(per_job) == (7 if layout == "job" else 0)
    doc = client.result(jobs[0]["job_id"])
    assert doc is not None and doc.text == "HELLO 0"  # type: ignore[union-attr]


def test_cancelling_a_batch_that_has_not_run(tmp_path: Path) -> None:
    service, runner, _ = flow(tmp_path, [line(f"c{i}", chat()) for i in range(3)])
    info = service.submit(tmp_path / "in.jsonl")
    jobs = [json.loads(v) for v in _NullProducer.sent[-3:]]
    ended = service.cancel(info.id)
    assert ended.status == "cancelled" and ended.request_counts.failed == 3
    summary = runner.run(batch_payload(jobs, batch_id="late", queued_at=0.0))
    assert summary["cancelled"] == 3 and summary["succeeded"] == 0
    assert service.refresh(info.id).status == "cancelled"


def test_a_file_with_no_valid_line_fails_the_batch(tmp_path: Path) -> None:
    service, _, _ = flow(tmp_path, ["{oops", line("x", chat(max_tokens=-5))])
    info = service.submit(tmp_path / "in.jsonl")
    assert info.status == "failed" and info.errors is not None
    assert [e["line"] for e in info.errors["data"]] == [1, 2]
    with pytest.raises(BlazeError, match="unknown batch"):
        service.load("batch_nope")


def test_a_batch_past_its_window_expires_and_its_unrun_requests_say_so(tmp_path: Path) -> None:
    service, runner, _ = flow(tmp_path, [line(f"c{i}", chat(f"x{i}")) for i in range(4)])
    info = service.submit(tmp_path / "in.jsonl", completion_window="1h")
    jobs = [json.loads(v) for v in _NullProducer.sent[-4:]]
    runner.run(batch_payload(jobs[:2], batch_id="early", queued_at=0.0))
    service._save(info.model_copy(update={"expires_at": info.created_at - 1}))
    ended = service.refresh(info.id)
    assert ended.status == "expired" and ended.expired_at is not None
    assert (ended.request_counts.completed, ended.request_counts.failed) == (2, 2)
    errors = service.store.get(ended.error_file_id or "") or b""
    assert {json.loads(x)["error"]["code"] for x in errors.splitlines()} == {"batch_expired"}


def test_embeddings_answer_in_the_encoding_the_request_asked_for() -> None:
    import base64
    import struct

    from pipelines.openai.outputs import response_body
    from pipelines.results import EmbedResult

    def emb(**extra: object) -> object:
        body = {"model": "m", "input": ["a", "b"], **extra}
        return parse_request(1, line("e", body, "/v1/embeddings"), "b")

    packed, plain, default = emb(encoding_format="base64"), emb(encoding_format="float"), emb()
    assert packed.job is not None and packed.job.tags["encoding_format"] == "base64"  # type: ignore[attr-defined]
    assert packed.job.tags["batch_id"] == "b"  # type: ignore[attr-defined]
    assert plain.job is not None and "encoding_format" not in plain.job.tags  # type: ignore[attr-defined]
    assert default.job is not None and "encoding_format" not in default.job.tags  # type: ignore[attr-defined]
    wrong = emb(encoding_format="int8")
    assert wrong.error is not None and wrong.error.param == "encoding_format"  # type: ignore[attr-defined]
    assert "'float' or 'base64'" in wrong.error.message  # type: ignore[attr-defined]

    vectors = [[0.25, -1.5, 3.0], [1e-3, 0.0, -2.0]]
    doc = EmbedResult(job_id="j", status="succeeded", model="m", vectors=vectors, dim=3)
    as_floats = response_body("/v1/embeddings", doc, "bucket")["data"]
    assert [d["embedding"] for d in as_floats] == vectors
    doc64 = doc.model_copy(update={"tags": {"encoding_format": "base64"}})
    as_b64 = response_body("/v1/embeddings", doc64, "bucket")["data"]
    decoded = [list(struct.unpack("<3f", base64.b64decode(d["embedding"]))) for d in as_b64]
    assert decoded == [[struct.unpack("<f", struct.pack("<f", x))[0] for x in v] for v in vectors]
