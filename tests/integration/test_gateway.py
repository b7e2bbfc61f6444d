"""The gateway in-process (FastAPI's test client) on the real stack: keys, scopes, tenants,
limits, the jobs API with its event stream, and every error as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from blaze.gateway.app import create_app
from blaze.gateway.core import Gateway
from pipelines.settings import BlazeSettings
from pipelines.stores import connect
from pipelines.stores.redis_client import redis_client
from pipelines.stores.status import JobState, StatusUpdate
from pipelines.stores.status_redis import RedisStatusStore, job_key
from tests.integration.conftest import running_intake, running_worker


class Api:
    """The test client with one key per tenant and role."""

    def __init__(self, http: TestClient, gw: Gateway) -> None:
        self.http = http
        self.gw = gw

    def key(self, name: str, scopes: str, **limits: float) -> dict[str, str]:
        _, key = self.gw.keys.create(name, scopes, **limits)  # type: ignore[arg-type]
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(settings: BlazeSettings) -> Iterator[Api]:
    gw = Gateway(settings)
    with TestClient(create_app(settings, gw), raise_server_exceptions=False) as http:
        yield Api(http, gw)


def llm(i: int, **extra: object) -> dict[str, object]:
    return {"kind": "llm", "model": "tiny", "prompt": f"hello {i}", "max_new_tokens": 3, **extra}


def test_jobs_api_runs_jobs_for_their_owner_only(api: Api, settings: BlazeSettings) -> None:
    alice = api.key("alice", "submit,read")
    bob = api.key("bob", "submit,read")
    with running_worker(settings), running_intake(settings):
        r = api.http.post("/v1/jobs", json={"jobs": [llm(i) for i in range(5)]}, headers=alice)
        assert r.status_code == 202, r.text
        ids = [j["job_id"] for j in r.json()["data"]]
        assert r.headers["x-ratelimit-limit-requests"] == "100"
        # the event stream follows the jobs to the end
        with api.http.stream(
            "GET", "/v1/jobs/events", params={"ids": ",".join(ids)}, headers=alice
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            text = "".join(stream.iter_text())
        events = [b for b in text.split("\n\n") if b.startswith("event:")]
        assert events[-1].startswith("event: end")
        finals = [
            json.loads(e.split("data: ", 1)[1])
            for e in events
            if e.startswith("event: status") and '"succeeded"' in e
        ]
        assert {f["job_id"] for f in finals} == set(ids)
        st = api.http.get(f"/v1/jobs/{ids[0]}", headers=alice).json()
        assert st["state"] == "succeeded" and st["attempts"] == 1
        doc = api.http.get(f"/v1/jobs/{ids[0]}/result", headers=alice).json()
        assert doc["status"] == "succeeded" and doc["job_id"] == ids[0]
        # an image job's result names presigned URLs a plain HTTP client can fetch
        image = {
            "kind": "diffusion",
            "model": "sd-tiny",
            "prompt": "a fox",
            "width": 64,
            "height": 64,
            "num_inference_steps": 2,
            "num_images": 2,
            "job_id": "img-1",
        }
        assert api.http.post("/v1/jobs", json={"jobs": [image]}, headers=alice).status_code == 202
        with api.http.stream("GET", "/v1/jobs/events", params={"ids": "img-1"}, headers=alice) as s:
            assert "event: end" in "".join(s.iter_text())
        pictures = api.http.get("/v1/jobs/img-1/result", headers=alice).json()["images"]
        assert len(pictures) == 2
        for picture in pictures:
            assert httpx.get(picture["url"], timeout=10).content[:4] == b"\x89PNG"
        # the interactive routes answer in OpenAI's shapes
        text = api.http.post(
            "/v1/completions",
            json={"model": "tiny", "prompt": "once", "max_tokens": 2},
            headers=alice,
        )
        assert text.status_code == 200, text.text
        assert (
            text.json()["object"] == "text_completion"
            and "x-ratelimit-remaining-jobs" in text.headers
        )
        vectors = api.http.post(
            "/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ["a", "b"]}, headers=alice
        ).json()
        assert [len(d["embedding"]) for d in vectors["data"]] == [384, 384]
    # another tenant sees nothing of them, as if they did not exist
    for path in (f"/v1/jobs/{ids[0]}", f"/v1/jobs/{ids[0]}/result"):
        miss = api.http.get(path, headers=bob)
        assert miss.status_code == 404
        assert miss.json() == api.http.get("/v1/jobs/no-such-job", headers=bob).json() | {
            "error": miss.json()["error"] | {"message": miss.json()["error"]["message"]}
        }
    assert api.http.post(f"/v1/jobs/{ids[0]}/cancel", headers=bob).status_code == 404
    events = api.http.get("/v1/jobs/events", params={"ids": ids[0]}, headers=bob)
    assert events.status_code == 404
    # nor can a job id of theirs be taken over
    taken = api.http.post("/v1/jobs", json={"jobs": [llm(0, job_id=ids[0])]}, headers=bob)
    assert taken.status_code == 409 and taken.json()["error"]["field"] == "job_id"


def test_cancel_before_a_worker_runs_it(api: Api) -> None:
    alice = api.key("alice", "submit,read")
    r = api.http.post("/v1/jobs", json={"jobs": [llm(1, job_id="to-cancel")]}, headers=alice)
    assert r.status_code == 202
    c = api.http.post("/v1/jobs/to-cancel/cancel", headers=alice)
    assert c.json() == {"job_id": "to-cancel", "state": "cancelled"}
    doc = api.http.get("/v1/jobs/to-cancel/result", headers=alice).json()
    assert doc["status"] == "cancelled"


def test_keys_scopes_and_errors_are_json(api: Api) -> None:
    reader = api.key("reader", "read")
    assert api.http.get("/v1/jobs/x").status_code == 401
    bad = api.http.get("/v1/jobs/x", headers={"Authorization": "Bearer bz_000000000000_nope"})
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
    denied = api.http.post("/v1/jobs", json={"jobs": [llm(1)]}, headers=reader)
    assert denied.status_code == 403
    assert api.http.get("/v1/keys", headers=reader).status_code == 403
    submitter = api.key("sub", "submit")
    bad_job = api.http.post(
        "/v1/jobs", json={"jobs": [llm(1, max_new_tokens=0)]}, headers=submitter
    )
    assert bad_job.status_code == 422
    assert bad_job.json()["error"]["field"] == "jobs[0].llm.max_new_tokens", bad_job.json()
    reserved = api.http.post(
        "/v1/jobs", json={"jobs": [llm(1, tags={"batch_id": "batch_x"})]}, headers=submitter
    )
    assert reserved.status_code == 422 and "reserved" in reserved.json()["error"]["message"]
    garbage = api.http.post(
        "/v1/jobs", content=b"{not json", headers={**submitter, "content-type": "application/json"}
    )
    assert garbage.status_code == 400 and garbage.json()["error"]["type"]
    huge = api.http.post(
        "/v1/jobs",
        content=b" " * (5 << 20),
        headers={**submitter, "content-type": "application/json"},
    )
    assert huge.status_code == 413 and "limit" in huge.json()["error"]["message"]
    # OpenAI routes answer in OpenAI's shape
    gone = api.http.get("/v1/batches/batch_000000000000000000000000", headers=reader)
    assert gone.status_code == 404
    assert set(gone.json()["error"]) == {"message", "type", "param", "code"}
    for path in ("/v1/files/..%2F..%2Fetc", "/v1/jobs/..%2Fsecret", "/v1/files/%00"):
        assert api.http.get(path, headers=reader).status_code == 404


def test_rate_limits_and_open_job_caps_refuse_with_retry_after(api: Api) -> None:
    slow = api.key("slow", "submit,read", requests_per_s=2)
    codes = [api.http.get("/v1/jobs/nope", headers=slow) for _ in range(6)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    first = limited[0]
    assert int(first.headers["retry-after"]) >= 1
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.json()["error"]["type"] == "rate_limit_error"
    time.sleep(1.1)
    assert api.http.get("/v1/jobs/nope", headers=slow).status_code == 404
    capped = api.key("capped", "submit", max_open_jobs=3)
    ok = api.http.post("/v1/jobs", json={"jobs": [llm(i) for i in range(3)]}, headers=capped)
    assert ok.status_code == 202
    over = api.http.post("/v1/jobs", json={"jobs": [llm(9)]}, headers=capped)
    assert over.status_code == 429 and "cap" in over.json()["error"]["message"]
    per_min = api.key("permin", "submit", jobs_per_min=4)
    assert (
        api.http.post("/v1/jobs", json={"jobs": [llm(i) for i in range(4)]}, headers=per_min)
    ).status_code == 202
    again = api.http.post("/v1/jobs", json={"jobs": [llm(5)]}, headers=per_min)
    assert again.status_code == 429 and "x-ratelimit-remaining-jobs" in again.headers
    # submissions take their request from the same bucket as every other call
    once = api.key("once", "submit", requests_per_s=1)
    first_ok = api.http.post("/v1/jobs", json={"jobs": [llm(6)]}, headers=once)
    assert first_ok.status_code == 202
    assert first_ok.headers["x-ratelimit-remaining-requests"] == "0"
    refused = api.http.post("/v1/jobs", json={"jobs": [llm(7, job_id="never")]}, headers=once)
    assert (
        refused.status_code == 429 and "requests per second" in refused.json()["error"]["message"]
    )
    assert api.gw.status.get(["never"])["never"] is None  # nothing of it was kept
    # requests refused as invalid count too: a flood of bad bodies meets the same limit
    flood = api.key("flood", "submit", requests_per_s=1)
    bad_bodies = [
        api.http.post("/v1/jobs", json={"jobs": [{"kind": "llm"}]}, headers=flood) for _ in range(3)
    ]
    assert bad_bodies[0].status_code == 422
    assert 429 in [r.status_code for r in bad_bodies]
    bad_chat = [
        api.http.post("/v1/chat/completions", json={"model": "tiny"}, headers=flood)
        for _ in range(3)
    ]
    assert {r.status_code for r in bad_chat} <= {400, 429} and 429 in {
        r.status_code for r in bad_chat
    }


def test_jwt_bearer_tokens_map_claims_to_scopes(settings: BlazeSettings) -> None:
    import jwt

    gws = settings.gateway.model_copy(
        update={"jwt_secret": SecretStr("s" * 32), "jwt_audience": "blaze", "jwt_issuer": "ci"}
    )
    conf = settings.model_copy(update={"gateway": gws})
    with TestClient(create_app(conf), raise_server_exceptions=False) as http:

        def token(**claims: object) -> dict[str, str]:
            base = {"sub": "svc-a", "aud": "blaze", "iss": "ci", "exp": time.time() + 60}
            raw = jwt.encode({**base, **claims}, "s" * 32, algorithm="HS256")
            return {"Authorization": f"Bearer {raw}"}

        assert http.get("/v1/models", headers=token(scope="read")).status_code == 200
        assert (
            http.post("/v1/jobs", json={"jobs": [llm(1)]}, headers=token(scope="read")).status_code
            == 403
        )
        assert (
            http.post(
                "/v1/jobs", json={"jobs": [llm(1)]}, headers=token(scope="submit read")
            ).status_code
            == 202
        )
        for bad in (token(aud="other"), token(iss="x"), token(exp=time.time() - 5)):
            r = http.get("/v1/models", headers=bad)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
        forged = jwt.encode({"sub": "x", "exp": time.time() + 60}, "wrong" * 8, algorithm="HS256")
        assert (
            http.get("/v1/models", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
        )


def test_a_publishing_round_lands_in_one_partition(settings: BlazeSettings) -> None:
    from kafka import KafkaConsumer, TopicPartition

    from pipelines.client import Client
    from pipelines.jobs import LLMJob

    jobs = [LLMJob(model="tiny", prompt=f"p{i}", job_id=f"round-{i}") for i in range(12)]
    with Client(settings) as client:
        client.submit_many(jobs[:6], together=1)
        client.submit_many(jobs[6:], together=2)
    topic = settings.jobs_topic("llm")
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, consumer_timeout_ms=3000)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    where = {m.key.decode(): m.partition for m in consumer}
    consumer.close()
    assert set(where) == {j.job_id for j in jobs}  # every job published, keys kept
    assert len({where[f"round-{i}"] for i in range(6)}) == 1
    assert len({where[f"round-{i}"] for i in range(6, 12)}) == 1
    assert where["round-0"] != where["round-6"]  # the next round, the next partition


def test_admins_manage_keys_and_read_dead_letters_over_http(api: Api) -> None:
    admin = api.key("ops", "admin")
    made = api.http.post(
        "/v1/keys", json={"name": "svc", "scopes": ["read"], "requests_per_s": 5}, headers=admin
    )
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    listed = api.http.get("/v1/keys", headers=admin).json()["data"]
    assert {k["name"] for k in listed} >= {"ops", "svc"}
    assert key not in json.dumps(listed)
    svc = {"Authorization": f"Bearer {key}"}
    assert api.http.get("/v1/models", headers=svc).status_code == 200
    gone = api.http.delete(f"/v1/keys/{made.json()['key_id']}", headers=admin)
    assert gone.json() == {"revoked": [made.json()["key_id"]]}
    api.gw.keys._cache.clear()  # what every replica does within gateway.key_cache_s
    assert api.http.get("/v1/models", headers=svc).status_code == 401
    assert api.http.delete("/v1/keys/nobody", headers=admin).status_code == 404
    bad = api.http.post("/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=admin)
    assert bad.status_code == 400 and "scopes" in bad.json()["error"]["message"]
    letters = api.http.get("/v1/dead-letters", params={"limit": 5}, headers=admin)
    assert letters.status_code == 200 and letters.json()["object"] == "list"


def test_rs256_tokens_from_a_public_key_file(settings: BlazeSettings, tmp_path: Path) -> None:
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(pem)
    gws = settings.gateway.model_copy(update={"jwt_public_key_file": tmp_path / "pub.pem"})
    conf = settings.model_copy(update={"gateway": gws})
    with TestClient(create_app(conf), raise_server_exceptions=False) as http:
        good = jwt.encode(
            {"sub": "svc-b", "scope": ["read"], "exp": time.time() + 60}, private, "RS256"
        )
        assert (
            http.get("/v1/models", headers={"Authorization": f"Bearer {good}"}).status_code == 200
        )
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = jwt.encode({"sub": "svc-b", "exp": time.time() + 60}, other, "RS256")
        r = http.get("/v1/models", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401
    # the same key as a JWKS file: the token's kid picks the key
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    gws = settings.gateway.model_copy(update={"jwt_public_key_file": tmp_path / "jwks.json"})
    with TestClient(create_app(settings.model_copy(update={"gateway": gws}))) as http:
        token = jwt.encode(
            {"sub": "svc-b", "scope": "read", "exp": time.time() + 60},
            private,
            "RS256",
            headers={"kid": "k1"},
        )
        assert (
            http.get("/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        )


def test_gateway_serves_https_with_tls_flags(settings: BlazeSettings, tmp_path: Path) -> None:
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from infra.stack import port_free
    from tests.conftest import settings_env

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    port = next(p for p in range(38_500, 39_000) if port_free(p))
    log = tmp_path / "gateway.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "blaze",
                "gateway",
                "--port",
                str(port),
                "--tls-cert",
                str(tmp_path / "cert.pem"),
                "--tls-key",
                str(tmp_path / "key.pem"),
            ],
            env=settings_env(settings),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=context, timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)  # plain HTTP: refused
    finally:
        proc.terminate()
        proc.wait(30)
    lone = subprocess.run(
        [sys.executable, "-m", "blaze", "gateway", "--tls-cert", str(tmp_path / "cert.pem")],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lone.returncode == 2 and "--tls-cert and --tls-key go together" in lone.stderr


def test_the_openapi_document_uses_the_job_schemas(api: Api) -> None:
    from pipelines.jobs import JOB_MODELS

    doc = api.http.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for model in JOB_MODELS.values():
        mine, theirs = schemas[model.__name__], model.model_json_schema()
        assert set(mine["properties"]) == set(theirs["properties"]), model.__name__
        assert set(mine.get("required", [])) == set(theirs.get("required", []))
        for name, prop in theirs["properties"].items():
            for bound in ("maximum", "minimum", "maxLength", "pattern"):
                assert mine["properties"][name].get(bound) == prop.get(bound), (name, bound)
    assert "/v1/jobs" in doc["paths"] and "/v1/batches/{batch_id}/cancel" in doc["paths"]


def test_replicas_share_keys_limits_and_owners(settings: BlazeSettings) -> None:
    one, two = Gateway(settings), Gateway(settings)
    with (
        TestClient(create_app(settings, one), raise_server_exceptions=False) as a,
        TestClient(create_app(settings, two), raise_server_exceptions=False) as b,
    ):
        _, key = one.keys.create("shared", "submit,read", requests_per_s=3)
        h = {"Authorization": f"Bearer {key}"}
        assert (
            a.post("/v1/jobs", json={"jobs": [llm(1, job_id="via-a")]}, headers=h).status_code
            == 202
        )
        assert b.get("/v1/jobs/via-a", headers=h).json()["state"] == "queued"  # the other replica
        codes = [(a if i % 2 else b).get("/v1/jobs/via-a", headers=h).status_code for i in range(6)]
        assert codes.count(429) >= 2, codes  # one bucket of 3 per second across both replicas


def test_the_gateway_works_with_job_status_on_a_redis_cluster(
    cluster_settings: BlazeSettings,
) -> None:
    """Status on a three-node cluster (``redis.status_url``), keys and limits on the broker's
    Redis: the owner check still sees jobs that only the status store knows."""
    gw = Gateway(cluster_settings)
    with TestClient(create_app(cluster_settings, gw), raise_server_exceptions=False) as http:
        api = Api(http, gw)
        alice, bob = api.key("alice", "submit,read"), api.key("bob", "submit,read")
        status = connect.status_store(cluster_settings)
        status.update([StatusUpdate("from-kafka", JobState.QUEUED)])  # another producer's
        taken = http.post("/v1/jobs", json={"jobs": [llm(0, job_id="from-kafka")]}, headers=bob)
        assert taken.status_code == 409 and taken.json()["error"]["field"] == "job_id"
        made = http.post("/v1/jobs", json={"jobs": [llm(1, job_id="mine")]}, headers=alice)
        assert made.status_code == 202, made.text
        assert http.post("/v1/jobs/mine/cancel", headers=alice).json()["state"] == "cancelled"
        assert http.get("/v1/jobs/mine", headers=alice).json()["state"] == "cancelled"
        assert http.get("/v1/jobs/mine", headers=bob).status_code == 404
    key = job_key(cluster_settings.namespace, "mine")
    assert isinstance(status, RedisStatusStore) and status.cluster
    assert status.client.exists(key) and not redis_client(cluster_settings).exists(key)
    status.close()
