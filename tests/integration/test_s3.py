"""The S3 result store against the real SeaweedFS: throttling (503 SlowDown) answered by
retries, server-side encryption, and a process forked after the store was used."""

from __future__ import annotations

import http.client
import multiprocessing
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines.errors import ServiceUnavailable
from pipelines.settings import BlazeSettings
from pipelines.stores.results_s3 import S3ResultStore

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class Throttle:
    """An HTTP front for the real S3 server that answers ``503 SlowDown`` to the first
    ``refusals`` PUTs of each key (every PUT when ``refusals`` is None), as AWS S3 does on a
    hot prefix, and passes everything else through unchanged (the Host header too, so the
    client's signature still holds)."""

    def __init__(self, upstream: str, refusals: int | None) -> None:
        self.upstream = upstream
        self.refusals = refusals
        self.refused: Counter[str] = Counter()
        self.passed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "PUT" and front._refuse(self.path):
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                host, port = front.upstream.split(":")
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    conn.request(self.command, self.path, body, dict(self.headers))
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _relay

        return Handler

    def _refuse(self, path: str) -> bool:
        with self._lock:
            if self.refusals is None or self.refused[path] < self.refusals:
                self.refused[path] += 1
                return True
            self.passed[path] += 1
            return False


@contextmanager
def throttled(settings: BlazeSettings, refusals: int | None) -> Iterator[Throttle]:
    front = Throttle(settings.s3_endpoint, refusals)
    server = ThreadingHTTPServer(("127.0.0.1", 0), front.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    front.address = f"127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield front
    finally:
        server.shutdown()
        server.server_close()


def _through(settings: BlazeSettings, front: Throttle, **s3: object) -> BlazeSettings:
    address = front.address  # type: ignore[attr-defined]
    return settings.model_copy(
        update={"s3": settings.s3.model_copy(update={"endpoint": address, **s3})}
    )


def test_writes_throttled_with_slow_down_are_retried_until_they_land(
    settings: BlazeSettings,
) -> None:
    direct = S3ResultStore(settings)
    direct.ensure_bucket()
    keys = [f"{settings.namespace}/hot/{i}/result.json" for i in range(24)]
    with throttled(settings, refusals=2) as front:
        store = S3ResultStore(_through(settings, front, retry_backoff_s=0.01))
        taken = store.put_many(
            [(k, f"doc {k}".encode(), "application/json") for k in keys], if_absent=True
        )
        store.close()
    assert taken == set()  # every write landed, none mistaken for another writer's
    assert all(n == 2 for n in front.refused.values()) and len(front.refused) == len(keys)
    assert {k: direct.get(k) for k in keys} == {k: f"doc {k}".encode() for k in keys}
    # first-writer-wins still holds through the retries
    with throttled(settings, refusals=1) as front:
        store = S3ResultStore(_through(settings, front, retry_backoff_s=0.01))
        assert store.put_many([(keys[0], b"late", "application/json")], if_absent=True) == {keys[0]}
    assert direct.get(keys[0]) == f"doc {keys[0]}".encode()


def test_a_store_that_keeps_throttling_is_reported_unavailable_after_the_retries(
    settings: BlazeSettings,
) -> None:
    S3ResultStore(settings).ensure_bucket()
    with throttled(settings, refusals=None) as front:
        store = S3ResultStore(_through(settings, front, retries=3, retry_backoff_s=0.01))
        key = f"{settings.namespace}/hot/result.json"
        with pytest.raises(ServiceUnavailable, match=r"PUT \S+/hot/result.json answered 503"):
            store.put_many([(key, b"{}", "application/json")], if_absent=True)
    assert sum(front.refused.values()) == 4  # the first try and 3 retries, then the batch retries


def test_server_side_encryption_is_asked_for_on_every_write(settings: BlazeSettings) -> None:
    enc = settings.model_copy(update={"s3": settings.s3.model_copy(update={"sse": "s3"})})
    store = S3ResultStore(enc)
    store.ensure_bucket()
    ns = settings.namespace
    store.put_many([(f"{ns}/a/result.json", b"{}", "application/json")], if_absent=True)
    store.put_many([(f"{ns}/b/result.json", b"{}", "application/json")])
    store.copy_many([(f"{ns}/a/result.json", f"{ns}/c/result.json")])
    for key in ("a", "b", "c"):
        stat = store.client.stat_object(store.bucket, f"{ns}/{key}/result.json")
        assert stat.metadata.get("x-amz-server-side-encryption") == "AES256", key


def _in_forked_child(store: S3ResultStore, settings: BlazeSettings) -> None:
    ns = settings.namespace
    assert store.get(f"{ns}/fork/a/result.json") == b"parent"
    late = [(f"{ns}/fork/a/result.json", b"late", "application/json")]
    mine = [(f"{ns}/fork/{k}/result.json", b"child", "application/json") for k in "cd"]
    assert store.put_many(late + mine, if_absent=True) == {late[0][0]}  # first writer still wins
    fresh = S3ResultStore(settings)
    assert fresh.get(f"{ns}/fork/c/result.json") == b"child"
    assert fresh.existing([f"{ns}/fork/d/result.json", f"{ns}/fork/e/result.json"]) == {
        f"{ns}/fork/d/result.json"
    }


def test_a_process_forked_after_the_store_was_used_still_reads_and_writes(
    settings: BlazeSettings,
) -> None:
    # obstore's runtime threads do not survive a fork: without the fallback the child blocks
    store = S3ResultStore(settings)
    store.ensure_bucket()
    ns = settings.namespace
    items = [(f"{ns}/fork/{k}/result.json", b"parent", "application/json") for k in "ab"]
    assert store.put_many(items, if_absent=True) == set()
    child = multiprocessing.get_context("fork").Process(
        target=_in_forked_child, args=(store, settings)
    )
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child blocked on the store")
    assert child.exitcode == 0
    assert store.get(f"{ns}/fork/c/result.json") == b"child"
    assert store.get(f"{ns}/fork/a/result.json") == b"parent"
