"""OpenAI-style batches and the results commands, through the CLI on a stack of their own."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import User, wait_for_line

pytestmark = pytest.mark.e2e


def request(custom_id: str, body: dict[str, object], url: str = "/v1/chat/completions") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}) + "\n"


def chat(text: str, **extra: object) -> dict[str, object]:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], **extra}


def test_an_openai_batch_file_of_50_with_3_invalid_requests(user: User, tmp_path: Path) -> None:
    user.ok("stack", "up", timeout=120)
    user.ok("models", "make-tiny", str(tmp_path / "models" / "tiny"))
    user.ok("models", "make-tiny", "--kind", "diffusion", str(tmp_path / "models" / "sd"))
    worker = user.start("worker", "--device", "cpu", "--dtype", "float32", log=tmp_path / "w.log")
    consumer = user.start("consume", log=tmp_path / "c.log")
    wait_for_line(tmp_path / "w.log", " ready.", 120)
    wait_for_line(tmp_path / "c.log", "intake joined group", 90)

    lines = [request(f"chat-{i}", chat(f"question {i}", max_tokens=3)) for i in range(41)]
    lines += [
        request(
            f"text-{i}",
            {"model": "tiny", "prompt": f"once {i}", "max_tokens": 2},
            "/v1/completions",
        )
        for i in range(3)
    ]
    lines += [
        request(
            f"image-{i}",
            {"model": "sd", "prompt": "a fox", "size": "64x64", "steps": 2},
            "/v1/images/generations",
        )
        for i in range(3)
    ]
    invalid = {
        "bad-tokens": request("bad-tokens", chat("x", max_tokens=-1)),
        "bad-role": request("bad-role", {"model": "tiny", "messages": [{"role": "tool"}]}),
        "bad-model": request("bad-model", {**chat("x"), "model": "gpt-4o-mini"}),
    }
    lines[10:10] = list(invalid.values())
    batch_file = tmp_path / "batch.jsonl"
    batch_file.write_text("".join(lines) + "\n")
    assert len(lines) == 50

    batch_id = user.ok("batch", "submit", str(batch_file)).strip()
    assert batch_id.startswith("batch_")
    waited = user.run("batch", "wait", batch_id, "--timeout", "180", timeout=200)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    status = json.loads(user.ok("batch", "status", batch_id, "--json"))
    assert status["status"] == "completed" and status["completed_at"]
    assert status["request_counts"] == {"total": 50, "completed": 47, "failed": 3}

    user.ok("batch", "download", batch_id, "-o", str(tmp_path / "out"))
    output = [json.loads(x) for x in (tmp_path / "out" / "output.jsonl").read_text().splitlines()]
    errors = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    valid_ids = [
        json.loads(x)["custom_id"] for x in lines if json.loads(x)["custom_id"] not in invalid
    ]
    assert [o["custom_id"] for o in output] == valid_ids
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in output)
    chat_body = output[0]["response"]["body"]
    assert chat_body["object"] == "chat.completion" and chat_body["usage"]["completion_tokens"] <= 3
    assert {e["custom_id"] for e in errors} == set(invalid)
    by_id = {e["custom_id"]: e for e in errors}
    assert by_id["bad-tokens"]["response"]["body"]["error"]["param"] == "max_new_tokens"
    assert "unknown llm model 'gpt-4o-mini'" in by_id["bad-model"]["error"]["message"]

    # an image request's files, and a link to one for someone without credentials
    image_job = next(o for o in output if o["custom_id"] == "image-0")["response"]["request_id"]
    user.ok("results", "get", image_job, "-o", str(tmp_path / "got"))
    got = sorted(p.name for p in (tmp_path / "got" / image_job).iterdir())
    assert got == ["image-0.png", "result.json"]
    url = user.ok("results", "url", image_job, "--expires", "10m").strip()
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == (tmp_path / "got" / image_job / "image-0.png").read_bytes()
    missing = user.run("results", "get", "no-such-job", "-o", str(tmp_path / "got"))
    assert (
        missing.returncode == 1 and "no-such-job: no result yet (state: unknown)" in missing.stderr
    )

    # with the consumer stopped, a second batch waits on Kafka and can be cancelled whole
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(60) == 0
    second = tmp_path / "second.jsonl"
    second.write_text("".join(request(f"later-{i}", chat(f"later {i}")) for i in range(10)))
    later = user.ok("batch", "submit", str(second)).strip()
    assert "in_progress" in user.ok("batch", "status", later)
    assert "cancelled" in user.ok("batch", "cancel", later)
    user.ok("batch", "download", later, "-o", str(tmp_path / "later"))
    cancelled = (tmp_path / "later" / "errors.jsonl").read_text().splitlines()
    assert len(cancelled) == 10
    assert {json.loads(x)["error"]["code"] for x in cancelled} == {"batch_cancelled"}
    assert (tmp_path / "later" / "output.jsonl").read_text() == ""

    # a job that already ran cannot be cancelled, and says so
    res = user.run("cancel", image_job)
    assert res.returncode == 1 and "already succeeded" in res.stderr
    assert "completed" in user.ok("batch", "list")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
