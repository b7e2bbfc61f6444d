"""The gateway as users meet it: started by `blaze stack up --with-gateway`, keys from
`blaze keys`, the official `openai` client and curl against it, a worker and a consumer
logging at DEBUG, and afterwards no secret anywhere in logs, objects, Redis or the audit."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
import redis
from kafka import KafkaConsumer

from pipelines.settings import read_stack_secrets
from tests.e2e.conftest import User, free_port, stack_s3, wait_for_line

pytestmark = pytest.mark.e2e
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(marker: str) -> str:
    """The fenced code block right after ``<!-- marker -->`` in the README."""
    text = README.read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    match = re.search(r"```\w*\n(.*?)```", after, re.S)
    assert match, marker
    return match.group(1)


def redis_value(r: redis.Redis, key: bytes) -> bytes:
    """Whatever a Redis key holds, as bytes."""
    kind = r.type(key).decode()
    if kind == "string":
        return r.get(key) or b""
    if kind == "hash":
        return b" ".join(a + b"=" + b for a, b in r.hgetall(key).items())
    if kind == "set":
        return b" ".join(r.smembers(key))
    if kind == "list":
        return b" ".join(r.lrange(key, 0, -1))
    if kind == "zset":
        return b" ".join(r.zrange(key, 0, -1))
    return b""


def line(cid: str, body: dict[str, object]) -> str:
    row = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(row) + "\n"


def chat(text: str, **extra: object) -> dict[str, object]:
    return {"model": "tiny", "messages": [{"role": "user", "content": text}], **extra}


def test_openai_client_and_curl_through_the_gateway_leak_no_secret(
    user: User, tmp_path: Path
) -> None:
    port = free_port()
    user.env.update(BLAZE_GATEWAY__PORT=str(port), BLAZE_GATEWAY__LOG_LEVEL="DEBUG")
    url = f"http://127.0.0.1:{port}"
    user.ok("stack", "up", "--with-gateway", timeout=180)
    user.ok("models", "make-tiny", str(tmp_path / "models" / "tiny"))
    worker_log, consumer_log = tmp_path / "w.log", tmp_path / "c.log"
    user.start(
        "worker", "--device", "cpu", "--dtype", "float32", "--loglevel", "DEBUG", log=worker_log
    )
    user.start("consume", "--loglevel", "DEBUG", log=consumer_log)
    wait_for_line(worker_log, " ready.", 120)
    wait_for_line(consumer_log, "intake joined group", 90)

    alice, bob = user.key("alice", "submit,read"), user.key("bob", "submit,read")
    reader, slow = user.key("reader", "read"), user.key("slow", "read", "--rate", "1")
    listed = user.ok("keys", "list", "--json")
    assert {k["name"] for k in json.loads(listed)} == {"alice", "bob", "reader", "slow"}
    assert alice not in listed and alice.split("_", 2)[2] not in listed
    answers: list[str] = []  # every body the gateway sent, for the secret grep

    # -- the OpenAI client's batch code, with invalid lines among the requests -------------
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=alice, max_retries=0)
    rows = [line(f"ok-{i}", chat(f"question {i}", max_tokens=3)) for i in range(6)]
    rows.insert(2, line("bad-tokens", chat("x", max_tokens=-1)))
    rows.insert(4, line("bad-param", chat("x", logprobs=True)))
    upload = client.files.create(
        file=("requests.jsonl", io.BytesIO("".join(rows).encode())), purpose="batch"
    )
    assert upload.purpose == "batch" and upload.bytes == len("".join(rows).encode())
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 8
    deadline = time.monotonic() + 180
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts.completed == 6 and batch.request_counts.failed == 2
    output = client.files.content(batch.output_file_id).text
    answers.append(output)
    done = [json.loads(x) for x in output.splitlines()]
    assert [d["custom_id"] for d in done] == [f"ok-{i}" for i in range(6)]
    assert all(d["response"]["status_code"] == 200 for d in done)
    errors = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["bad-tokens", "bad-param"]
    assert errors[1]["response"]["body"]["error"]["param"] == "logprobs"
    with httpx.stream(
        "GET",
        f"{url}/v1/jobs/events",
        params={"group": batch.id},
        headers={"Authorization": f"Bearer {alice}"},
        timeout=30,
    ) as events:
        stream = "".join(events.iter_text())
    assert "event: progress" in stream and stream.rstrip().split("\n\n")[-1].startswith(
        "event: end"
    )
    page = client.batches.list(limit=10)
    assert [b.id for b in page.data] == [batch.id]
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert isinstance(reply.choices[0].message.content, str) and reply.usage is not None
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    # the client asks for base64 vectors unless told otherwise, and decodes them itself
    packed = client.embeddings.create(model="all-minilm-l6-v2", input=["a queue", "a worker"])
    floats = client.embeddings.create(
        model="all-minilm-l6-v2", input=["a queue", "a worker"], encoding_format="float"
    )
    assert [len(d.embedding) for d in packed.data] == [384, 384]
    for a, b in zip(packed.data, floats.data, strict=True):
        assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding, strict=True)) < 1e-6

    # -- a cancelled batch --------------------------------------------------------------------
    many = "".join(line(f"c-{i}", chat(f"q {i}", max_tokens=40)) for i in range(40))
    up2 = client.files.create(file=("many.jsonl", io.BytesIO(many.encode())), purpose="batch")
    b2 = client.batches.create(
        input_file_id=up2.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    b2 = client.batches.cancel(b2.id)
    assert b2.status in ("cancelling", "cancelled")
    while b2.status != "cancelled":
        assert time.monotonic() < deadline + 120, b2
        time.sleep(0.5)
        b2 = client.batches.retrieve(b2.id)
    assert b2.request_counts.total == 40

    # -- who may do what ----------------------------------------------------------------------
    with pytest.raises(openai.PermissionDeniedError):
        openai.OpenAI(base_url=f"{url}/v1", api_key=reader, max_retries=0).files.create(
            file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="batch"
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{url}/v1", api_key="bz_0123456789ab_" + "x" * 43, max_retries=0
        ).models.list()
    other = openai.OpenAI(base_url=f"{url}/v1", api_key=bob, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(batch.output_file_id)
    assert other.batches.list().data == []
    limited = openai.OpenAI(base_url=f"{url}/v1", api_key=slow, max_retries=0)
    with pytest.raises(openai.RateLimitError) as hit:
        for _ in range(5):
            limited.models.list()
    assert int(hit.value.response.headers["retry-after"]) >= 1
    answers.append(hit.value.response.text)

    # -- the README's curl lines and its openai example, as written ---------------------------
    env = {**os.environ, "BLAZE_URL": url, "BLAZE_KEY": alice, "BLAZE_MODEL": "tiny"}
    curl = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", readme_block("gateway-curl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answers.append(curl.stdout)
    assert '"job_id":"readme-1"' in curl.stdout and "event: end" in curl.stdout
    assert json.loads(curl.stdout.strip().splitlines()[-1])["status"] == "succeeded"
    example = subprocess.run(
        [os.sys.executable, "-c", readme_block("gateway-openai")],  # type: ignore[attr-defined]
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    assert [ln.split()[0] for ln in example.stdout.splitlines()[:3]] == ["q0", "q1", "q2"]

    # -- a cancelled job and an admin's view, over plain HTTP -------------------------------------
    h = {"Authorization": f"Bearer {alice}"}
    sent = httpx.post(
        f"{url}/v1/jobs",
        headers=h,
        timeout=30,
        json={
            "jobs": [
                {
                    "kind": "llm",
                    "model": "tiny",
                    "prompt": "x",
                    "job_id": "to-cancel",
                    "max_new_tokens": 64,
                }
            ]
        },
    )
    assert sent.status_code == 202
    cancel = httpx.post(f"{url}/v1/jobs/to-cancel/cancel", headers=h, timeout=30)
    assert cancel.json()["state"] in ("cancelled", "running", "succeeded")
    answers += [sent.text, cancel.text]

    # -- a revoked key stops working on every replica within gateway.key_cache_s -------------
    assert "revoked" in user.ok("keys", "revoke", "bob")
    time.sleep(2.5)
    with pytest.raises(openai.AuthenticationError):
        other.models.list()

    # -- the audit topic holds the mutating calls, attributed ---------------------------------
    audit = KafkaConsumer(
        "e2e.audit",
        bootstrap_servers=f"127.0.0.1:{user.ports['kafka_port']}",  # type: ignore[attr-defined]
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    records = [json.loads(m.value) for m in audit]
    audit.close()
    actions = {(r["action"], r["actor"]["name"] if r["actor"] else None) for r in records}
    assert ("POST /v1/batches", "alice") in actions
    assert ("POST /v1/files", "reader") in actions  # refused calls are audited too
    assert any(r["outcome"] == 403 for r in records)

    # -- no secret anywhere ---------------------------------------------------------------------
    state = Path(user.env["BLAZE_STACK__STATE_DIR"])
    found = read_stack_secrets(state)
    secrets = {
        "S3 secret": found["s3_secret_key"],
        "Redis password": found["redis_password"],
        **{f"API key {n}": k for n, k in (("alice", alice), ("bob", bob), ("reader", reader))},
    }
    gateway_log = (state / "logs" / "gateway.log").read_text(errors="replace")
    assert "DEBUG" in gateway_log and "audit" in gateway_log
    haystacks: dict[str, bytes] = {
        str(p): p.read_bytes() for p in [*(state / "logs").glob("*.log"), worker_log, consumer_log]
    }
    haystacks["answers"] = "\n".join(answers).encode()
    haystacks["audit"] = json.dumps(records).encode()
    s3 = stack_s3(user)
    for bucket in ("blaze-results", "blaze-kafka"):
        for obj in s3.list_objects(bucket, recursive=True):
            haystacks[f"s3://{bucket}/{obj.object_name}"] = s3.get_object(
                bucket, obj.object_name
            ).read()
    r = redis.Redis(port=user.ports["redis_port"], password=found["redis_password"])  # type: ignore[attr-defined]
    for k in r.scan_iter(count=1000):
        haystacks[f"redis {k.decode()}"] = redis_value(r, k) + k
    r.close()
    assert len(haystacks) > 50
    leaks = [
        f"{what} in {where}"
        for where, data in haystacks.items()
        for what, secret in secrets.items()
        if secret.encode() in data
    ]
    assert not leaks, leaks
    assert oct((state / "secrets.json").stat().st_mode & 0o777) == "0o600"
