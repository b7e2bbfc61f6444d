"""Probes, trace context, JSON logs and local process records, on their own."""

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from pipelines.observe import local, trace
from pipelines.observe.logs import JsonFormatter
from pipelines.observe.probes import ProbeServer, Readiness, readiness_body
from pipelines.settings import BlazeSettings


def test_traceparent_hops_keep_the_trace_and_change_the_span() -> None:
    first = trace.new_traceparent()
    parsed = trace.parse(first)
    assert parsed is not None and parsed[2] == "01"
    hop = trace.child(first)
    assert trace.trace_id(hop) == parsed[0] and hop != first
    assert trace.parse(hop.encode()) is not None
    for bad in (None, "", "00-xyz", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "01-a-b-c"):
        assert trace.parse(bad) is None
    assert trace.parse(trace.child("garbage")) is not None  # a bad header starts a new trace


def test_json_log_lines_carry_job_and_batch_ids() -> None:
    rec = logging.LogRecord("blaze.x", logging.INFO, __file__, 1, "ran %d", (3,), None)
    rec.batch_id = "b1"
    rec.job_ids = ["j1", "j2"]
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["message"] == "ran 3" and doc["level"] == "INFO" and doc["logger"] == "blaze.x"
    assert doc["batch_id"] == "b1" and doc["job_ids"] == ["j1", "j2"]


def test_readiness_names_failing_and_hanging_checks() -> None:
    ready = Readiness(
        {
            "redis": lambda: None,
            "s3": lambda: "127.0.0.1:1 unreachable: ConnectionRefusedError",
            "slow": lambda: time.sleep(5) or None,
            "broken": lambda: 1 / 0,  # type: ignore[func-returns-value]
        },
        timeout_s=0.3,
        cache_s=0,
    )
    code, body = readiness_body(ready.run())
    assert code == 503
    assert body["failing"] == ["s3", "slow", "broken"]
    assert body["checks"]["redis"] == "ok" and "unreachable" in body["checks"]["s3"]
    assert "no answer within" in body["checks"]["slow"]
    assert "ZeroDivisionError" in body["checks"]["broken"]
    ready.close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_probe_server_serves_metrics_livez_and_readyz_on_a_free_port() -> None:
    registry = CollectorRegistry()
    Counter("blaze_things", "things", registry=registry).inc(3)
    state = {"redis": "refused"}
    server = ProbeServer(
        registry,
        Readiness({"redis": lambda: state["redis"]}, cache_s=0),
        port=0,
        info={"role": "worker"},
    ).start()
    try:
        assert server.port > 0
        code, body = get(server.url + "/metrics")
        assert code == 200 and b"blaze_things_total 3.0" in body
        code, body = get(server.url + "/livez")
        assert code == 200 and json.loads(body)["role"] == "worker"
        code, body = get(server.url + "/readyz")
        assert code == 503 and json.loads(body)["failing"] == ["redis"]
        state["redis"] = None  # type: ignore[assignment]
        code, body = get(server.url + "/readyz")
        assert code == 200 and json.loads(body)["status"] == "ready"
        assert get(server.url + "/nope")[0] == 404
    finally:
        server.close()


def test_local_records_of_dead_processes_are_dropped(tmp_path: Path) -> None:
    local.record(tmp_path, "worker", "me", "http://127.0.0.1:1")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / "consumer-1.json").write_text(
        json.dumps({"role": "consumer", "id": "x", "pid": int(gone.stdout), "url": "u"})
    )
    found = local.running(tmp_path)
    assert [d["pid"] for d in found] == [os.getpid()]
    assert not (tmp_path / "consumer-1.json").exists()


def test_heartbeat_windows_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="heartbeat_s < stale_after_s"):
        BlazeSettings(observe={"heartbeat_s": 5, "stale_after_s": 4})
