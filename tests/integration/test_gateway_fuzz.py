"""Hostile requests get 4xx, never 5xx, and the gateway stays up: every route of the OpenAPI
document fuzzed (schemathesis, positive and negative data, with and without a valid key),
then the hand-made attacks: oversized bodies, a 100,000-line batch file, broken multipart,
path traversal, header and query injection."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from blaze.gateway.app import create_app
from blaze.gateway.core import Gateway
from pipelines.settings import BlazeSettings

FUZZ_EXAMPLES = 30
TIMEOUT_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


@pytest.fixture
def fuzz_app(settings: BlazeSettings) -> Iterator[tuple[TestClient, Gateway, dict[str, str]]]:
    quick = settings.model_copy(
        update={"gateway": settings.gateway.model_copy(update={"interactive_timeout_s": 0.3})}
    )
    gw = Gateway(quick)
    app = create_app(quick, gw)
    _, key = gw.keys.create("fuzzer", "submit,read", requests_per_s=10_000)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield http, gw, {"Authorization": f"Bearer {key}"}


def test_every_route_fuzzed_answers_4xx_never_5xx(
    fuzz_app: tuple[TestClient, Gateway, dict[str, str]],
) -> None:
    http, _, auth = fuzz_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", http.app)
    codes: Counter[tuple[str, int]] = Counter()
    server_errors: list[str] = []
    timeouts = 0

    def fuzz(op: schemathesis.APIOperation, headers: dict[str, str]) -> None:
        @hsettings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
        @given(case=op.as_strategy())
        def run(case: schemathesis.Case) -> None:
            nonlocal timeouts
            response = case.call(headers=headers)
            codes[(op.label, response.status_code)] += 1
            body = response.text
            if response.status_code == 504 and op.path in TIMEOUT_ROUTES:
                timeouts += 1  # a valid request whose job no worker ran in 0.3 s
            elif response.status_code >= 500:
                server_errors.append(f"{op.label} -> {response.status_code}: {body[:300]}")
            assert "Traceback" not in body
            kind = response.headers.get("content-type") or [""]
            if (kind[0] if isinstance(kind, list) else kind).startswith("application/json"):
                json.loads(body)

        run()

    for result in schema.get_all_operations():
        op = result.ok()
        for headers in (auth, {}):
            fuzz(op, headers)
    total = sum(codes.values())
    by_class = Counter(f"{code // 100}xx" for (_, code) in codes.elements())
    print(
        f"fuzzed {total} requests over {len({op for op, _ in codes})} routes: "
        f"{dict(by_class)}; interactive 504s (no worker): {timeouts}"
    )
    assert not server_errors, server_errors[:5]
    assert total > 500
    assert http.get("/healthz").status_code == 200


def test_hand_made_attacks_get_4xx(
    fuzz_app: tuple[TestClient, Gateway, dict[str, str]],
) -> None:
    http, _, auth = fuzz_app
    json_h = {**auth, "content-type": "application/json"}
    # bodies over the limits, announced or streamed
    assert http.post("/v1/jobs", content=b"[" * (4097 << 10), headers=json_h).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(80):
            yield b"x" * 65536

    assert http.post("/v1/jobs", content=chunks(), headers=json_h).status_code == 413
    # a 100,000-line batch file is refused at upload, naming the limit
    big = b"".join(
        b'{"custom_id":"c%d","method":"POST","url":"/v1/completions","body":{}}\n' % i
        for i in range(100_000)
    )
    r = http.post(
        "/v1/files", headers=auth, files={"file": ("big.jsonl", big)}, data={"purpose": "batch"}
    )
    assert r.status_code == 400 and "50000" in r.json()["error"]["message"], r.text
    # malformed multipart, a missing file, a wrong purpose, binary content
    bad = http.post(
        "/v1/files",
        headers={**auth, "content-type": "multipart/form-data; boundary=xyz"},
        content=b'--xyz\r\nContent-Disposition: form-data; name="file"\r\n\r\nunterminated',
    )
    assert 400 <= bad.status_code < 500, bad.text
    assert http.post("/v1/files", headers=auth, data={"purpose": "batch"}).status_code == 422
    wrong = http.post(
        "/v1/files",
        headers=auth,
        files={"file": ("a.jsonl", b"{}\n")},
        data={"purpose": "fine-tune"},
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "purpose"
    binary = http.post(
        "/v1/files",
        headers=auth,
        files={"file": ("a.bin", b"\xff\xfe\x00")},
        data={"purpose": "batch"},
    )
    assert binary.status_code == 400
    # ids that try to leave their prefix, or carry control characters
    for path in (
        "/v1/files/..%2F..%2Fblaze%2Fsecrets",
        "/v1/files/file-..%2F..%2Fx/content",
        "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
        "/v1/jobs/%2e%2e/result",
        "/v1/batches/batch_..%2Fx",
        "/v1/files/file-%00",
        "/v1/jobs/a%0d%0aX-Injected:1",
    ):
        r = http.get(path, headers=auth)
        assert r.status_code == 404 and "x-injected" not in r.headers, (path, r.status_code)
    # header and query injection
    r = http.get("/v1/jobs/events", params={"ids": "a\r\nX-Injected: 1"}, headers=auth)
    assert r.status_code == 422 and "x-injected" not in r.headers
    r = http.get(
        "/v1/batches", params={"limit": "1; DROP TABLE", "after": "x" * 5000}, headers=auth
    )
    assert r.status_code == 422
    for header in ("Bearer", "Basic abc", "Bearer " + "A" * 10_000, "Bearer eyJ.eyJ.sig"):
        r = http.get("/v1/models", headers={"Authorization": header})
        assert r.status_code == 401, header
    # a batch over a file of only invalid lines fails, naming them (OpenAI's errors list)
    up = http.post(
        "/v1/files",
        headers=auth,
        files={"file": ("x.jsonl", b"not json\n[]\n")},
        data={"purpose": "batch"},
    ).json()
    b = http.post(
        "/v1/batches",
        headers=auth,
        json={"input_file_id": up["id"], "endpoint": "/v1/completions", "completion_window": "24h"},
    )
    assert b.status_code == 200 and b.json()["status"] == "failed"
    assert b.json()["errors"]["data"][0]["code"] == "invalid_json"
    assert http.get("/healthz").status_code == 200
